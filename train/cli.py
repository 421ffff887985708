"""python -m train: argument parsing and exit codes (0 done, 1 failure at run time, 2 bad input).

    python -m train [--config FILE] [--data-root DIR] [--out DIR] [--folds [K]] [--final]
                    [--hard-negatives FILE ...] [--no-cache]

Recalibrating a converted bundle for a new site is ``python -m train.recalibrate`` (see there).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from device import __version__
from device.audio import AudioError
from device.config import ConfigError, load_config
from device.native_stderr import filtered_stderr


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train",
        description="Train a call detector from labelled recordings: datasets (clip folders, long "
        "recordings with Raven or Audacity tables, background noise) -> group split -> small "
        "CNN on log-mel windows -> a run folder with the Keras model, calibrated thresholds, "
        "metrics, plots and report.md. Convert it with 'python -m convert --int8 RUN_DIR'.",
    )
    parser.add_argument("--config", metavar="FILE", help="config.yaml (default: ./config.yaml, "
                        "then /etc/callwatch/config.yaml, else built-in defaults)")
    parser.add_argument("--data-root", metavar="DIR", help="folder the dataset paths are relative "
                        "to (default: train.data_root)")
    parser.add_argument("--out", metavar="DIR", help="run folder to write (default: runs/<train.name>)")
    parser.add_argument("--folds", nargs="?", const="groups", metavar="K", type=_folds,
                        help="also cross-validate (folds/<fold>/): without K, leave-one-group-out, "
                        "as train.split.leave_one_group_out; with K >= 2, group K-fold, as "
                        "train.split.folds")
    parser.add_argument("--final", action="store_true",
                        help="after cross-validation, train the model to deploy on every recording "
                        "(into --out; folds in folds/<fold>/), with the folds' median epoch count and "
                        "thresholds from their pooled held-out scores, as train.split.final")
    parser.add_argument("--hard-negatives", nargs="+", metavar="FILE", default=[],
                        help="events JSONL files or Raven tables of false positives to add as "
                        "negatives (added to train.hard_negatives)")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the feature "
                        "cache (train.cache_dir)")
    parser.add_argument("--version", action="version", version=f"callwatch {__version__}")
    return parser


def _folds(text: str) -> str | int:
    if text == "groups":
        return text
    try:
        k = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"K must be a whole number of folds, got {text!r}") from None
    if k < 2:
        raise argparse.ArgumentTypeError(f"K must be at least 2, got {k}")
    return k


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
    with filtered_stderr():  # what TF_CPP_MIN_LOG_LEVEL misses (absl, oneDNN; CPU-dependent)
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from train.datasets import DatasetError

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # A user's mistake is one line before TensorFlow is imported (its start-up takes seconds).
    data_root = Path(args.data_root or config.train.data_root)
    if not data_root.is_dir():
        given = "--data-root" if args.data_root else "train.data_root"
        print(f"error: {data_root}: no such folder ({given}: the folder your datasets' paths are "
              "relative to)", file=sys.stderr)
        return 2
    from train.core import train_run

    def log(message: str) -> None:
        print(message, flush=True)

    command = "python -m train " + shlex.join(sys.argv[1:] if argv is None else argv)
    log(f"callwatch {__version__}: {command}")
    try:
        summary = train_run(config=config, data_root=Path(args.data_root) if args.data_root else None,
                            out=Path(args.out) if args.out else None,
                            cache_dir=None if args.no_cache else "config",
                            folds=True if args.folds == "groups" else None,
                            k_folds=args.folds if isinstance(args.folds, int) else None,
                            hard_negatives=args.hard_negatives, command=command,
                            final=True if args.final else None, log=log)
    except (DatasetError, AudioError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else Path("runs") / config.train.name
    log(f"run folder: {out}  (report: {out / 'report.md'}; next: python -m convert --int8 {out})")
    return 0 if summary else 1
