"""Test metrics: per window, per clip, per 3 s chunk, per recording count and per event.

- window: ROC-AUC, PR-AUC (average precision), precision / recall / F1 and the confusion
  counts at the calibrated threshold, per label;
- clip (clip datasets): a clip's score is the highest of its windows, its truth the folder;
- chunk (long recordings): back-to-back ``window_s`` chunks from the start of each recording,
  labelled by the tables (ambiguous chunks left out), and per recording the number of positive
  chunks predicted against the number in the table (Pearson correlation over recordings);
- event (long recordings): windows every ``hop_s`` along the whole recording, turned into events
  by the device's own detector (``device.detector.detect``) with the settings the bundle ships;
  an event that touches an annotation is a hit, one that touches only unannotated background is
  a false alarm; an annotation no event touches is a miss; and how well events localise calls
  (F1 at IoU >= 0.3, onset and offset errors). A timeline with frame scores (a model with a
  frame output) and a frame layout make events by the frame rule (``detect_frames``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from device.detector import Detection, DetectorParams, detect, detect_frames
from device.frames import FrameLayout
from train.calibrate import covered_hours
from train.datasets import Recording
from train.windows import WindowSet, crop, floor_db, merged_regions, tile_starts, window_labels

Predict = Callable[[np.ndarray], np.ndarray | tuple]
"""x (N, frames, n_mels, 1) float32 dB -> (N, n_labels) probabilities, or (those, (N, steps,
n_labels) frame probabilities) for a model with a frame output."""


def label_events(timeline: tuple, i: int, params: DetectorParams, *, window_s: float, hop_s: float,
                 layout: FrameLayout | None = None, label: str = "") -> list[Detection]:
    """The device's events for label ``i`` of one recording's timeline: (starts, scores) or
    (starts, scores, frames); by the frame rule when the timeline has frames and ``layout`` is
    given, else from the window scores."""
    if layout is not None and len(timeline) == 3:
        return detect_frames(timeline[0], timeline[2][:, :, i], params, layout=layout, hop_s=hop_s, label=label)
    return detect(timeline[0], timeline[1][:, i], params, window_s=window_s, hop_s=hop_s, label=label)


def rates(tp: int, fp: int, fn: int) -> dict:
    """Precision, recall and F1 from confusion counts (None where undefined)."""
    return {"precision": tp / (tp + fp) if tp + fp else None,
            "recall": tp / (tp + fn) if tp + fn else None,
            "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None}


def count_summary(rows: list[dict]) -> dict:
    """Pearson r and mean absolute error of table vs predicted counts over recording rows
    ({"table", "predicted"}); r is None for fewer than two recordings or a constant side."""
    true = np.array([r["table"] for r in rows], float)
    pred = np.array([r["predicted"] for r in rows], float)
    r = float(np.corrcoef(true, pred)[0, 1]) if len(rows) > 1 and true.std() > 0 and pred.std() > 0 else None
    return {"pearson_r": r, "mean_abs_error": float(np.abs(true - pred).mean()) if rows else None}


def label_metrics(y: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """Metrics of one label: y (N,) 0/1, scores (N,) probabilities."""
    y = np.asarray(y) > 0.5
    predicted = np.asarray(scores) >= threshold
    tp, fp = int((predicted & y).sum()), int((predicted & ~y).sum())
    fn, tn = int((~predicted & y).sum()), int((~predicted & ~y).sum())
    both = 0 < y.sum() < len(y)
    return {
        "roc_auc": float(roc_auc_score(y, scores)) if both else None,
        "pr_auc": float(average_precision_score(y, scores)) if both else None,
        **rates(tp, fp, fn),
        "threshold": float(threshold), "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "positives": int(y.sum()), "negatives": int((~y).sum()),
    }


def metrics_by_label(y: np.ndarray, scores: np.ndarray, labels: list[str], thresholds: dict[str, float]) -> dict:
    """{label: label_metrics} for y, scores (N, n_labels)."""
    return {label: label_metrics(y[:, i], scores[:, i], thresholds[label]) for i, label in enumerate(labels)}


def clip_level(windows: WindowSet, scores: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(clip names, y (C, L), score (C, L)): each clip's highest window score, for clip datasets."""
    names = sorted(set(windows.source[windows.kind == "clips"]))
    index = {n: i for i, n in enumerate(names)}
    y = np.zeros((len(names), windows.y.shape[1]), np.float32)
    best = np.full((len(names), windows.y.shape[1]), -np.inf)
    for row in np.flatnonzero(windows.kind == "clips"):
        k = index[windows.source[row]]
        y[k] = windows.y[row]
        best[k] = np.maximum(best[k], scores[row])
    return names, y, best


