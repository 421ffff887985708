"""Capuchinbird folds for the events bench (:mod:`bench.events`): 3 s chunk F1 and the
per-recording count correlation from the window scores on the chunk grid and from the events
the device makes (a chunk is positive when events cover at least ``CHUNK_COVER_S`` of it), each
recording scored by the fold model that never heard it (float Keras, windows every hop). Each
fold's event rule is calibrated on its own validation recordings, as training does: extent
trims, or for a model with a frame output, the frames rule and its frame threshold.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

HOP_S = 0.5
CHUNK_S, CHUNK_COVER_S = 3.0, 1.0


def capuchin_rows(run: Path, repo: Path) -> list[str]:
    """Chunk F1 and count r from window scores and from events, pooled over the folds of ``run``."""
    import numpy as np

    folds = [
        f for f in [run] + sorted((run / "folds").glob("fold*")) if (f / "run.json").is_file()
    ]  # the folds finished so far
    if not folds:
        return [
            f"(not measured: needs {run.relative_to(repo)} trained with `--folds 5`: "
            "`python -m train --config examples/capuchin.yaml --data-root ../shared/data --folds 5`)"
        ]
    from device.config import load_config
    from train.datasets import load_datasets

    config = load_config(run / "config.resolved.yaml")
    inventory = load_datasets(
        config.train.datasets,
        data_root=repo.parent / "shared/data",
        labels=list(config.train.labels),
    )
    recordings = {r.name: r for r in inventory.recordings if r.kind == "selections"}
    features: dict = {}
    windows_y: list[bool] = []
    windows_p: list[bool] = []
    events_p: list[bool] = []
    counts: dict[str, list[int]] = {"table": [], "windows": [], "events": []}
    for fold in folds:
        for y, from_windows, from_events in fold_chunks(
            fold, config.detection, recordings, features
        ):
            windows_y += y
            windows_p += from_windows
            events_p += from_events
            counts["table"].append(sum(y))
            counts["windows"].append(sum(from_windows))
            counts["events"].append(sum(from_events))
    y = np.array(windows_y, bool)

    def f1(p) -> float:
        p = np.array(p, bool)
        tp, fp, fn = (p & y).sum(), (p & ~y).sum(), (~p & y).sum()
        return 2 * tp / max(2 * tp + fp + fn, 1)

    def r(key) -> float:
        return float(np.corrcoef(counts["table"], counts[key])[0, 1])

    f_windows, f_events = f1(windows_p), f1(events_p)
    planned = config.train.split.folds or len(folds)
    return [
        f"| capuchin, {len(counts['table'])} recordings ({len(folds)} of {planned} folds), each scored by the fold "
        "model that never heard it "
        "| from window scores (chunk grid) | from the events the device emits |",
        "|---|---|---|",
        f"| 3 s chunk F1 ({len(y)} chunks, {int(y.sum())} positive) | {f_windows:.3f} | {f_events:.3f} "
        f"(difference {f_events - f_windows:+.3f}; target within 0.01: "
        f"{'met' if abs(f_events - f_windows) <= 0.01 else 'not met'}) |",
        f"| positive chunks per recording, Pearson r | {r('windows'):.4f} | {r('events'):.4f} "
        f"(target >= 0.995: {'met' if r('events') >= 0.995 else 'not met'}) |",
    ]


def fold_chunks(fold: Path, detection, recordings: dict, features: dict):
    """Per test recording of ``fold``: (chunk truth, chunk from windows, chunk from events) lists.
    ``detection``: the run's detection settings; ``features``: name -> log-mel frames, filled
    as recordings are read (shared by the folds)."""
    import keras
    import numpy as np

    from device.features import FeatureParams
    from train.cache import recording_features
    from train.core import calibrate_events
    from train.evaluate import label_events, timeline_scores
    from train.fit import predict_both
    from train.model import frame_layout, has_frames
    from train.windows import window_labels

    run = json.loads((fold / "run.json").read_text())
    labels, window_s, thresholds = run["labels"], run["window_s"], run["thresholds"]
    feature_params = FeatureParams.from_dict(run["features"])
    with open(fold / "split.csv") as f:
        split = {row["recording"]: row["split"] for row in csv.DictReader(f)}
    model = keras.models.load_model(fold / "model.keras", compile=False)
    layout = None
    if has_frames(model):
        step = int(
            run.get("frames", {}).get("step_frames")
            or feature_params.window_frames(window_s) // model.output_shape[1][1]
        )
        layout = frame_layout(model, params=feature_params, step_frames=step, hop_s=HOP_S)

    def timeline(r):
        if r.name not in features:
            features[r.name] = recording_features(r.path, feature_params, None)
        return timeline_scores(
            lambda x: predict_both(model, x),
            features[r.name],
            params=feature_params,
            window_s=window_s,
            hop_s=HOP_S,
            duration_s=r.duration_s,
        )

    validation = [r for name, r in recordings.items() if split.get(name) == "validation"]
    params, _ = calibrate_events(
        detection=detection,
        labels=labels,
        thresholds=thresholds,
        timelines={r.name: timeline(r) for r in validation},
        recordings=validation,
        window_s=window_s,
        hop_s=HOP_S,
        log=lambda m: None,
        layout=layout,
    )
    label = labels[0]
    for name, r in sorted(recordings.items()):
        if split.get(name) != "test":
            continue
        line = timeline(r)
        starts, scores = line[0], line[1]
        events = label_events(line, 0, params[label], window_s=window_s, hop_s=HOP_S, layout=layout)
        y, from_windows, from_events = [], [], []
        for chunk in np.arange(0, r.duration_s - CHUNK_S + 1e-6, CHUNK_S):
            truth, ambiguous = window_labels(r, chunk, CHUNK_S, labels)
            if ambiguous:
                continue
            k = int(np.argmin(np.abs(starts - chunk)))
            covered = sum(
                max(0.0, min(e.end_s, chunk + CHUNK_S) - max(e.start_s, chunk)) for e in events
            )
            y.append(bool(truth[0]))
            from_windows.append(bool(scores[k, 0] >= thresholds[label]))
            from_events.append(covered >= CHUNK_COVER_S - 1e-9)
        yield y, from_windows, from_events
