"""The listening study: blind stimuli (stimuli.py), the rating page (server.py and web/), the analysis of the
ratings (analysis.py), a reward fitted on them (fit.py), and the study folder's layout (study.py)."""
