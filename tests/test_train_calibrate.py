"""train.calibrate: thresholds at a target precision and at a false-alarm rate per hour."""

from __future__ import annotations

import numpy as np
import pytest

from device.detector import DetectorParams
from train.calibrate import (
    alarm_rate,
    threshold_at_best_f1,
    threshold_at_false_alarms,
    threshold_at_precision,
)

PARAMS = DetectorParams(threshold=0.5)
"""The device's detector, plain: no smoothing, confirmation, hysteresis or merging."""


def test_separable_scores_get_a_threshold_between_the_classes():
    y = np.array([0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    t = threshold_at_precision(y, s, target=0.9)
    assert 0.3 < t.value < 0.7 and t.achieved == {"precision": 1.0, "recall": 1.0} and not t.note


def test_best_f1_threshold_balances_misses_and_false_alarms():
    # 400 calls and 1600 negatives: the tolerance (one standard error) is a fraction of one error
    # here, so the rule is the plain best F1, which brute force confirms.
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(400), np.zeros(1600)]
    s = 1 / (1 + np.exp(-(rng.standard_normal(2000) * 1.5 + np.where(y > 0, 2.0, -2.5))))
    t = threshold_at_best_f1(y, s)
    cuts = np.sort(s)
    f1 = [2 * ((s >= c) & (y == 1)).sum() / ((s >= c).sum() + y.sum()) for c in cuts]
    assert t.method == "f1" and t.achieved["best_f1"] == pytest.approx(max(f1))
    assert t.achieved["f1"] >= max(f1) - t.achieved["tolerance"]
    assert t.achieved["tolerance"] == pytest.approx(np.sqrt(max(f1) * (1 - max(f1)) / 400))
    achieved = 2 * ((s >= t.value) & (y == 1)).sum() / ((s >= t.value).sum() + y.sum())
    assert achieved == pytest.approx(t.achieved["f1"])
    assert threshold_at_best_f1(np.zeros(4), np.ones(4) * 0.3).method == "default"


def test_best_f1_on_few_calls_keeps_to_the_models_boundary_within_its_noise():
    # 20 validation calls: 19 score high, one scores 0.08; negatives below 0.02 and one at 0.3.
    # The single best cut (below 0.08: F1 40/41) takes the low call in and would hug it; one call
    # is within the noise of 20, so the threshold stays in the gap around 0.5.
    y = np.r_[np.ones(20), np.zeros(200)]
    s = np.r_[np.linspace(0.9, 0.999, 19), 0.08, np.linspace(0.001, 0.02, 199), 0.3]
    t = threshold_at_best_f1(y, s)
    assert t.achieved["best_f1"] == pytest.approx(40 / 41) and t.achieved["tolerance"] == pytest.approx(1 / 20)
    assert 0.3 < t.value < 0.9 and t.achieved["recall"] == pytest.approx(19 / 20)
    # three low calls are more than the noise: the threshold goes down among them
    s3 = s.copy()
    s3[17:19] = [0.07, 0.06]
    t3 = threshold_at_best_f1(y, s3)
    assert t3.value < 0.08 and t3.achieved["recall"] >= 18 / 20


def test_target_precision_is_reached_with_most_recall():
    rng = np.random.default_rng(0)
    y = rng.random(2000) < 0.3
    s = np.clip(0.5 + 0.25 * (y - 0.5) + 0.2 * rng.standard_normal(2000), 0, 1)
    for target in (0.8, 0.9, 0.95):
        t = threshold_at_precision(y, s, target=target)
        predicted = s >= t.value
        precision = (predicted & y).sum() / predicted.sum()
        assert precision >= target
        # every lower threshold that finds more calls breaks the target
        recall = (predicted & y).sum() / y.sum()
        for lower in np.unique(s[s < t.value]):
            predicted = s >= lower
            if (predicted & y).sum() / y.sum() > recall:
                assert (predicted & y).sum() / predicted.sum() < target


def test_unreachable_precision_falls_back_with_a_note():
    y = np.array([0, 1, 0, 1])
    s = np.array([0.5, 0.5, 0.5, 0.5])
    t = threshold_at_precision(y, s, target=0.99)
    assert "not reached" in t.note and 0 < t.value < 1


def test_alarms_are_runs_of_overlapping_windows():
    starts = np.arange(0, 3600, 0.5)  # one hour, windows of 3 s every 0.5 s
    scores = np.zeros(len(starts))
    scores[100:110] = 0.9   # one run: one alarm
    scores[500] = 0.8       # one more
    scores[900:903] = 0.6   # and another, weaker
    src = np.array(["a.wav"] * len(starts))
    rates, hours = alarm_rate(sources=src, starts=starts, scores=scores, window_s=3.0, hop_s=0.5, params=PARAMS,
                              thresholds=np.array([0.5, 0.7, 0.85, 0.95]))
    assert hours == pytest.approx(1.0, abs=0.01)
    assert rates.tolist() == pytest.approx([3, 2, 1, 0], abs=0.01)


@pytest.mark.parametrize("per_hour, allowed", [(0.0, 0), (1.0, 1), (2.5, 2), (10.0, 3)])
def test_threshold_at_false_alarms_allows_the_rate(per_hour, allowed):
    starts = np.arange(0, 3600, 0.5)
    scores = np.full(len(starts), 0.05)
    scores[[100, 500, 900]] = [0.9, 0.8, 0.6]
    src = np.array(["a.wav"] * len(starts))
    t = threshold_at_false_alarms(sources=src, starts=starts, scores=scores, window_s=3.0, hop_s=0.5,
                                  per_hour=per_hour, params=PARAMS)
    assert (scores >= t.value).sum() == allowed
    assert t.achieved["false_alarms_per_hour"] <= per_hour + 1e-9
    assert 0 < t.value < 1


def test_windows_of_different_files_never_merge():
    starts = np.array([0.0, 0.5, 0.0, 0.5])
    src = np.array(["a", "a", "b", "b"])
    rates, hours = alarm_rate(sources=src, starts=starts, scores=np.ones(4), window_s=3.0, hop_s=0.5,
                              thresholds=np.array([0.5]), params=PARAMS)
    assert rates[0] * hours == pytest.approx(2)


def test_a_detector_stuck_on_counts_once_per_max_event():
    starts = np.arange(0, 3600, 0.5)
    rates, _ = alarm_rate(sources=np.array(["a"] * len(starts)), starts=starts, scores=np.ones(len(starts)),
                          window_s=3.0, hop_s=0.5, thresholds=np.array([0.5]),
                          params=DetectorParams(threshold=0.5, max_event_s=60.0))
    assert rates[0] == pytest.approx(60, abs=1)
