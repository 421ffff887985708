"""python -m train.adapt: adapt a trained model to a new site from unlabelled recordings (experimental).

    python -m train.adapt --run RUN_OR_BUNDLE --unlabelled PATH... [--out NEW_RUN] [--data-root DIR]
                          [--rounds N] [--epochs N] [--learning-rate-scale X] [--pseudo-share X]
                          [--positive-quantile Q] [--negative-quantile Q]
                          [--max-positives-per-recording N] [--tolerance X] [--teacher MODULE:FUNCTION]
                          [--distill-from RUN...]

Self-training: the run's model scores an hour or more of the new site's recordings; its
confident calls and the site's own background become pseudo-labels; the model is fine-tuned on
them together with its original training windows; the result is kept only if it is not worse on
the run's validation split. With ``--distill-from``, other runs of the same config (at other
seeds) are the teachers instead: their mean score of every site window is its target
(train.adapt_distill). It writes a new run folder (default ``<run>-adapted``) for
``python -m convert --int8``; the run is never modified. An ensemble run (``train.model.ensemble``)
adapts as one model: its averaged scores choose the pseudo-labels and face the check, and its
members are fine-tuned jointly through that average. See train.adapt_core.
Exit codes: 0 done, 2 bad input (one line naming the file or option), 1 adapted model refused
or failure at run time.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from device import __version__
from device.audio import AudioError, find_audio_files
from device.config import ConfigError
from device.native_stderr import filtered_stderr


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train.adapt", description=__doc__.split("\n\n")[2].replace("\n", " ")
    )
    parser.add_argument(
        "--run",
        required=True,
        metavar="RUN_OR_BUNDLE",
        help="the run folder python -m train wrote (or its model.tflite / model.json)",
    )
    parser.add_argument(
        "--unlabelled",
        nargs="+",
        required=True,
        metavar="PATH",
        help="audio files or folders recorded at the new site (no labels needed; an hour or more)",
    )
    parser.add_argument(
        "--out", metavar="DIR", help="adapted run folder to write (default: <run>-adapted)"
    )
    parser.add_argument(
        "--data-root",
        metavar="DIR",
        help="folder the run's dataset paths are relative to (default: the run's train.data_root)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        metavar="N",
        help="rounds of self-training, 1-3 (2: rescore with the adapted model and again)",
    )
    parser.add_argument(
        "--epochs", type=int, default=5, metavar="N", help="fine-tuning epochs per round"
    )
    parser.add_argument(
        "--learning-rate-scale",
        type=float,
        default=0.1,
        metavar="X",
        help="fine-tuning learning rate as a fraction of train.learning_rate",
    )
    parser.add_argument(
        "--pseudo-share",
        type=float,
        default=0.3,
        metavar="X",
        help="share of each epoch's windows that are the site's pseudo-labelled ones",
    )
    parser.add_argument(
        "--positive-quantile",
        type=float,
        default=0.9,
        metavar="Q",
        help="pseudo-calls score in every view at or above this quantile of the site's "
        "windows (and above the run's threshold)",
    )
    parser.add_argument(
        "--negative-quantile",
        type=float,
        default=0.5,
        metavar="Q",
        help="pseudo-background scores in every view at or below this quantile",
    )
    parser.add_argument(
        "--max-positives-per-recording",
        type=int,
        default=2,
        metavar="N",
        help="pseudo-calls taken from one recording at most",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.01,
        metavar="X",
        help="refuse the adapted model when validation ROC-AUC or PR-AUC drops by more",
    )
    parser.add_argument(
        "--teacher",
        metavar="MODULE:FUNCTION",
        help="optional scorer you supply (a module or path/to/file.py and a function, see "
        "train.adapt_teacher) that must agree with every pseudo-label",
    )
    parser.add_argument(
        "--distill-from",
        nargs="+",
        metavar="RUN",
        help="instead of self-training: runs of the same config at other seeds, whose mean score "
        "of every site window becomes its target (train.adapt_distill); one round, no --teacher",
    )
    parser.add_argument("--version", action="version", version=f"callwatch {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with filtered_stderr():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from train.adapt_core import AdaptError, AdaptRefused, AdaptSettings, resolve_run
    from train.adapt_select import SelectionParams
    from train.adapt_teacher import TeacherError, load_teacher

    try:
        settings = AdaptSettings(
            selection=SelectionParams(
                positive_quantile=args.positive_quantile,
                negative_quantile=args.negative_quantile,
                max_positives_per_recording=args.max_positives_per_recording,
            ),
            rounds=args.rounds,
            epochs=args.epochs,
            learning_rate_scale=args.learning_rate_scale,
            pseudo_share=args.pseudo_share,
            tolerance=args.tolerance,
        )
        resolve_run(Path(args.run))  # one line before TensorFlow's start-up
        teacher = load_teacher(args.teacher) if args.teacher else None
        for path in args.distill_from or []:
            if not (Path(path) / "model.keras").is_file():
                raise AdaptError(f"{path}: no model.keras there (--distill-from takes run folders python -m train wrote)")
        missing = [p for p in args.unlabelled if not Path(p).exists()]
        if missing:
            raise AdaptError(f"{missing[0]}: no such file or folder (--unlabelled)")
        if not find_audio_files(args.unlabelled):
            raise AdaptError(
                f"{', '.join(args.unlabelled)}: no audio files to adapt on (--unlabelled)"
            )
    except (ValueError, AdaptError, TeacherError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from train.adapt_core import adapt_run
    from train.datasets import DatasetError

    def log(message: str) -> None:
        print(message, flush=True)

    command = "python -m train.adapt " + shlex.join(sys.argv[1:] if argv is None else argv)
    log(f"callwatch {__version__}: {command}")
    try:
        adapt_run(
            run=Path(args.run),
            unlabelled=[Path(p) for p in args.unlabelled],
            out=Path(args.out) if args.out else None,
            settings=settings,
            data_root=Path(args.data_root) if args.data_root else None,
            teacher=teacher,
            distill_from=[Path(p) for p in args.distill_from] if args.distill_from else None,
            command=command,
            log=log,
        )
    except (AdaptError, DatasetError, AudioError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except AdaptRefused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