def count_correlation(windows: WindowSet, scores: np.ndarray, labels: list[str],
                      thresholds: dict[str, float]) -> dict:
    """Per label: positive chunks per long recording, table vs model, and their Pearson r."""
    chosen = windows.kind == "selections"
    out = {}
    for i, label in enumerate(labels):
        rows = []
        for name in sorted(set(windows.source[chosen])):
            mask = chosen & (windows.source == name)
            rows.append({"recording": name, "table": int(windows.y[mask, i].sum()),
                         "predicted": int((scores[mask, i] >= thresholds[label]).sum())})
        out[label] = {**count_summary(rows), "recordings": rows}
    return out


def timeline_scores(predict: Predict, features: np.ndarray, *, params, window_s: float, hop_s: float,
                    duration_s: float, batch: int = 256) -> tuple:
    """(starts (K,), probabilities (K, n_labels)) of windows every ``hop_s`` along a recording,
    and the frame probabilities (K, steps, n_labels) third when ``predict`` gives them."""
    starts = tile_starts(duration_s, window_s, hop_s)
    frames, floor = params.window_frames(window_s), floor_db(params)
    out, frame_out = [], []
    for i in range(0, len(starts), batch):
        x = np.stack([crop(features, round(s * params.frame_rate), frames, floor) for s in starts[i:i + batch]])
        p = predict(x[..., None])
        if isinstance(p, tuple):
            p, f = p
            if f is not None:
                frame_out.append(f)
        out.append(p)
    if frame_out:
        return starts, np.concatenate(out), np.concatenate(frame_out)
    return starts, np.concatenate(out)


