"""The frame rule's quiet stretches: ``Detector.update_cells`` absorbs runs of background cells in
one step per label (``LabelDetector.absorb_below``). Random frame tracks, labels and settings:
the device's ``Detector`` must give exactly what feeding every stitched cell through every
label's ``LabelDetector.update`` in turn gives (the rule as written, cell by cell): the same
detections (opening and closing, numbers, peaks) in the same order, window after window, and
the same for a whole recording's cells fed at once (as ``train.recalibrate`` feeds them), and
for windows handed over in blocks (``Detector.update_block``, as replay hands them over)."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_event_rule import detector_params

from device.detector import Detection, Detector, DetectorParams, LabelDetector
from device.frames import FrameLayout, FrameStitcher, at_frame_rate

LAYOUT = FrameLayout(steps=9, step_frames=16, frame_s=0.02, cell_frames=5)
HOP = 0.5
LABELS = ("a", "b")

# Long quiet stretches broken by loud runs, as background with a few calls gives them.
LEVELS = st.sampled_from([0.0, 0.05, 0.1, 0.2, 0.3, 0.45, 0.5, 0.55, 0.7, 0.9, 1.0])
tracks = st.lists(
    st.tuples(st.integers(1, 30), LEVELS, LEVELS), min_size=1, max_size=8
)  # (windows, level of label a, level of label b)


def windows_of(track, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts (K,), frames (K, steps, 2)): each piece's windows at its levels, with jitter."""
    rng = np.random.default_rng(seed)
    levels = np.concatenate([np.tile([a, b], (n, 1)) for n, a, b in track])
    frames = levels[:, None, :] + rng.uniform(-0.04, 0.04, (len(levels), LAYOUT.steps, 2))
    return np.arange(len(levels)) * HOP, np.clip(frames, 0.0, 1.0).astype(np.float32)


def cell_by_cell(params: dict[str, DetectorParams], starts, frames, gap_at: int) -> list[Detection]:
    """The frame rule with every cell through every label in turn (no quiet stretches)."""
    stitcher = FrameStitcher(LAYOUT, len(params))
    labels = [
        LabelDetector(name, at_frame_rate(p, hop_s=HOP, cell_s=LAYOUT.cell_s), hop_s=LAYOUT.cell_s)
        for name, p in params.items()
    ]
    out: list[Detection] = []

    def feed(cells, scores):
        for cell, row in zip(cells.tolist(), scores.tolist()):
            for detector, score in zip(labels, row):
                out.extend(detector.update(cell * LAYOUT.cell_s, (cell + 1) * LAYOUT.cell_s, score))

    for k, (start, window) in enumerate(zip(starts.tolist(), frames)):
        if k == gap_at:  # the audio was interrupted: the device finishes its detector
            feed(*stitcher.finish())
            for detector in labels:
                out.extend(detector.finish())
        feed(*stitcher.push(start, window))
    feed(*stitcher.finish())
    for detector in labels:
        out.extend(detector.finish())
    return out


def device(params: dict[str, DetectorParams], starts, frames, gap_at: int) -> list[Detection]:
    detector = Detector(params, hop_s=HOP, frames=LAYOUT)
    out: list[Detection] = []
    for k, (start, window) in enumerate(zip(starts.tolist(), frames)):
        if k == gap_at:
            out += detector.finish()
        out += detector.update(start, start + 3.0, window.max(axis=0), window)
    return out + detector.finish()


def device_in_blocks(params: dict[str, DetectorParams], starts, frames, gap_at: int,
                     blocks: list[int]) -> list[Detection]:
    """As :func:`device`, the windows handed over in blocks of the given sizes (replay's blocks
    of audio), a block ending at the gap (the pipeline finishes its detector there)."""
    detector = Detector(params, hop_s=HOP, frames=LAYOUT)
    out: list[Detection] = []
    k, sizes = 0, iter(blocks)
    while k < len(starts):
        if k == gap_at:
            out += detector.finish()
        end = min(len(starts), k + next(sizes, len(starts)))
        if k < gap_at < end:
            end = gap_at
        out += detector.update_block(starts[k:end].tolist(), (starts[k:end] + 3.0).tolist(),
                                     frames[k:end].max(axis=1), frames[k:end])
        k = end
    return out + detector.finish()


PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(
    track=tracks,
    a=detector_params(),
    b=detector_params(),
    seed=st.integers(0, 2**16),
    gap_at=st.integers(0, 120),
    time_jump=st.booleans(),
    blocks=st.lists(st.integers(1, 25), min_size=1, max_size=12),
)
def test_quiet_stretches_and_blocks_change_nothing(track, a, b, seed, gap_at, time_jump, blocks):
    """Window by window (live) and in blocks of any size (replay, ``Detector.update_block``),
    the rule cell by cell's detections, in its order, for one label and two, wherever events
    start and end relative to the blocks' boundaries."""
    starts, frames = windows_of(track, seed)
    if time_jump:  # windows far apart after the gap, as after an overrun
        starts = starts + np.where(np.arange(len(starts)) >= gap_at, 11.0, 0.0)
    for params, scores in (({"a": a, "b": b}, frames), ({"a": a}, frames[:, :, :1])):
        expected = cell_by_cell(params, starts, scores, gap_at)
        assert device(params, starts, scores, gap_at) == expected
        assert device_in_blocks(params, starts, scores, gap_at, blocks) == expected


def test_an_event_open_across_a_block_boundary_closes_in_the_next_block():
    """A call over windows 2-12, blocks of 14 and 16 windows: the event opens with the first block's
    cells and closes with the second's, as window by window; the window rule's blocks (no
    stitcher) are its windows one by one too."""
    starts = np.arange(30) * HOP
    frames = np.full((30, LAYOUT.steps, 1), 0.1, np.float32)
    frames[2:13] = 0.9
    params = {"a": DetectorParams(threshold=0.5)}
    detector = Detector(params, hop_s=HOP, frames=LAYOUT)
    first = detector.update_block(starts[:14].tolist(), (starts[:14] + 3.0).tolist(),
                                  frames[:14].max(axis=1), frames[:14])
    second = detector.update_block(starts[14:].tolist(), (starts[14:] + 3.0).tolist(),
                                   frames[14:].max(axis=1), frames[14:])
    assert [d.closed for d in first] == [False] and [d.closed for d in second] == [True]
    assert first + second + detector.finish() == device(params, starts, frames, gap_at=-1)
    by_window = Detector(params, hop_s=HOP)
    expected = [d for s, f in zip(starts.tolist(), frames) for d in by_window.update(s, s + 3.0, f.max(0))]
    in_blocks = Detector(params, hop_s=HOP)
    got = in_blocks.update_block(starts.tolist(), (starts + 3.0).tolist(), frames.max(axis=1))
    assert got + in_blocks.finish() == expected + by_window.finish() and len(expected) == 2


@PROPERTY
@given(track=tracks, a=detector_params(), seed=st.integers(0, 2**16))
def test_a_recording_stitched_once_gives_the_events_of_its_windows(track, a, seed):
    starts, frames = windows_of(track, seed)
    frames = frames[:, :, :1]
    stitcher = FrameStitcher(LAYOUT, 1)
    parts = [stitcher.push(s, f) for s, f in zip(starts.tolist(), frames)] + [stitcher.finish()]
    detector = Detector({"a": a}, hop_s=HOP, frames=LAYOUT)
    at_once = detector.update_cells(
        np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    )
    assert at_once + detector.finish() == device({"a": a}, starts, frames, gap_at=-1)


def test_the_quiet_path_is_taken_and_events_still_open():
    """Background for minutes, then a call: the call's event is found at its place."""
    starts = np.arange(600) * HOP
    frames = np.full((600, LAYOUT.steps, 1), 0.1, np.float32)
    frames[400:404] = 0.9  # windows 400-403 (200-203.5 s): their steps are loud
    detector = Detector({"a": DetectorParams(threshold=0.5)}, hop_s=HOP, frames=LAYOUT)
    updates = 0
    original = LabelDetector.update

    def counted(self, *args):
        nonlocal updates
        updates += 1
        return original(self, *args)

    LabelDetector.update = counted  # type: ignore[method-assign]
    try:
        out = [
            d
            for s, f in zip(starts.tolist(), frames)
            for d in detector.update(s, s + 3.0, f.max(0), f)
        ]
        out += detector.finish()
    finally:
        LabelDetector.update = original  # type: ignore[method-assign]
    closed = [d for d in out if d.closed]
    assert len(closed) == 1 and 200.0 <= closed[0].start_s < closed[0].end_s <= 204.5
    assert updates < 100  # of about 3000 cells: the background went by in quiet stretches
