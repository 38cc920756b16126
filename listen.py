"""The paper's listening study as a tool: build blind stimuli, collect ratings in a browser, analyse them.

    python listen.py build base=models/piano-tiny tuned=artefacts/runs/<run> --prompts 15 --out study/
    python listen.py serve study/                 # http://127.0.0.1:8000, admin token printed
    python listen.py analyse study/               # study/analysis/summary.md, ratings.csv, ratings.png
    python listen.py fit study/ --out artefacts/listeners   # a reward fitted on the ratings (LISTENERS_MODEL)

build (listening/stimuli.py): every system ([NAME=]PATH: a model, checkpoint, SMART run or MIDI folder, as in
evaluation.py) answers the same prompts with the same seeds, re-sampled until a piece has no empty beat and lasts 8 s
(bounded, reported), rendered for 10 s at 48 kHz, loudness-matched, saved under random names with a manifest.
serve (listening/server.py): consent, then every clip in a per-participant random order, rated 1-10 ("How much do
you enjoy this piece?") once it has played to the end; answers go to study/responses.sqlite one transaction each.
analyse (listening/analysis.py): per-system means, tuned - base with sign-flip tests over participants and over
prompts, consistency on repeated clips, Spearman agreement with Audiobox and the rewards, a figure and summary.md.
fit (listening/fit.py): a ridge model from each clip's features to its rating (participants' offsets removed,
cross-validated over prompts), saved as JSON when it beats predicting the mean; smart.py tunes toward it with
REWARD_WEIGHTS={"listeners": 1.0} and LISTENERS_MODEL=<its folder>.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from configurator import smart_constants
from listening.stimuli import STUDY_GENERATION, build_study
from smart_utils.evaluation import parse_systems
from smart_utils.generation import add_generation_arguments, settings_from_arguments


def build_command(args: argparse.Namespace) -> None:
    systems, found_run = parse_systems(args.systems)
    if len(systems) < 2:
        raise SystemExit("listen.py build: give at least two systems, e.g. base=MODEL tuned=RUN")
    report = build_study(
        systems, args.out, constants=smart_constants(found_run), generation=settings_from_arguments(args),
        max_tries=args.max_tries,
        soundfont=args.soundfont, audiobox=args.audiobox, target_lufs=args.lufs, device=args.device,
    )
    print("\n".join(f"[listen] {line}" for line in report.lines()))
    print(f"[listen] study in {args.out}: serve it with  python listen.py serve {args.out}")


def serve_command(args: argparse.Namespace) -> None:
    from listening.server import serve

    serve(args.study, host=args.host, port=args.port, repeats=args.repeats, threads=args.threads)


def analyse_command(args: argparse.Namespace) -> None:
    from listening.analysis import analyse

    analyse(args.study, reference=args.reference, permutations=args.permutations)


def fit_command(args: argparse.Namespace) -> None:
    from listening.fit import MODEL_FILE, FitError, fit_study, save_model, strongest_features, study_features

    try:
        result = fit_study(args.study, study_features(args.study, args.features), seed=args.seed,
                           permutations=args.permutations)
    except FitError as error:
        sys.exit(f"listen.py fit: {error}")
    print(result.report)
    if not result.reliable and not args.keep_unreliable:
        stale = Path(args.out) / MODEL_FILE
        sys.exit("listen.py fit: no model written: it predicts the ratings no better than their mean ("
                 + "; ".join(result.reasons) + "). Collect more ratings, or pass --keep-unreliable to save it "
                 "marked unreliable (smart.py refuses such a model)"
                 + (f". NOTE: {stale} is an earlier fit, left as it was" if stale.is_file() else ""))
    out = save_model(result.model, args.out)
    signs = ", ".join(f"{name} {coefficient:+.3f}" for name, coefficient in strongest_features(result.model, 5))
    print(f"[listen] reward model in {out} (strongest features: {signs}); tune toward it with\n"
          f"  python smart.py config/local.py --LISTENERS_MODEL={out} --REWARD_WEIGHTS=\"{{'listeners': 1.0}}\"")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build", help="sample, render and loudness-match the stimuli")
    build.add_argument("systems", nargs="+", help="[NAME=]PATH: model, checkpoint, run folder or MIDI folder")
    build.add_argument("--out", required=True, help="the study folder (created; must not hold a study yet)")
    build.add_argument("--prompts", dest="n", type=int, help="prompts every system answers (same as --n)")
    build.add_argument("--max-tries", type=int, default=10,
                       help="sampling rounds per prompt before falling back to the try nearest the rule")
    build.add_argument("--soundfont", default=None,
                       help="name or path (default: the run's SOUNDFONT, else musescore, else timgm6mb)")
    build.add_argument("--audiobox", default=None,
                       help="Audiobox checkpoint.pt or 'hub' to score CE/CU/PC/PQ per clip (default: skipped)")
    build.add_argument("--lufs", type=float, default=-23.0, help="loudness every clip is matched to (LUFS)")
    build.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    add_generation_arguments(build)
    build.set_defaults(**{key: getattr(STUDY_GENERATION, key) for key in ("n", "seed", "max_new_tokens", "max_beats")})
    build.set_defaults(func=build_command)

    serve = commands.add_parser("serve", help="run the study page")
    serve.add_argument("study", help="a folder written by listen.py build")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--repeats", type=int, default=2,
                       help="clips each participant hears twice, as a consistency check (0 = none)")
    serve.add_argument("--threads", type=int, default=8, help="request threads of the WSGI server")
    serve.set_defaults(func=serve_command)

    analyse = commands.add_parser("analyse", aliases=["analyze"], help="analyse the collected ratings")
    analyse.add_argument("study", help="a study folder with responses.sqlite")
    analyse.add_argument("--reference", default=None, help="system the others are compared with (default: the first)")
    analyse.add_argument("--permutations", type=int, default=20_000,
                         help="random sign flips when there are too many participants to enumerate them all")
    analyse.set_defaults(func=analyse_command)

    fit = commands.add_parser("fit", help="fit a reward model on the collected ratings")
    fit.add_argument("study", help="a study folder with manifest.json and responses.sqlite")
    fit.add_argument("--out", required=True, help="folder for reward_model.json and summary.md")
    fit.add_argument("--features", nargs="+", default=["midi", "rewards", "audiobox"],
                     help="feature groups: midi (the paper's MIDI features), rewards (the weight-free rewards), "
                          "audiobox (the axes, where the study was built with --audiobox); default all")
    fit.add_argument("--seed", type=int, default=0, help="seed of the prompt folds and the permutation test")
    fit.add_argument("--permutations", type=int, default=999, help="shuffles in the reliability test")
    fit.add_argument("--keep-unreliable", action="store_true",
                     help="save a model that does not beat the baseline, marked unreliable")
    fit.set_defaults(func=fit_command)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        sys.exit("\n[listen] interrupted")


if __name__ == "__main__":
    main()
