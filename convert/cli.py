"""python -m convert: argument parsing and exit codes (0 done, 1 failure at run time, 2 bad input)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from convert import ConvertFailure, ConvertInputError
from device import __version__
from device.native_stderr import filtered_stderr


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m convert",
        description="Turn a training run folder into a verified full-integer int8 TFLite model "
        "bundle (model.tflite + model.json) for the device, optionally also for the Coral Edge TPU.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run folder written by python -m train (runs/<name>)")
    parser.add_argument("--int8", action="store_true",
                        help="make model.tflite: int8 in, int8 out, every op int8 (required)")
    parser.add_argument("--edgetpu", action="store_true",
                        help="also compile model_edgetpu.tflite with edgetpu_compiler when installed")
    parser.add_argument("--float32", action="store_true", help="also export model_float32.tflite, for comparison")
    parser.add_argument("--float16", action="store_true", help="also export model_float16.tflite, for comparison")
    parser.add_argument("--config", metavar="FILE",
                        help="config with the convert: section (default: RUN_DIR/config.resolved.yaml, "
                        "else $CALLWATCH_CONFIG, ./config.yaml, /etc/callwatch/config.yaml, else defaults)")
    parser.add_argument("--version", action="version", version=f"callwatch {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
    with filtered_stderr():  # what TF_CPP_MIN_LOG_LEVEL misses (absl, grappler; CPU-dependent)
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if not args.int8:
        print("error: pass --int8 (the device runs the int8 model; --float32/--float16/--edgetpu "
              "come on top of it)", file=sys.stderr)
        return 2
    # Imported here so --help answers without TensorFlow's start-up time.
    from convert.core import convert_run, load_settings
    from convert.run_folder import load_run_folder

    try:
        load_run_folder(args.run_dir)  # bad input is reported before TensorFlow starts
        settings, source = load_settings(run_dir=args.run_dir, config_path=args.config)
        print(f"convert: {args.run_dir} (settings from {source})", flush=True)
        result = convert_run(
            run_dir=args.run_dir,
            settings=settings,
            float32=args.float32,
            float16=args.float16,
            edgetpu=args.edgetpu,
            command=shlex.join(["python", "-m", "convert", *argv]),
            notes=(f"settings from `{source}`",),
        )
    except ConvertInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ConvertFailure as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for failure in result.failures:
        print(f"error: {failure}", file=sys.stderr)
    return 0 if result.ok else 1
