"""One event rule: every consumer of window scores makes the events the device makes.

The device's detector (``device.detector.Detector``, fed window by window as the pipeline feeds
it) is the reference. Random score sequences and detection settings go to it and to each place
that turns scores into events elsewhere: ``detect`` (the benches and training), training's
event metrics, false-alarm counting and threshold calibration (which ``train.recalibrate`` runs).
The frame rule (a model's frame output, stitched) is checked the same way: ``detect_frames``,
training's event metrics and frame-threshold calibration against the device's ``Detector``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device.detector import Detection, Detector, DetectorParams, detect, detect_frames
from device.frames import FrameLayout
from train.calibrate import alarm_rate, threshold_at_false_alarms
from train.datasets import Annotation, Recording
from train.evaluate import (
    FRAME_THRESHOLDS,
    calibrate_frame_threshold,
    event_metrics,
    label_events,
    localisation,
)

HOP, WINDOW = 0.5, 3.0

# Scores drawn from a few levels make runs, dips and gaps as real score tracks have them.
score_lists = st.lists(st.sampled_from([0.0, 0.1, 0.3, 0.45, 0.5, 0.55, 0.7, 0.9, 1.0]) | st.floats(0, 1),
                       min_size=1, max_size=120)


@st.composite
def detector_params(draw) -> DetectorParams:
    n = draw(st.integers(1, 4))
    return DetectorParams(
        threshold=draw(st.floats(0.05, 0.95)),
        smoothing_windows=draw(st.integers(1, 3)),
        confirm_k=draw(st.integers(1, n)),
        confirm_n=n,
        hysteresis=draw(st.sampled_from([0.0, 0.1, 0.3])),
        merge_gap_s=draw(st.sampled_from([0.0, 0.5, 1.0, 2.5])),
        refractory_s=draw(st.sampled_from([0.0, 0.5, 2.0])),
        max_event_s=draw(st.sampled_from([0.5, 2.0, 4.0, 60.0])),
        start_trim_s=draw(st.sampled_from([0.0, 1.0, 1.25, 2.5])),
        end_trim_s=draw(st.sampled_from([0.0, 1.25, 2.0])),
    )


def device_events(scores: list[float], params: DetectorParams) -> list[Detection]:
    """What the pipeline emits for one source: each window in turn, then finish() at its end."""
    detector = Detector({"call": params}, hop_s=HOP)
    out: list[Detection] = []
    for k, score in enumerate(scores):
        out += detector.update(k * HOP, k * HOP + WINDOW, [score])
    return [d for d in out + detector.finish() if d.closed]


def recording(name: str, scores: list[float], calls=()) -> Recording:
    return Recording(path=Path(name), name=name, dataset=0, kind="selections", group=name,
                     duration_s=(len(scores) - 1) * HOP + WINDOW, unannotated_negative=True,
                     annotations=tuple(Annotation(s, e, "call") for s, e in calls))


PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(scores=score_lists, params=detector_params())
def test_detect_makes_the_device_events(scores, params):
    starts = np.arange(len(scores)) * HOP
    expected = device_events(scores, params)
    got = detect(starts, np.array(scores), params, window_s=WINDOW, hop_s=HOP, label="call")
    assert got == expected
    for event in expected:
        assert event.start_s <= event.end_s
        assert event.start_s >= -1e-9 and event.end_s <= (len(scores) - 1) * HOP + WINDOW + 1e-9


@PROPERTY
@given(scores=score_lists, params=detector_params())
def test_false_alarms_are_the_device_events(scores, params):
    starts = np.arange(len(scores)) * HOP
    expected = len(device_events(scores, params))
    rates, hours = alarm_rate(sources=np.array(["a"] * len(scores)), starts=starts, scores=np.array(scores),
                              window_s=WINDOW, hop_s=HOP, thresholds=np.array([params.threshold]), params=params)
    assert rates[0] * hours == pytest.approx(expected)
    # Training's event metrics on a recording without calls: every device event is a false alarm.
    rec = recording("a.wav", scores)
    metrics = event_metrics({rec.name: (starts, np.array(scores)[:, None])}, [rec], ["call"],
                            {"call": params}, WINDOW, HOP)["call"]
    assert metrics["false_alarm_events"] == expected and metrics["events_hit"] == 0


@PROPERTY
@given(scores=score_lists, params=detector_params())
def test_event_metrics_see_the_device_extents(scores, params):
    starts = np.arange(len(scores)) * HOP
    events = device_events(scores, params)
    # Annotate exactly the device's events apart from the others (touching annotations merge
    # into one region): each is then a hit at IoU 1, with no onset or offset error.
    calls = [(e.start_s, e.end_s) for i, e in enumerate(events)
             if all(min(e.end_s, o.end_s) - max(e.start_s, o.start_s) < -1e-6
                    for j, o in enumerate(events) if j != i)]
    rec = recording("a.wav", scores, calls)
    metrics = event_metrics({rec.name: (starts, np.array(scores)[:, None])}, [rec], ["call"],
                            {"call": params}, WINDOW, HOP)["call"]
    where = metrics["localisation"]
    assert where["tp"] == len(calls)
    assert where["tp"] + where["fp"] == len(events) and where["fn"] == 0
    if calls:
        assert where["median_onset_error_s"] == pytest.approx(0, abs=1e-9)
        assert where["median_offset_error_s"] == pytest.approx(0, abs=1e-9)


@PROPERTY
@given(tracks=st.lists(score_lists, min_size=1, max_size=3), params=detector_params(),
       per_hour=st.sampled_from([0.0, 100.0, 1000.0, 5000.0]))
def test_calibrated_threshold_gives_the_rate_the_device_gives(tracks, params, per_hour):
    sources = np.concatenate([[f"r{i}"] * len(t) for i, t in enumerate(tracks)])
    starts = np.concatenate([np.arange(len(t)) * HOP for t in tracks])
    scores = np.concatenate([np.array(t, np.float64) for t in tracks])
    chosen = threshold_at_false_alarms(sources=sources, starts=starts, scores=scores, window_s=WINDOW, hop_s=HOP,
                                       per_hour=per_hour, params=params)
    if chosen.method != "false_alarms":
        return
    at = DetectorParams(**{**params.__dict__, "threshold": chosen.value})
    alarms = sum(len(device_events(t, at)) for t in tracks)
    hours = chosen.achieved["hours"]
    assert alarms / hours == pytest.approx(chosen.achieved["false_alarms_per_hour"])
    assert alarms / hours <= per_hour + 1e-6 or "even the highest threshold" in chosen.note


LAYOUT = FrameLayout(steps=9, step_frames=16, frame_s=0.02, cell_frames=5)
frame_tracks = st.lists(st.lists(st.sampled_from([0.0, 0.2, 0.45, 0.55, 0.8, 1.0]), min_size=9, max_size=9),
                        min_size=1, max_size=40)


def device_frame_events(frames: list[list[float]], params: DetectorParams) -> list[Detection]:
    """What the pipeline emits under the frame rule: each window's frame scores in turn."""
    detector = Detector({"call": params}, hop_s=HOP, frames=LAYOUT)
    out: list[Detection] = []
    for k, window in enumerate(frames):
        out += detector.update(k * HOP, k * HOP + WINDOW, [max(window)], np.array(window)[:, None])
    return [d for d in out + detector.finish() if d.closed]


