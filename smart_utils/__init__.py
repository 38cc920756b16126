"""What SMART's scripts share: tokens and prompts, rendering and soundfonts, Audiobox and CLAP, run folders and
records, devices and preflight checks, MIDI features and reports, the watch. It never imports a script, except
the user's processors.py where it must score with the user's rewards (evaluation, the audit, the study)."""
