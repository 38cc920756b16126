"""Sample pieces from a model directory, a training checkpoint or a SMART run, and write them as MIDI (and WAV).

    python generate.py models/piano-tiny --n 16 --out samples/base
    python generate.py artefacts/runs/<run> --n 16 --out samples/tuned --soundfont timgm6mb
    python generate.py artefacts/runs/<run>/checkpoint-100 --prompt-source dataset --prompt-midi-dir data/test

Two models given the same arguments answer the same prompts with the same seeds (evaluation.py compares them).
The output folder holds ``0000.mid, 0001.mid, ...``, optional ``0000.wav, ...`` and ``samples.csv``.
"""

from __future__ import annotations

import argparse

from configurator import smart_constants
from smart_utils.generation import add_generation_arguments, generate_pieces, settings_from_arguments
from smart_utils.rendering import RenderSettings
from smart_utils.soundfont_sources import resolve_soundfont


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="model directory, checkpoint-<step> folder, or SMART run folder")
    parser.add_argument("--out", required=True, help="folder for the MIDI files (created)")
    parser.add_argument("--soundfont", default=None, help="also write WAVs rendered with this soundfont name or path")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    add_generation_arguments(parser)
    args = parser.parse_args()
    render = None
    if args.soundfont is not None:  # rendered as smart.py renders for its reward
        constants = smart_constants()
        render = RenderSettings(resolve_soundfont(args.soundfont), constants["SAMPLE_RATE"],
                                constants["MAX_AUDIO_DURATION"])
    paths = generate_pieces(args.model, args.out, settings_from_arguments(args), render, args.device)
    print(f"wrote {len(paths)} pieces to {args.out}")


if __name__ == "__main__":
    main()
