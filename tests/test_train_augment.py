"""train.augment: seeded, mixes at the asked SNR, moves gain, masks; never touches its input."""

from __future__ import annotations

import numpy as np
import pytest

from train.augment import AugmentParams, augment, mix_at_snr

FLOOR = -100.0


def batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(-50, 6, (n, 149, 40)).astype(np.float32), (rng.random((n, 1)) < 0.5).astype(np.float32)


def backgrounds(k, rng):
    return rng.normal(-40, 3, (k, 149, 40)).astype(np.float32)


def test_same_seed_same_output_and_input_untouched():
    x, y = batch()
    before = x.copy()
    p = AugmentParams(mixup_alpha=0.4)
    a = augment(x, y, params=p, rng=np.random.default_rng(5), floor=FLOOR, backgrounds=backgrounds)
    b = augment(x, y, params=p, rng=np.random.default_rng(5), floor=FLOOR, backgrounds=backgrounds)
    c = augment(x, y, params=p, rng=np.random.default_rng(6), floor=FLOOR, backgrounds=backgrounds)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert np.array_equal(x, before)


@pytest.mark.parametrize("snr", [0.0, 10.0])
def test_mixing_reaches_the_snr_in_power(snr):
    x, _ = batch(4)
    bg = backgrounds(4, np.random.default_rng(1))
    mixed = mix_at_snr(x, bg, np.full(4, snr), FLOOR)
    signal = (10 ** (x / 10)).sum(axis=(1, 2))
    added = (10 ** (mixed / 10)).sum(axis=(1, 2)) - signal
    np.testing.assert_allclose(10 * np.log10(signal / added), snr, atol=0.01)


def test_gain_moves_everything_above_the_floor():
    x, y = batch(2)
    x[:, :5] = FLOOR  # padding
    p = AugmentParams(background_p=0, gain_db=(6.0, 6.0), time_masks=0, freq_masks=0)
    out, _ = augment(x, y, params=p, rng=np.random.default_rng(0), floor=FLOOR)
    np.testing.assert_allclose(out[:, 5:], x[:, 5:] + 6.0, atol=1e-4)
    assert (out[:, :5] == FLOOR).all()


def test_masks_flatten_stretches_to_the_band_mean():
    x, y = batch(1)
    p = AugmentParams(background_p=0, gain_db=(0, 0), time_masks=1, time_mask_frames=20, freq_masks=0)
    out, _ = augment(x, y, params=p, rng=np.random.default_rng(3), floor=FLOOR)
    changed = np.flatnonzero((out[0] != x[0]).any(axis=1))
    assert 0 < len(changed) <= 20
    np.testing.assert_allclose(out[0, changed[0]], x[0].mean(axis=0), atol=1e-4)


def test_mixup_mixes_labels_with_the_same_weights():
    x, y = batch(16)
    p = AugmentParams(background_p=0, gain_db=(0, 0), time_masks=0, freq_masks=0, mixup_alpha=0.5)
    _, y2 = augment(x, y, params=p, rng=np.random.default_rng(0), floor=FLOOR)
    assert ((y2 > 0) & (y2 < 1)).any() and (y2 >= 0).all() and (y2 <= 1).all()


def test_band_shift_moves_the_spectrum_and_repeats_the_edge():
    from train.augment import shift_bands

    window = np.tile(np.arange(40, dtype=np.float32), (5, 1))
    up = shift_bands(window, 2)
    assert up[0, :4].tolist() == [0, 0, 0, 1] and up[0, -1] == 37
    assert np.array_equal(shift_bands(window, -3)[0, :2], [3, 4])


def test_colouring_is_smooth_bounded_and_leaves_padding_alone():
    from train.augment import colour

    x, _ = batch(16)
    x[:, :3] = FLOOR
    out = colour(x, 6.0, np.random.default_rng(0), FLOOR)
    curve = out[:, 10] - x[:, 10]  # the same curve on every frame of a window
    np.testing.assert_allclose(out[:, 10:] - x[:, 10:], np.repeat(curve[:, None], 139, axis=1), atol=1e-4)
    assert np.abs(curve).max() <= 9.0 + 1e-4 and np.abs(curve).max() > 1.0  # tilt 6 + ripple 3 at most
    assert np.abs(np.diff(curve, axis=1)).max() < 2.0  # smooth: under 2 dB from one band to the next
    assert (out[:, :3] == FLOOR).all()


def test_reverberation_adds_a_causal_tail_at_the_asked_ratio():
    from train.augment import reverberate

    x = np.full((2, 149, 40), FLOOR, np.float32)
    x[:, 50:55] = -20.0  # a 0.1 s burst
    out = reverberate(x, rt60_s=np.array([0.5, 1.0]), drr_db=np.array([6.0, 6.0]), frame_rate=50.0, floor=FLOOR)
    np.testing.assert_array_equal(out[:, :51], np.maximum(x[:, :51], out[:, :51]))  # nothing before it
    assert (out[:, :50] == FLOOR).all()
    assert (out[:, 60] > -60).all() and out[1, 80, 0] > out[0, 80, 0]  # a tail, longer for the longer RT60
    assert out[0, 80, 0] > out[0, 80, -1]  # high bands die away first
    direct = 5 * 10 ** (-20 / 10)
    tail = (10 ** (out[0] / 10) - 10 ** (x[0] / 10)).sum(axis=0)[0]
    assert 10 * np.log10(direct / tail) == pytest.approx(6.0, abs=0.5)


def test_colouring_and_reverberation_off_draw_nothing_from_the_generator():
    x, y = batch()
    a = augment(x, y, params=AugmentParams(), rng=np.random.default_rng(3), floor=FLOOR, backgrounds=backgrounds)
    b = augment(x, y, params=AugmentParams(eq_db=0.0, reverb_p=0.0), rng=np.random.default_rng(3), floor=FLOOR,
                backgrounds=backgrounds)
    assert np.array_equal(a[0], b[0])
    c = augment(x, y, params=AugmentParams(eq_db=6.0, reverb_p=1.0), rng=np.random.default_rng(3), floor=FLOOR,
                backgrounds=backgrounds)
    assert not np.array_equal(a[0], c[0])
