"""The detector as a state object, driven by scripted score sequences (no audio, no model)."""

from __future__ import annotations

import pytest

from device.config import validate
from device.detector import Detection, DetectorParams, LabelDetector, detector_params

HOP = 0.5
WINDOW = 3.0


def run(scores: list[float], **params) -> list[Detection]:
    """Feed windows k = 0, 1, ... starting at k * HOP; return every event, finish included."""
    params.setdefault("threshold", 0.5)
    detector = LabelDetector("call", DetectorParams(**params))
    events = []
    for k, score in enumerate(scores):
        events += closed(detector.update(k * HOP, k * HOP + WINDOW, score))
    return events + detector.finish()


def closed(detections: list[Detection]) -> list[Detection]:
    return [d for d in detections if d.closed]


def spans(events: list[Detection]) -> list[tuple[float, float]]:
    return [(e.start_s, e.end_s) for e in events]


def test_one_run_of_windows_is_one_event_with_its_peak():
    events = run([0.1, 0.2, 0.7, 0.9, 0.8, 0.2, 0.1])
    assert spans(events) == [(1.0, 2.0 + WINDOW)]
    assert events[0].peak_score == pytest.approx(0.9)
    assert events[0].label == "call"


def test_nothing_below_threshold_and_threshold_is_inclusive():
    assert run([0.49, 0.3, 0.49]) == []
    assert spans(run([0.1, 0.5, 0.1])) == [(0.5, 0.5 + WINDOW)]


def test_event_is_reported_when_it_closes_not_before():
    detector = LabelDetector("call", DetectorParams(threshold=0.5))
    assert closed(detector.update(0.0, 3.0, 0.9)) == []
    assert closed(detector.update(0.5, 3.5, 0.9)) == []
    assert spans(closed(detector.update(1.0, 4.0, 0.1))) == [(0.0, 3.5)]


def test_event_open_at_the_end_is_closed_by_finish():
    detector = LabelDetector("call", DetectorParams(threshold=0.5))
    for k in range(3):
        detector.update(k * HOP, k * HOP + WINDOW, 0.8)
    assert spans(detector.finish()) == [(0.0, 1.0 + WINDOW)]
    assert detector.finish() == []  # reset: nothing left


def test_hysteresis_keeps_an_event_open_through_a_dip():
    scores = [0.8, 0.45, 0.8, 0.1]
    assert spans(run(scores, hysteresis=0.0)) == [(0.0, WINDOW), (1.0, 1.0 + WINDOW)]
    assert spans(run(scores, hysteresis=0.1)) == [(0.0, 1.0 + WINDOW)]
    # The dip must not open an event by itself: 0.45 < threshold.
    assert run([0.45, 0.45], hysteresis=0.1) == []


def test_smoothing_averages_the_last_windows():
    # A single spike of 0.9 averages to 0.3 over 3 windows: no event.
    assert run([0.0, 0.0, 0.9, 0.0, 0.0], smoothing_windows=3) == []
    # Sustained 0.9 crosses 0.5 once the mean does: (0 + .9 + .9) / 3 = 0.6 at window 2,
    # and stays above until window 4: (.9 + .9 + 0) / 3 = 0.6, then 0.3.
    events = run([0.0, 0.9, 0.9, 0.9, 0.0, 0.0, 0.0], smoothing_windows=3)
    assert spans(events) == [(1.0, 2.0 + WINDOW)]
    assert events[0].peak_score == pytest.approx(0.9)


def test_k_of_n_confirmation_needs_k_windows_and_starts_at_the_first():
    isolated = [0.9, 0.1, 0.1, 0.9, 0.1, 0.1]
    assert run(isolated, confirm_k=2, confirm_n=3) == []
    events = run([0.1, 0.9, 0.1, 0.9, 0.9, 0.1, 0.1, 0.1], confirm_k=2, confirm_n=3)
    # Confirmed at window 3 (windows 1 and 3 of the last 3); starts at window 1.
    assert spans(events) == [(0.5, 2.0 + WINDOW)]


def test_merge_gap_joins_events_separated_by_short_gaps():
    scores = [0.9, 0.1, 0.9, 0.1, 0.1, 0.1, 0.1, 0.9, 0.1]
    assert len(run(scores)) == 3
    # One window below between the first two (gap 0.5 s), four before the third (2.0 s).
    merged = run(scores, merge_gap_s=0.5)
    assert spans(merged) == [(0.0, 1.0 + WINDOW), (3.5, 3.5 + WINDOW)]
    assert spans(run(scores, merge_gap_s=2.0)) == [(0.0, 3.5 + WINDOW)]


def test_merged_event_keeps_the_highest_peak():
    events = run([0.95, 0.1, 0.7, 0.1, 0.1, 0.1], merge_gap_s=1.0)
    assert len(events) == 1 and events[0].peak_score == pytest.approx(0.95)


def test_held_event_is_released_once_no_merge_is_possible():
    detector = LabelDetector("call", DetectorParams(threshold=0.5, merge_gap_s=1.0))
    out = [
        closed(detector.update(k * HOP, k * HOP + WINDOW, s))
        for k, s in enumerate([0.9, 0.1, 0.1, 0.1, 0.1])
    ]
    # Closed at window 1 and held; at window 3 (start 1.5 s) the earliest next event would
    # start at 2.0 s, 1.5 s of below-threshold windows after window 0: no merge possible.
    assert [len(x) for x in out] == [0, 0, 0, 1, 0]
    assert spans(out[3]) == [(0.0, WINDOW)]


