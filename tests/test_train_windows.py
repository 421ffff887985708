"""train.windows: cropping around and inside annotations, negatives, balancing, evaluation tiles."""

from __future__ import annotations

import numpy as np
import pytest

from device.features import FeatureParams
from train.datasets import NEGATIVE, Annotation, Recording
from train.windows import (
    WindowSampler,
    crop,
    crop_range,
    evaluation_windows,
    floor_db,
    free_intervals,
    window_labels,
)

PARAMS = FeatureParams()
W = 3.0


def recording(name="rec.wav", duration=60.0, annotations=(), ignored=(), kind="selections", group="g"):
    return Recording(path=None, name=name, dataset=0, kind=kind, group=group, duration_s=duration,
                     annotations=tuple(annotations), ignored=tuple(ignored),
                     unannotated_negative=kind != "clips")


def features_for(*recordings):
    rng = np.random.default_rng(0)
    return {r.name: rng.normal(-60, 5, (PARAMS.n_frames(int(r.duration_s * PARAMS.sample_rate)), PARAMS.n_mels))
            .astype(np.float32) for r in recordings}


def test_short_annotation_lands_wholly_inside_every_crop():
    lo, hi = crop_range(10.0, 10.8, window_s=W, shift_s=0.0, duration_s=60.0)
    assert lo < hi
    for start in np.random.default_rng(1).uniform(lo, hi, 200):
        assert start <= 10.0 and start + W >= 10.8


def test_short_annotation_with_shift_keeps_at_least_half_the_call():
    lo, hi = crop_range(10.0, 10.8, window_s=W, shift_s=1.0, duration_s=60.0)
    for start in np.linspace(lo, hi, 50):
        covered = min(start + W, 10.8) - max(start, 10.0)
        assert covered >= 0.4 - 1e-9


def test_long_annotation_is_cropped_inside_it():
    lo, hi = crop_range(20.0, 29.0, window_s=W, shift_s=0.0, duration_s=60.0)
    assert (lo, hi) == (20.0, 26.0)


def test_crops_stay_inside_the_file():
    lo, hi = crop_range(0.2, 0.6, window_s=W, shift_s=0.5, duration_s=60.0)
    assert lo >= 0.0
    lo, hi = crop_range(59.0, 59.9, window_s=W, shift_s=0.5, duration_s=60.0)
    assert hi <= 57.0


def test_window_labels_by_overlap_and_ignored_stretches():
    r = recording(annotations=[Annotation(10.0, 11.0, "call")], ignored=[(30.0, 33.0)])
    assert window_labels(r, 9.0, W, ["call"])[0][0] == 1
    y, ambiguous = window_labels(r, 10.8, W, ["call"])  # 0.2 s of a 1 s call
    assert y[0] == 0 and ambiguous
    y, ambiguous = window_labels(r, 29.0, W, ["call"])
    assert y[0] == 0 and ambiguous
    y, ambiguous = window_labels(r, 40.0, W, ["call"])
    assert y[0] == 0 and not ambiguous


def test_free_intervals_avoid_calls_and_ignored_stretches():
    r = recording(duration=30.0, annotations=[Annotation(10.0, 11.0, "call")], ignored=[(20.0, 21.0)])
    for lo, hi in free_intervals(r, W):
        for start in np.linspace(lo, hi, 20):
            for s, e in [(10.0, 11.0), (20.0, 21.0)]:
                assert start + W <= s + 1e-9 or start >= e - 1e-9
            assert 0 <= start and start + W <= 30.0 + 1e-9


def test_crop_pads_with_the_floor():
    f = np.zeros((10, PARAMS.n_mels), np.float32)
    out = crop(f, -3, 16, floor_db(PARAMS))
    assert (out[:3] == -100).all() and (out[3:13] == 0).all() and (out[13:] == -100).all()


def _sampler(recordings, ratio=0.333, min_windows=0):
    return WindowSampler(recordings=recordings, features=features_for(*recordings), labels=["call"], params=PARAMS,
                         window_s=W, shift_s=0.5, negatives_per_minute=[10.0] * len(recordings),
                         max_positive_ratio=ratio, min_windows=min_windows)


def test_positives_are_oversampled_to_the_ratio():
    recs = [recording(f"r{i}.wav", 120.0, [Annotation(50.0, 52.0, "call")]) for i in range(3)]
    sampler = _sampler(recs, ratio=0.5)
    negatives = sampler.negatives_per_epoch
    assert negatives == pytest.approx(3 * 10 * 117 / 60, abs=3)
    x, y = sampler.epoch(np.random.default_rng(0))
    assert y.sum() == round(0.5 * negatives)
    assert len(x) == len(y) == y.sum() + negatives
    assert x.shape[1:] == (PARAMS.window_frames(W), PARAMS.n_mels)