def _touches(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return min(a[1], b[1]) - max(a[0], b[0]) > 1e-6


def iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Intersection over union of two time spans."""
    inter = min(a[1], b[1]) - max(a[0], b[0])
    return max(0.0, inter) / max(max(a[1], b[1]) - min(a[0], b[0]), 1e-9)


def match_events(events: list[tuple[float, float]], calls: list[tuple[float, float]], *,
                 min_iou: float = 0.3) -> list[tuple[int, int]]:
    """(event index, call index) pairs, one to one, greedily by highest IoU, each >= ``min_iou``
    (the DCASE few-shot bioacoustic event metric's matching)."""
    pairs = sorted(((iou(e, c), i, j) for i, e in enumerate(events) for j, c in enumerate(calls)
                    if _touches(e, c)), reverse=True)
    used_e, used_c, out = set(), set(), []
    for value, i, j in pairs:
        if value >= min_iou and i not in used_e and j not in used_c:
            used_e.add(i)
            used_c.add(j)
            out.append((i, j))
    return sorted(out)


def localisation(events: list[tuple[float, float]], calls: list[tuple[float, float]], *,
                 min_iou: float = 0.3) -> dict:
    """Event F1 at IoU >= ``min_iou`` and the onset / offset errors (event - call, seconds) of the
    matched pairs, of one recording's events against its calls."""
    pairs = match_events(events, calls, min_iou=min_iou)
    return {"tp": len(pairs), "fp": len(events) - len(pairs), "fn": len(calls) - len(pairs),
            "onset_errors": [events[i][0] - calls[j][0] for i, j in pairs],
            "offset_errors": [events[i][1] - calls[j][1] for i, j in pairs]}


def summarise_localisation(parts: list[dict]) -> dict:
    """Pooled :func:`localisation` of several recordings: F1 and median absolute errors."""
    tp, fp, fn = (sum(p[k] for p in parts) for k in ("tp", "fp", "fn"))
    onset = np.abs([x for p in parts for x in p["onset_errors"]])
    offset = np.abs([x for p in parts for x in p["offset_errors"]])
    return {**rates(tp, fp, fn), "tp": tp, "fp": fp, "fn": fn,
            "median_onset_error_s": float(np.median(onset)) if len(onset) else None,
            "median_offset_error_s": float(np.median(offset)) if len(offset) else None}


def event_metrics(timelines: dict[str, tuple[np.ndarray, np.ndarray]], recordings: list[Recording],
                  labels: list[str], params: dict[str, DetectorParams], window_s: float,
                  hop_s: float, layout: FrameLayout | None = None) -> dict:
    """Event-level figures per label, from the events the device's detector makes of the window
    scores (``params``: the detection settings and extents the bundle ships):

    - an event that touches an annotation is a hit, one that touches only unannotated
      background a false alarm (per hour of background: the audio that windows without any
      annotation cover); an annotation no event touches is a miss;
    - ``localisation``: F1 at IoU >= 0.3 against the annotations, median onset/offset errors.
    """
    out = {}
    for i, label in enumerate(labels):
        hits = false_alarms = found = regions_total = 0
        negative_sources, negative_starts, parts = [], [], []
        for r in recordings:
            if r.name not in timelines:
                continue
            starts = timelines[r.name][0]
            regions = merged_regions(r, label)
            others = [(s, e) for other in labels if other != label for s, e in merged_regions(r, other)]
            excused = regions + others + list(r.ignored)
            events = [(d.start_s, d.end_s) for d in label_events(timelines[r.name], i, params[label],
                                                                 window_s=window_s, hop_s=hop_s,
                                                                 layout=layout, label=label)]
            for event in events:
                if any(_touches(event, region) for region in regions):
                    hits += 1
                elif not any(_touches(event, region) for region in excused):
                    false_alarms += 1
            regions_total += len(regions)
            found += sum(any(_touches(region, event) for event in events) for region in regions)
            parts.append(localisation(events, regions))
            for start in starts:
                y, ambiguous = window_labels(r, start, window_s, labels)
                if not y.any() and not ambiguous:
                    negative_sources.append(r.name)
                    negative_starts.append(start)
        hours = covered_hours(np.array(negative_sources), np.array(negative_starts, np.float64), window_s)
        precision = hits / (hits + false_alarms) if hits + false_alarms else None
        recall = found / regions_total if regions_total else None
        f1 = (2 * precision * recall / (precision + recall)
              if precision is not None and recall is not None and precision + recall > 0 else None)
        out[label] = {"events_hit": hits, "false_alarm_events": false_alarms, "annotations": regions_total,
                      "annotations_found": found, "precision": precision, "recall": recall, "f1": f1,
                      "false_alarms_per_hour": false_alarms / hours if hours > 0 else None,
                      "background_hours": hours, "localisation": summarise_localisation(parts)}
    return out


FRAME_THRESHOLDS = np.round(np.concatenate([np.arange(0.1, 0.951, 0.05), [0.97, 0.98, 0.99]]), 2)
"""Frame thresholds tried by :func:`calibrate_frame_threshold`."""


SEGMENT_S = 1.0
"""Segment length of the segment-based F1 (DCASE's 1 s segments) that breaks ties between frame
thresholds of equal event F1."""


def segment_counts(events: list[tuple[float, float]], calls: list[tuple[float, float]], *,
                   ignored: list[tuple[float, float]], duration_s: float) -> tuple[int, int, int]:
    """(tp, fp, fn) of back-to-back ``SEGMENT_S`` segments from 0: a segment is positive when an
    event (predicted) or a call (true) touches it; segments touching an ignored stretch do not count."""
    tp = fp = fn = 0
    for start in np.arange(0.0, duration_s - 1e-9, SEGMENT_S).tolist():
        segment = (start, start + SEGMENT_S)
        if any(_touches(segment, x) for x in ignored):
            continue
        predicted = any(_touches(segment, e) for e in events)
        true = any(_touches(segment, c) for c in calls)
        tp, fp, fn = tp + (predicted and true), fp + (predicted and not true), fn + (true and not predicted)
    return tp, fp, fn


def calibrate_frame_threshold(timelines: dict, recordings: list[Recording], i: int, label: str,
                              params: DetectorParams, *, layout: FrameLayout, hop_s: float,
                              fallback: float) -> dict:
    """The frames extent rule of one label: the frame threshold whose events (the device's frame
    rule, ``params`` otherwise) reach the best F1 at IoU >= 0.3 against the annotated calls of
    the recordings with frame timelines; a few validation calls often leave a wide plateau, so
    ties go to the best segment-based F1 (1 s segments, DCASE's other metric: how much of each
    call's time the events cover), then to the middle one. ``fallback`` when the recordings
    hold no call. Returns {"rule": "frames", "threshold", "calls", "f1", "segment_f1"}."""
    from dataclasses import replace

    chosen = [(r, timelines[r.name]) for r in recordings
              if r.kind == "selections" and r.name in timelines and len(timelines[r.name]) == 3]
    calls = sum(len(merged_regions(r, label)) for r, _ in chosen)
    if not calls:
        return {"rule": "frames", "threshold": float(fallback), "calls": 0, "f1": None, "segment_f1": None}
    scores = []
    for t in FRAME_THRESHOLDS.tolist():
        at = replace(params, threshold=t)
        parts, segments = [], np.zeros(3)
        for r, timeline in chosen:
            events = [(d.start_s, d.end_s) for d in label_events(timeline, i, at, window_s=0.0, hop_s=hop_s,
                                                                 layout=layout)]
            parts.append(localisation(events, merged_regions(r, label)))
            segments += segment_counts(events, merged_regions(r, label), ignored=list(r.ignored),
                                       duration_s=r.duration_s)
        tp, fp, fn = segments
        scores.append((round(summarise_localisation(parts)["f1"] or 0.0, 9), round(2 * tp / max(2 * tp + fp + fn, 1), 9)))
    best = max(scores)
    tied = [t for t, score in zip(FRAME_THRESHOLDS.tolist(), scores) if score == best]
    return {"rule": "frames", "threshold": float(tied[(len(tied) - 1) // 2]), "calls": calls,
            "f1": round(best[0], 4), "segment_f1": round(best[1], 4)}