def test_refractory_time_blocks_new_events():
    scores = [0.9, 0.1, 0.9, 0.9, 0.1, 0.1, 0.1, 0.9, 0.1]
    assert len(run(scores)) == 3
    events = run(scores, refractory_s=1.0)
    # After window 0 (last window of event 1) nothing opens before 0 + 0.5 + 1.0 = 1.5 s.
    assert spans(events) == [(0.0, WINDOW), (1.5, 1.5 + WINDOW), (3.5, 3.5 + WINDOW)]
    assert spans(run(scores, refractory_s=3.0)) == [(0.0, WINDOW), (3.5, 3.5 + WINDOW)]


def test_max_event_length_splits_long_events():
    events = run([0.9] * 10 + [0.1], max_event_s=4.0)
    # Window k ends at k*0.5 + 3; the event from 0 can grow to end 4.0 (windows 0..2); the
    # next carries on from 4.0, without overlapping it, to the last window's end.
    assert spans(events) == [(0.0, 4.0), (4.0, 7.5)]
    assert all(e.end_s - e.start_s <= 4.0 for e in events)
    long = run([0.9] * 40 + [0.1], max_event_s=4.0, start_trim_s=1.0, end_trim_s=1.0)
    assert all(a.end_s == b.start_s for a, b in zip(long, long[1:]))  # they tile
    assert long[0].start_s == 1.0 and long[-1].end_s == 39 * HOP + WINDOW - 1.0
    assert all(e.end_s - e.start_s <= 4.0 for e in long)


def test_params_take_model_thresholds_unless_config_overrides():
    cfg = validate(
        {
            "detection": {
                "thresholds": {"b": 0.8},
                "confirm_k": 2,
                "confirm_n": 3,
                "hysteresis": 0.05,
            }
        }
    )
    params = detector_params(
        labels=("a", "b"), bundle_thresholds={"a": 0.6, "b": 0.4}, detection=cfg.detection
    )
    assert params["a"].threshold == 0.6 and params["b"].threshold == 0.8
    assert (params["a"].confirm_k, params["a"].confirm_n, params["a"].hysteresis) == (2, 3, 0.05)


def test_threshold_override_for_unknown_label_is_refused():
    cfg = validate({"detection": {"thresholds": {"owl": 0.8}}})
    with pytest.raises(ValueError, match=r"detection.thresholds.owl: not a label of the model"):
        detector_params(labels=("a",), bundle_thresholds={"a": 0.6}, detection=cfg.detection)


def test_an_event_is_reported_when_it_opens_and_again_when_it_closes():
    detector = LabelDetector("call", DetectorParams(threshold=0.5, confirm_k=2, confirm_n=2))
    assert detector.update(0.0, 3.0, 0.9) == []  # not confirmed yet
    opened = detector.update(0.5, 3.5, 0.9)
    assert [(d.start_s, d.end_s, d.closed) for d in opened] == [(0.0, 3.5, False)]
    assert detector.update(1.0, 4.0, 0.95) == []
    final = detector.update(1.5, 4.5, 0.1)
    assert [(d.start_s, d.end_s, d.peak_score, d.closed) for d in final] == [(0.0, 4.0, 0.95, True)]
    assert final[0].number == opened[0].number
    again = detector.update(2.0, 5.0, 0.9) + detector.update(2.5, 5.5, 0.9)
    assert again[0].number == opened[0].number + 1 and not again[0].closed


def test_a_merged_event_opens_once_and_closes_once():
    detector = LabelDetector("call", DetectorParams(threshold=0.5, merge_gap_s=1.0), hop_s=HOP)
    out = [d for k, s in enumerate([0.9, 0.1, 0.9, 0.1, 0.1, 0.1, 0.1])
           for d in detector.update(k * HOP, k * HOP + WINDOW, s)] + detector.finish()
    assert [(d.closed, d.number) for d in out] == [(False, 1), (True, 1)]
    assert (out[1].start_s, out[1].end_s) == (0.0, 1.0 + WINDOW)


def test_trims_localise_the_event_inside_its_windows():
    # Five windows fire, covering 0..5 s; a call seen by all five is where they all overlap.
    events = run([0.9] * 5 + [0.1], start_trim_s=2.0, end_trim_s=2.5)
    assert spans(events) == [(2.0, 2.0 + WINDOW - 2.5)]
    # The centre rule: each window stands for the hop at its centre.
    centre = (WINDOW - HOP) / 2
    assert spans(run([0.1, 0.9, 0.9, 0.1], start_trim_s=centre, end_trim_s=centre)) == [(1.75, 2.75)]


def test_a_short_run_trimmed_past_itself_is_one_hop_at_its_middle():
    detector = LabelDetector("call", DetectorParams(threshold=0.5, start_trim_s=2.5, end_trim_s=2.0), hop_s=HOP)
    events = closed(detector.update(1.0, 4.0, 0.9) + detector.update(1.5, 4.5, 0.1))
    # Trimmed: [3.5, 2.0]; middle 2.75.
    assert spans(events) == [(2.5, 3.0)]
