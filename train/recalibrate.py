"""Recalibrate a converted model bundle for a new site, from background recordings alone.

    python -m train.recalibrate MODEL --background PATH... --out DIR
                                [--false-alarms-per-hour N] [--hop-s S] [--config FILE]

Thresholds chosen on one site's validation data often fail at the next site: the background
differs. Record an hour or so at the new site when the target species is not calling (no calls
need to be labelled), and this command runs the bundle's int8 model over it exactly as the
device would (the device's own worker: front end, LiteRT, a window every ``hop_s``), then sets
each label's threshold to the lowest value giving at most N false alarms per hour there (an
alarm = an event of the device's own detector, with the detection settings the bundle was
calibrated with, or the config's for a bundle that does not record them). Under the frames
rule that is the frame threshold, on the frame track the device's stitcher makes.

It writes a COPY of the bundle (model files unchanged, model.json with the new thresholds and
a ``recalibration`` record) into ``--out``; the original is never modified.
Exit codes: 0 done, 2 bad input (one line naming the file), 1 failure at run time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

from device.audio import AudioError, find_audio_files
from device.bundle import (
    MANIFEST_NAME,
    BundleError,
    event_settings,
    load_bundle,
    resolve_manifest,
    seal_manifest,
)
from device.config import ConfigError, load_config
from device.detector import detector_params
from device.runtime import load_classifier
from train.calibrate import lowest_threshold
from train.recalibrate_score import AlarmCounter, covered_hours, score_files


def recalibrate_bundle(
    *,
    model: Path,
    background: list[Path],
    out: Path,
    false_alarms_per_hour: float,
    detection,
    hop_s: float | None = None,
    log=print,
) -> dict:
    """Write a copy of the bundle at ``model`` into ``out`` with thresholds recalibrated on
    ``background`` (files or folders of audio without target calls). Returns the record.

    detection: the config's ``detection`` section; alarms are the events the device's detector
    makes with those settings (the bundle's own, ``events.detection``, when it has them). The
    threshold recalibrated is the one the bundle's event rule reads: the window threshold
    (``thresholds``), or under the frames rule the frame threshold
    (``events.extent.<label>.threshold``; the window threshold is then left as it was)."""
    bundle = load_bundle(model)
    source = resolve_manifest(model).parent
    out = Path(out)
    if out.resolve() == source.resolve():
        raise BundleError(
            f"{out}: is the bundle's own folder; give a new --out folder (a copy is written)"
        )
    files = find_audio_files(background)
    if not files:
        raise AudioError(f"{', '.join(map(str, background))}: no audio files to recalibrate on")
    frame_rate = bundle.features.frame_rate
    hop_s = (
        max(1, round((hop_s or bundle.recommended_hop_s) * frame_rate)) / frame_rate
    )  # as the device rounds it
    settings = {**event_settings(detection), **bundle.events.get("detection", {}), "thresholds": {}}
    old_thresholds = bundle.event_thresholds()
    params = detector_params(
        labels=bundle.labels,
        bundle_thresholds=old_thresholds,
        detection=SimpleNamespace(**settings),
        trims=bundle.extent_trims(hop_s),
    )
    layout = bundle.frame_layout(hop_s)
    segments = score_files(load_classifier(bundle), files, hop_s=hop_s, log=log)
    hours = covered_hours(segments)
    per_label: dict[str, dict] = {}
    record = {
        "background": [str(f) for f in files],
        "hop_s": hop_s,
        "false_alarms_per_hour": false_alarms_per_hour,
        "created_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "rule": "frames" if layout is not None else "windows",
        "labels": per_label,
    }
    thresholds = {}
    for i, label in enumerate(bundle.labels):
        counter = AlarmCounter(
            segments, i, label, params[label], window_s=bundle.window_s, hop_s=hop_s, layout=layout
        )
        old = old_thresholds[label]
        old_rate = counter.alarms(old) / max(hours, 1e-9)
        new = lowest_threshold(
            counter.scores(), hours=hours, per_hour=false_alarms_per_hour, alarms_at=counter.alarms
        )
        thresholds[label] = new.value
        per_label[label] = {
            "old_threshold": old,
            "old_false_alarms_per_hour": old_rate,
            **new.to_dict(),
        }
        log(
            f"{label}: {'frame ' if layout is not None else ''}threshold {old:.4f} -> {new.value:.4f}; false alarms "
            f"per hour on this background {old_rate:.1f} -> {new.achieved.get('false_alarms_per_hour', float('nan')):.1f} "
            f"({hours:.2f} h){' - ' + new.note if new.note else ''}"
        )
    out.mkdir(parents=True, exist_ok=True)
    manifest = json.loads(resolve_manifest(model).read_text())
    names = [manifest["model_file"]] + [v["file"] for v in manifest.get("variants", {}).values()]
    for name in names:
        shutil.copy2(source / name, out / name)
    if layout is not None:
        for label in bundle.labels:
            manifest["events"]["extent"][label]["threshold"] = thresholds[label]
    else:
        manifest["thresholds"] = {label: thresholds[label] for label in bundle.labels}
    manifest["recalibration"] = record
    manifest = seal_manifest(manifest)  # a deliberate change: model.json's hash follows it
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    load_bundle(out)  # the copy must be a bundle the device accepts
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.recalibrate", description=__doc__.split("\n\n")[2].replace("\n", " ")
    )
    parser.add_argument(
        "model", metavar="MODEL", help="bundle: a .tflite with model.json beside it, or its folder"
    )
    parser.add_argument(
        "--background",
        nargs="+",
        required=True,
        metavar="PATH",
        help="audio files or folders recorded at the new site without target calls",
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="folder for the recalibrated copy of the bundle"
    )
    parser.add_argument(
        "--false-alarms-per-hour",
        type=float,
        metavar="N",
        help="allowed false alarms per hour (default: train.calibration.false_alarms_per_hour)",
    )
    parser.add_argument(
        "--hop-s",
        type=float,
        metavar="S",
        help="seconds between windows (default: the bundle's "
        "recommended_hop_s; use the detection.hop_s the device will run with)",
    )
    parser.add_argument("--config", metavar="FILE", help="config.yaml for the default rate")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        rate = args.false_alarms_per_hour
        if rate is None:
            rate = config.train.calibration.false_alarms_per_hour
        if rate < 0 or (args.hop_s is not None and args.hop_s <= 0):
            raise ConfigError("--false-alarms-per-hour must be >= 0 and --hop-s > 0")
        recalibrate_bundle(
            model=Path(args.model),
            background=[Path(p) for p in args.background],
            out=Path(args.out),
            false_alarms_per_hour=rate,
            hop_s=args.hop_s,
            detection=config.detection,
        )
    except (BundleError, AudioError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"recalibrated bundle: {args.out}/{MANIFEST_NAME}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
