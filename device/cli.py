"""python -m device: argument parsing and exit codes (0 done, 1 failure at run time, 2 bad input)."""

from __future__ import annotations

import argparse
import sys

from device import __version__
from device.config import ConfigError, load_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m device",
        description="callwatch field daemon: microphone (or audio files) -> log-mel -> int8 "
        "model -> events (MQTT, JSONL, Raven tables, clips).",
    )
    parser.add_argument("--config", metavar="FILE", help="config.yaml (default: ./config.yaml, "
                        "then /etc/callwatch/config.yaml, else built-in defaults)")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the config and exit (0 valid, 2 invalid)")
    parser.add_argument("--list-devices", action="store_true", help="list audio input devices and exit")
    parser.add_argument("--monitor", action="store_true",
                        help="watch the broker of mqtt.host: print live events and health of every "
                        "device under mqtt.topic_prefix (Ctrl-C ends)")
    parser.add_argument("--replay", nargs="+", metavar="PATH",
                        help="analyse audio files or folders through the live pipeline, then exit")
    parser.add_argument("--model", metavar="PATH",
                        help="model bundle: a .tflite with model.json beside it, or a run folder")
    parser.add_argument("--realtime", action="store_true", help="replay at real-time pace")
    parser.add_argument("--events-jsonl", metavar="FILE", help="write events as JSON lines ('-' = "
                        "stdout; replay writes the file afresh, live appends)")
    parser.add_argument("--scores-csv", metavar="FILE", help="write every window's scores as CSV "
                        "(source,start_s,end_s,label,score)")
    parser.add_argument("--raven-dir", metavar="DIR", help="write a Raven selection table per source "
                        "(<stem>.callwatch.selections.txt)")
    parser.add_argument("--counts-csv", metavar="FILE", help="replay: events per label per file, as CSV")
    parser.add_argument("--jobs", type=int, default=1, metavar="N", help="replay: analyse files in N processes")
    parser.add_argument("--version", action="version", version=f"callwatch {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs: must be at least 1, got {args.jobs}")
    if not args.replay and (args.realtime or args.counts_csv or args.jobs != 1):
        parser.error("--realtime, --counts-csv and --jobs only apply with --replay")
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print(f"config OK ({args.config or 'defaults and standard locations'})")
        return 0
    if args.monitor:
        from device.monitor import run_monitor

        return run_monitor(cfg)
    if args.list_devices:
        from device.sources import list_input_devices

        print(list_input_devices())
        return 0
    from device.daemon import run

    return run(args, cfg)
