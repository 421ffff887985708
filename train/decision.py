"""The decision rule a run ships: per-label thresholds and the event rule (detection settings and
extent trims), calibrated on held-out scores. False alarms and events are counted by the
device's own detector (the one event rule), with the settings the bundle will carry.

Inputs: ``y`` (N, n_labels) 0/1 and ``scores`` (N, n_labels) probabilities of held-out windows;
``timelines``: recording name -> (window starts in s, (n, n_labels) probabilities) every
``hop_s``. Pure functions of their arguments (and ``log``).
"""

from __future__ import annotations

import numpy as np

from device.bundle import event_settings
from device.config import DetectionSection, TrainSection
from device.detector import DetectorParams, detect, detector_params
from device.frames import FrameLayout
from train.calibrate import (
    calibrate_extent,
    threshold_at_best_f1,
    threshold_at_false_alarms,
    threshold_at_precision,
)
from train.datasets import Recording
from train.evaluate import calibrate_frame_threshold
from train.prepare import Log
from train.windows import merged_regions, window_labels


def calibrate_thresholds(
    *,
    cfg: TrainSection,
    labels: list[str],
    y: np.ndarray,
    scores: np.ndarray,
    timelines: dict,
    recordings: list[Recording],
    window_s: float,
    hop_s: float,
    detection: dict[str, DetectorParams],
) -> dict:
    """{label: Threshold} on validation data, by ``cfg.calibration.method``; false alarms are
    counted by the device's detector with ``detection`` (per label; thresholds replaced)."""
    out = {}
    for i, label in enumerate(labels):
        if cfg.calibration.method == "precision":
            out[label] = threshold_at_precision(
                y[:, i], scores[:, i], target=cfg.calibration.target_precision
            )
            continue
        if cfg.calibration.method == "f1":
            out[label] = threshold_at_best_f1(y[:, i], scores[:, i])
            continue
        sources, starts, negatives = [], [], []
        for r in recordings:
            starts_r, probs_r = timelines[r.name][:2]
            for start, score in zip(starts_r, probs_r[:, i]):
                if r.kind == "clips":
                    negative = r.annotations[0].label != label
                else:
                    truth, ambiguous = window_labels(r, start, window_s, labels)
                    negative = not truth[i] and not ambiguous
                if negative:
                    sources.append(r.name)
                    starts.append(start)
                    negatives.append(score)
        out[label] = threshold_at_false_alarms(
            sources=np.array(sources),
            starts=np.array(starts),
            scores=np.array(negatives),
            window_s=window_s,
            hop_s=hop_s,
            per_hour=cfg.calibration.false_alarms_per_hour,
            params=detection[label],
        )
    return out


def calibrate_events(
    *,
    detection: DetectionSection,
    labels: list[str],
    thresholds: dict[str, float],
    timelines: dict,
    recordings: list[Recording],
    window_s: float,
    hop_s: float,
    log: Log = print,
    layout: FrameLayout | None = None,
) -> tuple[dict[str, DetectorParams], dict]:
    """The event rule the bundle ships: the detection settings (the config's ``detection``
    section) and, per label, the extent trims calibrated on the annotated validation recordings
    (with a frame ``layout``: the frames rule and its threshold, on the same recordings).
    Returns (detector params per label, the ``events`` record of run.json / model.json)."""
    untrimmed = detector_params(
        labels=tuple(labels), bundle_thresholds=thresholds, detection=detection
    )
    extent = {}
    if layout is not None:
        for i, label in enumerate(labels):
            extent[label] = calibrate_frame_threshold(
                timelines,
                recordings,
                i,
                label,
                untrimmed[label],
                layout=layout,
                hop_s=hop_s,
                fallback=thresholds[label],
            )
            log(
                f"event extent {label}: frames rule, frame threshold {extent[label]['threshold']} "
                f"(event F1 {extent[label]['f1']}, 1 s segment F1 {extent[label]['segment_f1']} on "
                f"{extent[label]['calls']} validation calls)"
            )
        frame_thresholds = {label: e["threshold"] for label, e in extent.items()}
        params = detector_params(
            labels=tuple(labels), bundle_thresholds=frame_thresholds, detection=detection
        )
        return params, {"detection": event_settings(detection), "extent": extent}
    for i, label in enumerate(labels):
        pairs = []
        for r in recordings:
            if r.kind == "selections" and r.name in timelines:
                starts, scores = timelines[r.name][:2]
                events = detect(
                    starts, scores[:, i], untrimmed[label], window_s=window_s, hop_s=hop_s
                )
                pairs.append(([(d.start_s, d.end_s) for d in events], merged_regions(r, label)))
        extent[label] = calibrate_extent(pairs, window_s=window_s, hop_s=hop_s)
        log(
            f"event extent {label}: {extent[label]['rule']} rule, trims {extent[label]['trim_s']} s "
            f"({extent[label]['calls']} validation calls)"
        )
    trims = {label: tuple(e["trim_s"]) for label, e in extent.items()}
    params = detector_params(
        labels=tuple(labels), bundle_thresholds=thresholds, detection=detection, trims=trims
    )
    return params, {"detection": event_settings(detection), "extent": extent}
