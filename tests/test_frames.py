"""The frame output end to end: stitching across windows (streaming equals batch), the frame
rule in the device's detector, a real int8 model with two outputs in the runtime and the
pipeline (calls a second apart come out separately, at their times, for any chunk size)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_pipeline import SR, Collect, make, replay, tones_signal

from device.bundle import BundleError, load_bundle, manifest_digest
from device.detector import Detector, DetectorParams, detect_frames
from device.frames import FrameLayout, FrameStitcher, at_frame_rate, cell_frames_for, stitch
from device.runtime import load_classifier

LAYOUT = FrameLayout(steps=9, step_frames=16, frame_s=0.02, cell_frames=5)


def test_cells_divide_the_hop_and_are_at_most_half_a_step():
    assert cell_frames_for(hop_frames=25, step_frames=16) == 5
    assert cell_frames_for(hop_frames=24, step_frames=16) == 8
    assert cell_frames_for(hop_frames=7, step_frames=16) == 7
    assert cell_frames_for(hop_frames=13, step_frames=4) == 1


def test_settings_counted_in_windows_span_the_same_time_in_cells():
    p = at_frame_rate(
        DetectorParams(
            threshold=0.5,
            smoothing_windows=2,
            confirm_k=2,
            confirm_n=3,
            start_trim_s=1.0,
            end_trim_s=1.0,
        ),
        hop_s=0.5,
        cell_s=0.1,
    )
    assert (p.smoothing_windows, p.confirm_k, p.confirm_n) == (6, 6, 11)
    assert (p.start_trim_s, p.end_trim_s) == (0.0, 0.0)
    one = at_frame_rate(DetectorParams(threshold=0.5), hop_s=0.5, cell_s=0.1)
    assert (one.smoothing_windows, one.confirm_k, one.confirm_n) == (1, 1, 1)
    most = at_frame_rate(DetectorParams(threshold=0.5, confirm_k=100, confirm_n=100), hop_s=0.5, cell_s=0.1)
    assert (most.confirm_k, most.confirm_n) == (496, 496)  # past the config's bound on windows: allowed


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 30),
    hop_cells=st.integers(1, 8),
    gap_at=st.integers(0, 40),
    splits=st.lists(st.integers(1, 7), min_size=1, max_size=10),
    seed=st.integers(0, 2**16),
)
def test_streaming_stitch_equals_batch_for_any_run_of_windows(n, hop_cells, gap_at, splits, seed):
    """Windows pushed one at a time, finished at the end, give the cells batch stitching gives,
    each the mean of the windows covering it; memory stays within one window of cells."""
    rng = np.random.default_rng(seed)
    hop_s = hop_cells * LAYOUT.cell_s
    starts = np.arange(n) * hop_s + np.where(np.arange(n) >= gap_at, 7.0, 0.0)  # a jump in time
    frames = rng.random((n, LAYOUT.steps, 2))
    cells, scores = stitch(LAYOUT, starts, frames)
    stitcher = FrameStitcher(LAYOUT, 2)
    got_cells, got_scores, most = [], [], 0
    for start, window in zip(starts, frames):
        c, s = stitcher.push(float(start), window)
        got_cells.append(c)
        got_scores.append(s)
        most = max(most, stitcher._n)
    c, s = stitcher.finish()
    got_cells.append(c)
    got_scores.append(s)
    assert np.array_equal(np.concatenate(got_cells), cells)
    assert np.allclose(np.concatenate(got_scores), scores)
    capacity = -(-(LAYOUT.steps * LAYOUT.step_frames) // LAYOUT.cell_frames) + 1
    assert most <= capacity
    # A cell seen by one window only has that window's step score.
    first = LAYOUT.first_frame(starts[0]) // LAYOUT.cell_frames
    assert cells[0] == first and np.allclose(scores[0], frames[0, 0])


ODD_LAYOUT = FrameLayout.at_hop(steps=9, step_frames=16, frame_rate=50.0, hop_s=0.34)
"""A hop of 17 frames: cells of one frame, windows 17 cells apart, 144 cells long."""


@settings(max_examples=80, deadline=None)
@given(
    layout_hops=st.sampled_from([(LAYOUT, 1), (LAYOUT, 2), (LAYOUT, 5), (LAYOUT, 8), (LAYOUT, 29),
                                 (LAYOUT, 31), (ODD_LAYOUT, 17), (ODD_LAYOUT, 150)]),
    n=st.integers(1, 40),
    n_labels=st.integers(1, 3),
    shift=st.integers(0, 4),
    jump_at=st.integers(0, 50),
    blocks=st.lists(st.integers(1, 12), min_size=1, max_size=10),
    seed=st.integers(0, 2**16),
)
def test_a_block_of_windows_stitches_bit_for_bit_as_its_windows_one_by_one(
    layout_hops, n, n_labels, shift, jump_at, blocks, seed
):
    """push_block (replay's blocks of windows) gives the cells and the very float64 scores of
    push (the live worker's window at a time), then finish the same rest: any hop in cells
    (including windows further apart than they are long), windows off the cell grid by the
    same shift, a jump in time inside a block, blocks of any size."""
    layout, hop_cells = layout_hops
    rng = np.random.default_rng(seed)
    frame_index = shift + np.arange(n) * hop_cells * layout.cell_frames
    frame_index += np.where(np.arange(n) >= jump_at, 351, 0)
    starts = (frame_index * layout.frame_s).tolist()
    # float64 scores with all 53 bits, so that the order of the additions shows (sums of a few
    # float32 scores in float64 are often exact in any order).
    frames = rng.random((n, layout.steps, n_labels))
    by_window, by_block = FrameStitcher(layout, n_labels), FrameStitcher(layout, n_labels)
    expected = [by_window.push(start, window) for start, window in zip(starts, frames)]
    got, k, sizes = [], 0, iter(blocks)
    while k < n:
        size = next(sizes, n)
        got.append(by_block.push_block(starts[k : k + size], frames[k : k + size]))
        k += size
    expected.append(by_window.finish())
    got.append(by_block.finish())
    assert np.array_equal(np.concatenate([c for c, _ in got]), np.concatenate([c for c, _ in expected]))
    got_scores = np.concatenate([s for _, s in got])
    assert got_scores.dtype == np.float64
    assert got_scores.tobytes() == np.concatenate([s for _, s in expected]).tobytes()


def _track(starts, calls):
    """Frame scores (K, steps) that are 1 on steps whose centre lies in a call, else 0."""
    step_s = LAYOUT.step_frames * LAYOUT.frame_s
    centres = starts[:, None] + (np.arange(LAYOUT.steps) + 0.5) * step_s
    return np.array([[any(a <= t < b for a, b in calls) for t in row] for row in centres], float)


def test_the_frame_rule_separates_calls_a_second_apart_and_places_them():
    starts = np.arange(0, 30, 0.5)
    calls = [(5.0, 5.6), (6.6, 7.3), (12.0, 12.5)]
    events = detect_frames(
        starts, _track(starts, calls), DetectorParams(threshold=0.5), layout=LAYOUT, hop_s=0.5
    )
    assert len(events) == 3
    for event, (a, b) in zip(events, calls):
        assert abs(event.start_s - a) <= 0.33 and abs(event.end_s - b) <= 0.33


def test_detect_frames_is_the_streaming_detector():
    starts = np.arange(0, 20, 0.5)
    frames = _track(starts, [(3.0, 3.4), (9.0, 11.0)]) * 0.9
    params = DetectorParams(
        threshold=0.5, confirm_k=2, confirm_n=3, hysteresis=0.2, max_event_s=1.0
    )
    batch = detect_frames(starts, frames, params, layout=LAYOUT, hop_s=0.5, label="x")
    device = Detector({"x": params}, hop_s=0.5, frames=LAYOUT)
    streamed = [
        d for s, f in zip(starts, frames) for d in device.update(s, s + 3.0, [0.0], f[:, None])
    ]
    streamed += device.finish()
    assert [(d.start_s, d.end_s) for d in streamed if d.closed] == [
        (d.start_s, d.end_s) for d in batch
    ]
    opened = [d for d in streamed if not d.closed]
    assert len(opened) == len(batch) and len(batch) >= 2


def test_the_frame_rule_needs_the_frame_scores():
    with pytest.raises(ValueError, match="frame scores"):
        Detector({"x": DetectorParams(threshold=0.5)}, hop_s=0.5, frames=LAYOUT).update(
            0.0, 3.0, [0.9]
        )


# --- a real int8 model with a frame output --------------------------------------------------


def test_runtime_reads_both_outputs_by_shape(tone_frames_bundle):
    bundle = load_bundle(tone_frames_bundle)
    assert bundle.frame_rule and bundle.event_thresholds() == {"tone": 0.5}
    classifier = load_classifier(bundle)
    quiet = np.full((bundle.window_frames, bundle.features.n_mels), -60.0, np.float32)
    classifier.predict(quiet)
    assert classifier.last_frames.shape == (4, 1) and classifier.last_frames.max() < 0.1


def _edit(src, dst, change):
    shutil.copytree(src.parent, dst)
    path = dst / "model.json"
    m = json.loads(path.read_text())
    change(m)
    m["manifest_sha256"] = manifest_digest(m)
    path.write_text(json.dumps(m))
    return dst / "model.tflite"


def test_a_second_output_that_model_json_does_not_declare_is_refused(tone_frames_bundle, tmp_path):
    def drop(m):
        del m["frames"]
        del m["events"]

    path = _edit(tone_frames_bundle, tmp_path / "b", drop)
    with pytest.raises(BundleError, match="declares no frame output"):
        load_classifier(load_bundle(path))


def test_a_frame_output_of_another_shape_is_refused(tone_frames_bundle, tmp_path):
    def reshape(m):
        m["frames"]["shape"] = [1, 5, 1, 1]

    path = _edit(tone_frames_bundle, tmp_path / "b", reshape)
    with pytest.raises(BundleError, match="no output of shape"):
        load_classifier(load_bundle(path))


def test_the_frames_rule_without_a_frame_output_is_refused(tone_frames_bundle, tmp_path):
    path = _edit(tone_frames_bundle, tmp_path / "b", lambda m: m.pop("frames"))
    with pytest.raises(BundleError, match="no frames output"):
        load_bundle(path)


@pytest.fixture(scope="module")
def frames_classifier(tone_frames_bundle):
    return load_classifier(load_bundle(tone_frames_bundle))


def test_pipeline_events_are_the_calls_a_second_apart(frames_classifier):
    calls = [(3.0, 0.6), (4.6, 0.7), (9.0, 1.5)]
    sink, health = replay(frames_classifier, tones_signal(14.0, calls), 1600)
    closed = [e for e in sink.events if e.state == "closed"]
    assert len(closed) == 3
    for event, (t0, length) in zip(closed, calls):
        assert abs(event.start_s - t0) <= 0.25 and abs(event.end_s - (t0 + length)) <= 0.25
    assert [e.seq for e in closed] == [1, 2, 3]


def test_pipeline_frame_events_do_not_depend_on_the_chunk_size(frames_classifier):
    x = tones_signal(12.0, [(2.0, 0.5), (3.4, 0.8), (7.3, 2.2)])
    reference, _ = replay(frames_classifier, x, 16000)
    assert len([e for e in reference.events if e.state == "closed"]) == 3
    for chunks in ([7, 333, 1601, 40000, 1], 799, 161):
        other, _ = replay(frames_classifier, x, chunks)
        assert [(e.state, e.start_s, e.end_s, e.peak_score) for e in other.events] == [
            (e.state, e.start_s, e.end_s, e.peak_score) for e in reference.events
        ]


def test_replay_blocks_give_the_scores_and_events_of_the_live_worker_window_by_window(
    frames_classifier, monkeypatch
):
    """The live worker hands the detector one window at a time (0.5 s pieces); replay hands it
    a decoded block's windows at once (``Detector.update_block``). Same scores, same events
    (every field but the live ids, which are random), in the same order."""
    blocks: list[int] = []
    original = Detector.update_block

    def counted(self, starts, *args):
        blocks.append(len(starts))
        return original(self, starts, *args)

    monkeypatch.setattr(Detector, "update_block", counted)
    x = tones_signal(30.0, [(2.0, 0.5), (3.4, 0.8), (7.3, 2.2), (9.9, 0.4), (19.8, 1.0)])
    live, _ = replay(frames_classifier, x, SR // 2)
    assert blocks == [] and len([e for e in live.events if e.state == "closed"]) >= 4

    def fields(sink):
        return [replace(e, event_id="") for e in sink.events], sink.scores

    for chunks in (10 * SR, [7, 333, 1601, 40000, 1, 3 * SR]):
        other, _ = replay(frames_classifier, x, chunks)
        assert fields(other) == fields(live)
    assert min(blocks) >= 2 and max(blocks) >= 19


def test_convert_exports_verifies_and_declares_the_frame_output(tmp_path):
    """A pooling: time model (trained briefly, frame head by multiple-instance learning on tone
    windows) converts to two int8 outputs, checked against float, declared in model.json; the
    device reads both and uses the frame rule."""
    pytest.importorskip("tensorflow")
    import keras
    from convert_fixtures import LABELS, WINDOW_S, synthetic_windows

    from convert.core import ConvertSettings, convert_run
    from device.features import FeatureParams
    from train.fit import frame_loss
    from train.model import build_model, step_frames
    from train.windows import SOMEWHERE

    keras.utils.set_random_seed(0)
    params = FeatureParams()
    frames = params.window_frames(WINDOW_S)
    x, y = synthetic_windows(240, params=params, seed=0)
    model = build_model(
        frames=frames,
        n_mels=params.n_mels,
        n_labels=2,
        filters=[8, 16, 16],
        dropout=0.0,
        pooling="time",
        stem_stride=2,
    )
    steps = model.output_shape[1][1]
    targets = np.where(y[:, None, None, :] > 0, SOMEWHERE, 0.0) * np.ones(
        (1, steps, 1, 1), np.float32
    )
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=[keras.losses.BinaryCrossentropy(from_logits=True), frame_loss],
    )
    model.fit(x, [y, targets], epochs=8, batch_size=32, verbose=0)
    model.compile(loss=keras.losses.BinaryCrossentropy(from_logits=True))
    run = tmp_path / "run"
    run.mkdir()
    model.save(run / "model.keras")
    np.save(run / "calibration.npy", x[:150])
    x_test, y_test = synthetic_windows(80, params=params, seed=1)
    np.savez(
        run / "test_windows.npz",
        x=x_test,
        y=y_test,
        source=np.array(["t.wav"] * len(x_test)),
        start_s=np.arange(len(x_test), dtype=np.float64),
    )
    step = step_frames(frames=frames, n_mels=params.n_mels, filters=[8, 16, 16], stem_stride=2)
    extent = {
        label: {"rule": "frames", "threshold": 0.5, "calls": 0, "f1": None} for label in LABELS
    }
    (run / "run.json").write_text(
        json.dumps(
            {
                "labels": list(LABELS),
                "features": params.to_dict(),
                "window_s": WINDOW_S,
                "thresholds": dict.fromkeys(LABELS, 0.5),
                "recommended_hop_s": 0.5,
                "events": {"extent": extent},
                "frames": {"step_frames": step},
                "metrics": {"float": {}},
            }
        )
    )
    (run / "report.md").write_text("# Run report\n")
    (run / "metrics.json").write_text("{}")
    result = convert_run(
        run_dir=run,
        settings=ConvertSettings(
            auc_tolerance=0.05, size_budget_kb=100.0, representative_windows=150
        ),
        log=lambda m: None,
        warn=lambda m: None,
    )
    assert result.ok, result.failures
    bundle = load_bundle(result.manifest_path)
    assert bundle.frames["shape"] == [1, steps, 1, 2] and bundle.frames["step_frames"] == step
    assert bundle.frame_rule and bundle.frame_layout(0.5).steps == steps
    check = bundle.metrics["frames_int8_vs_float"]
    assert all(check[label]["agreement_at_threshold"] >= 0.95 for label in LABELS)
    classifier = load_classifier(bundle)
    classifier.predict(x_test[0, :, :, 0])
    assert classifier.last_frames.shape == (steps, 2)


def test_frame_rule_events_go_out_when_they_open_and_again_when_they_close(frames_classifier):
    """Published at onset: a sink that wants open events gets each one as soon as its first
    cell is final (one window after the call begins at the latest), then closed, same id."""
    from device.ringbuffer import RingBuffer

    class Opens(Collect):
        wants_open_events = True

    pipeline, queue, closed_only, _ = make(frames_classifier)
    opens = Opens()
    queue.sinks.append(opens)
    ring = RingBuffer(30 * SR)
    pipeline.begin_source("test.wav", t0_wall=0.0, t0_mono=0.0)
    pipeline.begin_segment(ring, capture_rate=SR)
    x = tones_signal(10.0, [(2.0, 2.5), (6.0, 0.6)])
    opened_at = None
    for pos in range(0, len(x), 1600):
        ring.write(x[pos : pos + 1600])
        pipeline.consume()
        queue.drain()
        states = [e.state for e in opens.events]
        if opened_at is None and "open" in states and "closed" not in states:
            opened_at = (pos + 1600) / SR
    pipeline.end_source(pad_short=True)
    queue.close()
    assert [e.state for e in opens.events] == ["open", "closed", "open", "closed"]
    for opened, closed in zip(opens.events[::2], opens.events[1::2]):
        assert (opened.event_id, opened.seq, opened.start_s) == (
            closed.event_id,
            closed.seq,
            closed.start_s,
        )
    assert [e.event_id for e in closed_only.events] == [e.event_id for e in opens.events[1::2]]
    # The first call (2.0-4.5 s) was announced while it still sounded: within a window of its start.
    assert opened_at is not None and opened_at <= 2.0 + 1.0 + 0.5