@PROPERTY
@given(frames=frame_tracks, params=detector_params())
def test_frame_rule_consumers_make_the_device_events(frames, params):
    starts = np.arange(len(frames)) * HOP
    track = np.array(frames)[:, :, None]
    expected = device_frame_events(frames, params)
    assert detect_frames(starts, track[:, :, 0], params, layout=LAYOUT, hop_s=HOP, label="call") == expected
    timeline = (starts, track.max(axis=1), track)
    assert label_events(timeline, 0, params, window_s=WINDOW, hop_s=HOP, layout=LAYOUT, label="call") == expected
    for event in expected:
        assert event.start_s < event.end_s  # a frame event is the span of its cells, never trimmed
    # Training's event metrics: the device's events, annotated, are hits with no error.
    calls = [(e.start_s, e.end_s) for i, e in enumerate(expected)
             if all(min(e.end_s, o.end_s) - max(e.start_s, o.start_s) < -1e-6
                    for j, o in enumerate(expected) if j != i)]
    rec = recording("a.wav", [0.0] * len(frames), calls)
    where = event_metrics({rec.name: timeline}, [rec], ["call"], {"call": params}, WINDOW, HOP,
                          LAYOUT)["call"]["localisation"]
    assert where["tp"] == len(calls) and where["tp"] + where["fp"] == len(expected)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=frame_tracks, calls=st.lists(st.tuples(st.floats(0, 20), st.floats(0.2, 2.0)), max_size=4))
def test_frame_threshold_is_the_best_the_device_reaches(frames, calls):
    starts = np.arange(len(frames)) * HOP
    track = np.array(frames)[:, :, None]
    rec = recording("a.wav", [0.0] * len(frames), [(s, s + d) for s, d in calls])
    params = DetectorParams(threshold=0.5)
    chosen = calibrate_frame_threshold({rec.name: (starts, track.max(axis=1), track)}, [rec], 0, "call", params,
                                       layout=LAYOUT, hop_s=HOP, fallback=0.5)
    if chosen["calls"] == 0:
        assert chosen["threshold"] == 0.5
        return

    def f1(threshold: float) -> float:
        events = device_frame_events(frames, DetectorParams(threshold=threshold))
        part = localisation([(e.start_s, e.end_s) for e in events], [(s, e) for s, e in _merged(rec)])
        return 2 * part["tp"] / (2 * part["tp"] + part["fp"] + part["fn"])

    assert f1(chosen["threshold"]) == pytest.approx(chosen["f1"], abs=1e-4)
    assert chosen["threshold"] in FRAME_THRESHOLDS
    assert all(f1(t) <= chosen["f1"] + 1e-4 for t in (0.1, 0.3, 0.5, 0.7, 0.9))


def _merged(rec: Recording) -> list[tuple[float, float]]:
    from train.windows import merged_regions

    return merged_regions(rec, "call")
