"""Compare systems on the same prompts and seeds: the paper's measurements and the ones it lacked.

    python evaluation.py artefacts/runs/<run> --out eval/           # base model vs the run's tuned model
    python evaluation.py base=models/piano-tiny tuned=artefacts/runs/<run>/checkpoint-100 --out eval/
    python evaluation.py samples/a samples/b --out eval/              # two folders of MIDI files (any generator)
    python evaluation.py <run> --out eval/ --audiobox checkpoint.pt --rewards note_density audio_activity \\
        --soundfont musescore --robustness-soundfonts fluidr3 timgm6mb

A system is ``[NAME=]PATH``: a model directory or ``checkpoint-<step>`` folder (pieces are sampled with
generate.py, the same prompts and seed for every model), a SMART run folder (its tuned model, or its latest
checkpoint), or a folder of MIDI files (used as they are; a ``samples.csv`` from generate.py supplies prompts).
A run folder given alone is compared with the base model named in its smart_config.json, and its reward logs
are plotted. The first system is the reference the others are compared against.

Per sample: the paper's MIDI features (features.py, muspy's definitions), the four Audiobox axes when a checkpoint
is given, and any named reward (a Processor's REWARDS in processors.py). Per system: diversity and the average
piano roll. With held-out soundfonts, the same MIDI is re-rendered and the change in every audio-domain score
reported. Everything lands in ``--out``: features.csv, summary.md, figures/, audio/ and report.html.
"""

from __future__ import annotations

import argparse

from configurator import smart_constants
from smart_utils.evaluation import evaluate_systems, parse_systems
from smart_utils.generation import add_generation_arguments, settings_from_arguments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("systems", nargs="+", help="[NAME=]PATH: model, checkpoint, run folder or MIDI folder")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--run", default=None, help="run folder whose training curves to plot (default: the run given)")
    parser.add_argument("--soundfont", default="timgm6mb",
                        help="soundfont for audio scores and players ('none' = no audio; default %(default)s)")
    parser.add_argument("--robustness-soundfonts", nargs="*", default=None,
                        help="held-out soundfonts to re-render with (default: all known ones found; give none to skip)")
    parser.add_argument("--audiobox", default=None,
                        help="Audiobox checkpoint.pt, or 'hub'; without it CE..PQ are skipped (and the report says so)")
    parser.add_argument("--rewards", nargs="*", default=[],
                        help="rewards to compute per sample (any Processor's REWARDS, e.g. note_density clap)")
    parser.add_argument("--listen", type=int, default=100,
                        help="samples per system with an audio player in report.html (default %(default)s)")
    parser.add_argument("--crop-beats", type=int, default=None, help="crop MIDI-folder pieces to this many beats")
    parser.add_argument("--permutations", type=int, default=10_000, help="relabellings in the permutation tests")
    parser.add_argument("--device", default=None, help="torch device for sampling (default: cuda if available)")
    add_generation_arguments(parser)
    args = parser.parse_args()
    systems, found_run = parse_systems(args.systems)
    report = evaluate_systems(
        systems, args.out, constants=smart_constants(found_run), generation=settings_from_arguments(args),
        soundfont=None if args.soundfont.lower() == "none" else args.soundfont,
        robustness_soundfonts=args.robustness_soundfonts, audiobox=args.audiobox, reward_names=args.rewards,
        run_dir=args.run or found_run, listen=args.listen, max_beats=args.crop_beats,
        permutations=args.permutations, device=args.device,
    )
    print(f"[evaluation] report: {report}")


if __name__ == "__main__":
    main()
