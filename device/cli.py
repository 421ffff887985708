"""python -m device: argument parsing and exit codes (0 done, 1 failure at run time, 2 bad input)."""

from __future__ import annotations

import argparse
import sys

from device import __version__
from device.config import Config, ConfigError, load_config


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
    parser.add_argument("--min-conf", type=float, metavar="P", help="detection threshold for every "
                        "label, 0..1 (overrides model.json and detection.thresholds)")
    parser.add_argument("--hop", type=float, metavar="S", help="seconds between inferences "
                        "(overrides detection.hop_s)")
    batch = parser.add_argument_group("replay batches (python -m device --replay PATH ...)")
    batch.add_argument("--start-time", metavar="ISO", help="recording start of the file, or of the "
                       "first of one recorder's consecutive files (ISO 8601, e.g. 2024-05-01T05:30:00Z); "
                       "default: GUANO metadata, the AudioMoth comment, then the file name")
    batch.add_argument("--timezone", metavar="TZ", help="time zone of times written without one "
                       "(file names, GUANO): UTC, an IANA name or +HH:MM (replay.timezone)")
    batch.add_argument("--time-format", metavar="FMT", help="recording start in file names, e.g. "
                       "'%%Y-%%m-%%d_%%H-%%M-%%S' (replay.time_format)")
    batch.add_argument("--site-pattern", metavar="REGEX", help="site from each file's path: the "
                       "first group (replay.site_pattern; default: the file's folder)")
    batch.add_argument("--raven-table", metavar="FILE", help="one Raven selection table for the batch "
                       "(Begin Path, File Offset (s), recording date and time)")
    batch.add_argument("--detections-csv", metavar="FILE", help="a CSV row per event: source,site,"
                       "start_s,end_s,start_utc,end_utc,label,score")
    batch.add_argument("--audacity-dir", metavar="DIR", help="an Audacity label file per source")
    batch.add_argument("--activity-dir", metavar="DIR", help="detections per site and label per hour "
                       "of day and per date (CSV, and PNG with matplotlib)")
    batch.add_argument("--resume", action="store_true", help="continue a stopped batch: skip the "
                       "files its manifest lists as finished (same command, same outputs)")
    batch.add_argument("--manifest", metavar="FILE", help="the batch's manifest (default: "
                       "callwatch-manifest.jsonl beside the first file output)")
    parser.add_argument("--plot", metavar="FILE[:START-END]", help="draw the spectrogram, window "
                        "scores, thresholds and events of a file (or of START-END seconds in it) "
                        "as a PNG (needs matplotlib: workstation only), then exit")
    parser.add_argument("--plot-out", metavar="PNG", help="where --plot writes (default: "
                        "<stem>_<START>-<END>s.callwatch.png here)")
    batch.add_argument("--mqtt", action="store_true", help="publish the replay's events to the "
                       "mqtt section's broker (on <prefix>/<device_id>/replay/events; without it a "
                       "replay never touches MQTT)")
    batch.add_argument("--cluster", metavar="ADDRESS", help="analyse the files on the workers of "
                       "a Dask scheduler (tcp://HOST:8786, or its --scheduler-file); the workers "
                       "read the files by path; outputs are written here (pip install "
                       "'callwatch[cluster]')")
    parser.add_argument("--version", action="version", version=f"callwatch {__version__}")
    return parser


def _check_config(args: argparse.Namespace, cfg: Config) -> int:
    """The config alone, then against the model bundle when there is one."""
    from pathlib import Path

    where = args.config or "defaults and standard locations"
    model = args.model or cfg.detection.model
    if not Path(model).exists():
        print(f"config OK ({where}); model {model} not found, so detection.thresholds and "
              "audio.silence_timeout_s were not checked against it")
        return 0
    from device.bundle import BundleError, load_bundle
    from device.daemon import check_with_bundle

    try:
        check_with_bundle(cfg, load_bundle(model))
    except (BundleError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"config OK ({where}), with model {model}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs: must be at least 1, got {args.jobs}")
    replay_only = {
        "--realtime": args.realtime, "--counts-csv": args.counts_csv, "--jobs": args.jobs != 1,
        "--start-time": args.start_time, "--timezone": args.timezone,
        "--time-format": args.time_format, "--site-pattern": args.site_pattern,
        "--raven-table": args.raven_table, "--detections-csv": args.detections_csv,
        "--audacity-dir": args.audacity_dir, "--activity-dir": args.activity_dir,
        "--resume": args.resume, "--manifest": args.manifest, "--mqtt": args.mqtt,
        "--cluster": args.cluster,
    }
    if not args.replay and any(replay_only.values()):
        used = ", ".join(k for k, v in replay_only.items() if v)
        parser.error(f"{used}: only apply with --replay")
    if args.plot_out and not args.plot:
        parser.error("--plot-out: only applies with --plot")
    if args.plot and args.replay:
        parser.error("--plot and --replay: choose one")
    if args.cluster and (args.jobs != 1 or args.realtime):
        parser.error("--cluster: the cluster's workers do the work; drop --jobs and --realtime")
    if args.min_conf is not None and not 0 < args.min_conf < 1:
        parser.error(f"--min-conf: must be between 0 and 1, got {args.min_conf}")
    if args.hop is not None and not 0.02 <= args.hop <= 60:
        parser.error(f"--hop: must be 0.02..60 seconds, got {args.hop}")
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        return _check_config(args, cfg)
    if args.monitor:
        from device.monitor import run_monitor

        return run_monitor(cfg)
    if args.list_devices:
        from device.sources import list_input_devices

        print(list_input_devices())
        return 0
    from device.daemon import run

    return run(args, cfg)