def test_positives_are_never_dropped_when_plentiful():
    clips = [recording(f"p{i}.wav", 4.0, [Annotation(0, 4.0, "call")], kind="clips") for i in range(20)]
    clips += [recording(f"n{i}.wav", 4.0, [Annotation(0, 4.0, NEGATIVE)], kind="clips") for i in range(5)]
    x, y = _sampler(clips).epoch(np.random.default_rng(0))
    assert y.sum() == 20 and len(y) == 25


def test_min_windows_draws_fresh_rounds():
    clips = [recording(f"p{i}.wav", 4.0, [Annotation(0, 4.0, "call")], kind="clips") for i in range(4)]
    clips += [recording(f"n{i}.wav", 4.0, [Annotation(0, 4.0, NEGATIVE)], kind="clips") for i in range(12)]
    sampler = _sampler(clips, min_windows=100)
    x, y = sampler.epoch(np.random.default_rng(0))
    assert len(y) >= 100 and y.mean() == pytest.approx(0.25)


def test_epochs_are_seeded():
    recs = [recording("r.wav", 120.0, [Annotation(50.0, 52.0, "call")])]
    a = _sampler(recs).epoch(np.random.default_rng([1, 2]))
    b = _sampler(recs).epoch(np.random.default_rng([1, 2]))
    c = _sampler(recs).epoch(np.random.default_rng([1, 3]))
    assert np.array_equal(a[0], b[0]) and not np.array_equal(a[0], c[0])


def test_evaluation_chunks_follow_the_table_and_skip_ambiguous_ones():
    r = recording("r.wav", 30.0, [Annotation(3.0, 9.0, "call"), Annotation(20.0, 20.5, "call")],
                  ignored=[(12.0, 15.0)])
    ws = evaluation_windows(recordings=[r], features=features_for(r), labels=["call"], params=PARAMS,
                            window_s=W, clip_hop_s=0.5)
    chunks = dict(zip(ws.start_s.tolist(), ws.y[:, 0].tolist()))
    assert chunks[3.0] == 1 and chunks[6.0] == 1 and chunks[18.0] == 1 and chunks[0.0] == 0
    assert 12.0 not in chunks  # ignored ('uncertain') chunk left out
    assert ws.x.shape[1:] == (PARAMS.window_frames(W), PARAMS.n_mels, 1)


def test_evaluation_clips_are_tiled_and_labelled_by_the_clip():
    clip = recording("c.wav", 4.0, [Annotation(0, 4.0, "call")], kind="clips")
    ws = evaluation_windows(recordings=[clip], features=features_for(clip), labels=["call"], params=PARAMS,
                            window_s=W, clip_hop_s=0.5)
    assert ws.start_s.tolist() == [0.0, 0.5, 1.0] and ws.y.sum() == 3


def test_windows_beside_calls_are_drawn_as_negatives():
    r = recording("r.wav", 60.0, [Annotation(21.0, 27.0, "call"), Annotation(40.0, 41.0, "call")],
                  ignored=[(27.0, 30.0)])
    plain = _sampler([r])
    beside = WindowSampler(recordings=[r], features=features_for(r), labels=["call"], params=PARAMS, window_s=W,
                           shift_s=0.5, negatives_per_minute=[10.0], max_positive_ratio=0.333,
                           negatives_beside_calls=True)
    extra = beside.negatives[len(plain.negatives):]
    # the window one over, +-0.5 s (the time shift) but taking in at most a quarter of the call:
    # before 21-27 (17.5-18.5), before and after 40-41 (36.5-37.25, 40.75-41.5); after 27 is
    # ignored ('uncertain'), so nothing there
    assert sorted((round(lo, 2), round(hi, 2)) for _, lo, hi in extra) == [(17.5, 18.5), (36.5, 37.25), (40.75, 41.5)]
    for _, lo, hi in extra:
        for start in (lo, hi):
            y, _ = window_labels(r, start, W, ["call"])
            assert y[0] == 0
            assert not any(min(e, start + W) - max(s, start) > 1e-6 for s, e in r.ignored)
    x, y = beside.epoch(np.random.default_rng(0))
    assert len(y) - y.sum() == plain.negatives_per_epoch + 3
