"""The adapted run folder: thresholds recalibrated, test figures, and the files convert reads.

The folder has the run folder contract of :mod:`train.core` (``model.keras``, ``run.json``,
``calibration.npy``, ``test_windows.npz``, ``split.csv``, ``config.resolved.yaml``,
``metrics.json``, ``report.md``, plus ``pseudo_labels.csv``), so ``python -m convert --int8`` takes it as it takes a
trained run. run.json is the source run's, with the new thresholds, event rule and test
figures, and an ``adaptation`` record; convert carries that record into model.json's metrics.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from device.config import Config
from device.runrecord import RunRecord
from train.evaluate import clip_level, metrics_by_label
from train.windows import WindowSet

Scorer = Callable[[np.ndarray], np.ndarray]
COPIED = ("config.resolved.yaml", "split.csv", "test_windows.npz")
PSEUDO_LABELS = "pseudo_labels.csv"
"""Every window a round took as a pseudo-label: round, file, start_s, labels (empty for
background), the lowest and highest score over its views."""


def recalibrate(
    *,
    config: Config,
    model,
    prepared,
    validation: WindowSet,
    recordings: list,
    run_info: RunRecord,
    log: Callable[[str], None],
) -> tuple[dict[str, float], dict | None, dict | None]:
    """(thresholds, events, calibration record) of the adapted model: calibrated on the run's
    validation split by ``train.calibration`` as training does; the run's own when it has no
    validation split (a final model)."""
    from device.detector import detector_params
    from train.core import calibrate_events, calibrate_thresholds
    from train.evaluate import timeline_scores
    from train.fit import predict_both, predict_probabilities
    from train.model import frame_layout, step_frames

    cfg = config.train
    labels = list(cfg.labels)
    if not recordings:
        log(
            "no validation split: thresholds and event rule kept from the run (recalibrate them on the site's "
            "background with python -m train.recalibrate)"
        )
        return dict(run_info.thresholds), run_info.events or None, run_info.calibration or None
    window_s, hop_s = float(cfg.window_s), float(config.detection.hop_s)
    params = prepared.params
    per_step = step_frames(
        frames=params.window_frames(window_s),
        n_mels=params.n_mels,
        filters=list(cfg.model.filters),
        stem_stride=cfg.model.stem_stride,
    )
    # the frames rule and its threshold, as training calibrates them
    layout = frame_layout(model, params=params, step_frames=per_step, hop_s=hop_s)
    timelines = {
        r.name: timeline_scores(
            lambda x: predict_both(model, x),
            prepared.inputs_of(r.name),
            params=prepared.params,
            window_s=window_s,
            hop_s=hop_s,
            duration_s=r.duration_s,
        )
        for r in recordings
        if cfg.calibration.method == "false_alarms" or r.kind == "selections"
    }
    untrimmed = detector_params(
        labels=tuple(labels),
        bundle_thresholds=dict.fromkeys(labels, 0.5),
        detection=config.detection,
    )
    thresholds = calibrate_thresholds(
        cfg=cfg,
        labels=labels,
        y=validation.y,
        scores=predict_probabilities(model, validation.x),
        timelines=timelines,
        recordings=recordings,
        window_s=window_s,
        hop_s=hop_s,
        detection=untrimmed,
    )
    values = {label: t.value for label, t in thresholds.items()}
    for label, t in thresholds.items():
        log(
            f"threshold {label}: {run_info.thresholds[label]:.4f} -> {t.value:.4f} ({t.method}, {t.achieved})"
        )
    _, events = calibrate_events(
        detection=config.detection,
        labels=labels,
        thresholds=values,
        timelines=timelines,
        recordings=recordings,
        window_s=window_s,
        hop_s=hop_s,
        log=log,
        layout=layout,
    )
    calibration = {
        **run_info.calibration,
        "labels": {k: t.to_dict() for k, t in thresholds.items()},
    }
    return values, events, calibration


def test_metrics(
    *,
    run: Path,
    prepared,
    labels: list[str],
    thresholds: dict[str, float],
    scores: dict[str, Scorer],
) -> dict:
    """The run's test split (test_windows.npz) scored by each of ``scores`` ("before", "after"):
    the adapted model's metrics (window and clip level) and every label's ROC-AUC before and after."""
    with np.load(run / "test_windows.npz") as data:
        x, y, source, start_s = data["x"], data["y"], data["source"].astype(str), data["start_s"]
    kinds = {r.name: r.kind for r in prepared.inventory.recordings}
    windows = WindowSet(
        x, y, source, start_s, np.array([kinds.get(s, "background") for s in source], dtype=str)
    )
    out: dict = {"before_after": {"windows": int(len(y))}}
    for when, scorer in scores.items():
        p = scorer(x)
        metrics = {"float": metrics_by_label(y, p, labels, thresholds)}
        names, clip_y, clip_scores = clip_level(windows, p)
        if names:
            metrics["clip"] = metrics_by_label(clip_y, clip_scores, labels, thresholds)
        for level, per_label in metrics.items():
            for label, m in per_label.items():
                out["before_after"].setdefault(label, {})[f"{level}_roc_auc_{when}"] = m["roc_auc"]
        if when == "after":
            out["metrics"] = metrics
    return out


def write_adapted_run(
    *,
    run: Path,
    out: Path,
    model,
    run_info: RunRecord,
    record: dict,
    thresholds: dict[str, float],
    events: dict | None,
    calibration: dict | None,
    metrics: dict,
    site,
    windows: int,
    pseudo_rows: list[list],
) -> None:
    """Write the adapted run folder ``out`` (see the module docstring)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / PSEUDO_LABELS, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["round", "file", "start_s", "labels", "lowest_view_score", "highest_view_score"]
        )
        writer.writerows(pseudo_rows)
    for name in COPIED:
        shutil.copy2(run / name, out / name)
    model.save(out / "model.keras")
    # int8 ranges from the run's training windows, a quarter of them replaced by the site's own.
    original = np.load(run / "calibration.npy")
    n_site = min(len(site), max(1, windows // 4))
    rows = np.random.default_rng(0).choice(len(site), size=n_site, replace=False)
    np.save(
        out / "calibration.npy",
        np.concatenate(
            [original[: max(1, windows - n_site)], site.model_inputs(np.sort(rows))]
        ).astype(np.float32),
    )
    adapted = dataclasses.replace(
        run_info,
        thresholds=thresholds,
        events=run_info.events if events is None else events,
        calibration=run_info.calibration if calibration is None else calibration,
        metrics={"float": metrics["float"]},
        title=f"{run_info.title or run.name}, adapted to {len(site.files)} unlabelled recordings",
        adaptation=record,
    )
    adapted.write(out)
    (out / "metrics.json").write_text(
        json.dumps(
            {
                "title": adapted.title,
                "labels": list(run_info.labels),
                "thresholds": thresholds,
                "metrics": metrics,
                "adaptation": record,
            },
            indent=2,
            default=float,
        )
        + "\n"
    )
    (out / "report.md").write_text(report_text(adapted.to_dict(), metrics))


def report_text(info: dict, metrics: dict) -> str:
    """report.md of an adapted run: what it was adapted from and on, the check, the test figures."""
    a = info["adaptation"]
    lines = [
        f"# {info['title']}",
        "",
        "## Site adaptation",
        "",
        f"- Adapted from `{a['from_run']}` (model.keras sha256 {a['from_model_sha256'][:12]}...).",
        f"- Unlabelled audio: {len(a['unlabelled']['files'])} recordings, {a['unlabelled']['hours']:.2f} h, "
        f"{a['unlabelled']['windows']} windows every {a['unlabelled']['hop_s']} s "
        f"({', '.join(a['unlabelled']['paths'])}).",
        (f"- Distilled from {len(a['distilled_from'])} runs ({', '.join(a['distilled_from'])}): their mean "
         "score of every site window was its target (each listed in pseudo_labels.csv with its target)."
         if a.get("distilled_from") else
         f"- Pseudo-labels kept: {a['pseudo_labels']['positives']} calls, {a['pseudo_labels']['negatives']} "
         "background windows (each listed in pseudo_labels.csv, to listen to)."),
        *([f"- An ensemble of {a['ensemble']['members']} (`train.model.ensemble`), adapted as one model (its "
           "averaged score, what the device runs, is what was scored and checked), its members fine-tuned "
           "jointly through that average."]
          if a.get("ensemble") else []),
        f"- Checked on {a['checked_on']}, tolerance {a['settings']['tolerance']}:",
        "",
    ]
    lines += [
        "| round | calls | background | label | ROC-AUC before -> after | PR-AUC before -> after | kept |",
        "|---|---:|---:|---|---|---|---|",
    ]
    for r in a["rounds"]:
        for label, v in r["check"]["labels"].items():
            lines.append(
                f"| {r['round']} | {r['pseudo_labels'].get('positives', '-')} | "
                f"{r['pseudo_labels'].get('negatives', '-')} | "
                f"{label} | {v['roc_auc_before']:.3f} -> {v['roc_auc_after']:.3f} | "
                f"{v['pr_auc_before']:.3f} -> {v['pr_auc_after']:.3f} | {'yes' if r['kept'] else 'no'} |"
            )
    lines += [
        "",
        "## Test split (the run's test_windows.npz)",
        "",
        "| label | level | ROC-AUC before | ROC-AUC after | threshold | precision | recall |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for level, per_label in metrics.items():
        for label, m in per_label.items():
            before = a["test_split"].get(label, {}).get(f"{level}_roc_auc_before")
            lines.append(
                f"| {label} | {'window' if level == 'float' else level} | {_fmt(before)} | "
                f"{_fmt(m['roc_auc'])} | {m['threshold']:.4f} | {_fmt(m['precision'])} | {_fmt(m['recall'])} |"
            )
    lines += [
        "",
        "If the test split is not the new site, these figures say what the adaptation cost elsewhere, "
        "not what it gained there.",
        "",
    ]
    return "\n".join(lines)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"
