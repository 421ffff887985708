"""The PCEN front end: streaming equals batch for any chunk sizes, agreement with librosa.pcen,
state across pushes and resets, old bundles stay log-mel, and training's windows (crops with
context, augmented in dB) are the frames the device streams."""

from __future__ import annotations

import numpy as np
import pytest

from device.features import (
    FeatureParams,
    FeatureParamsError,
    StreamingFrontEnd,
    _mel_power,
    features,
    logmel,
    pcen_of_logmel,
)

PCEN = FeatureParams(front_end="pcen")
SR = PCEN.sample_rate
# float64 smoother in blocks whose borders move with the chunking; float32 output: a few ulp.
STREAM_TOL = 1e-5


def calls_in_noise(seconds: float, *, seed: int = 0, noise: float = 0.01) -> np.ndarray:
    """Noise with a 2 kHz tone every second (0.3 s long): PCEN's smoother has work to do."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    x = noise * rng.standard_normal(len(t)) + 0.2 * np.sin(2 * np.pi * 2000 * t) * ((t % 1.0) < 0.3)
    return x.astype(np.float32)


def stream_frames(x: np.ndarray, sizes, params: FeatureParams = PCEN) -> np.ndarray:
    stream = StreamingFrontEnd(params)
    out, start, i = [], 0, 0
    while start < len(x):
        size = sizes[i % len(sizes)]
        out.append(stream.push(x[start:start + size]))
        start, i = start + size, i + 1
    assert stream.frames_emitted == sum(len(o) for o in out)
    return np.concatenate(out)


@pytest.mark.parametrize("chunk", [1, 7, 161, 999, 16001, 16000 * 7])
def test_streaming_equals_batch_for_odd_chunk_sizes(chunk):
    x = calls_in_noise(6.0)
    batch = features(x, PCEN)
    streamed = stream_frames(x, [chunk])
    assert streamed.shape == batch.shape == (PCEN.n_frames(len(x)), PCEN.n_mels)
    np.testing.assert_allclose(streamed, batch, rtol=0, atol=STREAM_TOL)


@pytest.mark.parametrize("seed", range(3))
def test_streaming_equals_batch_for_random_chunk_sizes(seed):
    x = calls_in_noise(8.0, seed=seed)
    sizes = list(np.random.default_rng(seed).integers(1, 9000, size=50))
    np.testing.assert_allclose(stream_frames(x, sizes), features(x, PCEN), rtol=0, atol=STREAM_TOL)


def test_the_state_is_carried_across_pushes_and_reset_starts_a_new_stream():
    x = calls_in_noise(4.0)
    stream = StreamingFrontEnd(PCEN)
    first = stream.push(x[:SR * 2])
    second = stream.push(x[SR * 2:])
    restarted = features(x[SR * 2 - (SR * 2) % PCEN.hop_length:], PCEN)
    assert not np.allclose(second[:5], restarted[:5], atol=1e-3)  # the history matters
    np.testing.assert_allclose(np.concatenate([first, second]), features(x, PCEN), atol=STREAM_TOL)
    stream.reset()
    np.testing.assert_allclose(stream.push(x), features(x, PCEN), atol=STREAM_TOL)


@pytest.mark.parametrize("params", [PCEN, FeatureParams(front_end="pcen", pcen_time_constant_s=0.06,
                                                        pcen_gain=0.8, pcen_bias=10.0, pcen_power=0.25)])
def test_agrees_with_librosa_pcen_started_at_the_first_frame(params):
    librosa = pytest.importorskip("librosa")
    signal = pytest.importorskip("scipy.signal")
    x = calls_in_noise(5.0)
    power = _mel_power(x, params).T.astype(np.float64)
    s = params.pcen_smoothing
    # librosa starts its smoother at 1 (lfilter_zi); ours at the first frame's power, which a
    # stream can reproduce: the same as librosa given that initial state.
    zi = signal.lfilter_zi([s], [1, s - 1]) * power[:, :1]
    ref = librosa.pcen(power, sr=params.sample_rate, hop_length=params.hop_length, gain=params.pcen_gain,
                       bias=params.pcen_bias, power=params.pcen_power, time_constant=params.pcen_time_constant_s,
                       eps=params.pcen_eps, max_size=1, zi=zi).T
    np.testing.assert_allclose(features(x, params), ref, rtol=1e-5, atol=1e-6)


def test_gain_moves_pcen_far_less_than_logmel():
    x = calls_in_noise(4.0)
    quiet = x * np.float32(0.1)  # 20 dB down
    assert np.abs(logmel(x, PCEN) - logmel(quiet, PCEN)).mean() > 19.0
    loud, soft = features(x, PCEN), features(quiet, PCEN)
    # 20 dB moves PCEN by 1 - 10^(-2 (1 - gain)) of its value: ~9 % at gain 0.98.
    assert np.abs(loud - soft).mean() < 0.12 * np.abs(loud).mean()


def test_log_mel_bundles_read_as_before_and_pcen_names_itself():
    old = {"sample_rate": 16000, "n_fft": 512, "win_length": 400, "hop_length": 320, "n_mels": 40,
           "fmin": 100.0, "fmax": 8000.0, "log_floor": 1e-10, "kind": "logmel-v1"}
    assert FeatureParams.from_dict(old).front_end == "logmel"
    assert FeatureParams.from_dict(old).to_dict() == old  # a log-mel model.json is unchanged
    assert FeatureParams.from_dict(PCEN.to_dict()) == PCEN
    assert PCEN.to_dict()["front_end"] == "pcen" and "pcen_gain" in PCEN.to_dict()
    with pytest.raises(FeatureParamsError, match="front_end: must be one of logmel, pcen, got 'mfcc'"):
        FeatureParams(front_end="mfcc")
    with pytest.raises(FeatureParamsError, match="pcen_power"):
        FeatureParams(front_end="pcen", pcen_power=0.0)


def test_pcen_of_cached_logmel_is_what_the_device_streams():
    x = calls_in_noise(5.0)
    np.testing.assert_allclose(pcen_of_logmel(logmel(x, PCEN), PCEN), stream_frames(x, [4001]), atol=1e-4)


@pytest.mark.parametrize("start_frame", [0, 30, 149, 350])
def test_training_windows_with_context_are_the_device_frames(start_frame):
    """A crop with its context (the first frame repeated before the file start), through
    train.frontend.window_inputs, gives the frames a device streaming the file computes."""
    from train.datasets import Annotation, Recording
    from train.frontend import context_frames, window_inputs
    from train.windows import WindowSampler

    x = calls_in_noise(10.0)
    recording = Recording(name="r.wav", path=None, group="g", dataset=0, kind="clips", duration_s=10.0,
                          annotations=(Annotation(0.0, 4.0, "call"), Annotation(5.0, 10.0, "negative")))
    sampler = WindowSampler(recordings=[recording], features={"r.wav": logmel(x, PCEN)}, labels=["call"],
                            params=PCEN, window_s=3.0, shift_s=0.0, negatives_per_minute=[0.0],
                            max_positive_ratio=1.0, context_frames=context_frames(PCEN))
    crop = sampler.window(0, start_frame / PCEN.frame_rate)
    assert crop.shape == (context_frames(PCEN) + sampler.frames, PCEN.n_mels)
    got = window_inputs(crop[None], PCEN)[0]
    device = features(x, PCEN)[start_frame:start_frame + sampler.frames]
    # Within the context of the file's start: exact. Later: what is left of the cold start.
    exact = start_frame <= context_frames(PCEN)
    np.testing.assert_allclose(got, device, rtol=1e-4 if exact else 1e-2, atol=1e-4)


@pytest.mark.slow
def test_a_pcen_run_converts_and_replays_with_the_frames_the_device_streams(tmp_path):
    """Train with front_end: pcen on tiny synthetic data: the test windows are the device's PCEN
    frames of the file; convert writes a bundle naming pcen; the device replays with it."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    import yaml
    from test_train_end_to_end import demo_config, tiny_data

    from device.audio import load_audio

    root = Path(__file__).resolve().parents[1]
    data = tiny_data(tmp_path / "data", sites=2)
    values = demo_config(epochs=2, features={"front_end": "pcen"})
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(values))
    out = tmp_path / "run"
    for command in (["train", "--config", str(config), "--data-root", str(data), "--out", str(out)],
                    ["convert", "--int8", str(out)]):
        done = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True, cwd=root)
        assert done.returncode == 0, done.stderr[-2000:]
    bundle = json.loads((out / "model.json").read_text())
    assert bundle["features"]["front_end"] == "pcen"
    with np.load(out / "test_windows.npz") as test:
        k = int(np.argmax(test["start_s"]))
        source, start_s, x = str(test["source"][k]), float(test["start_s"][k]), test["x"][k, :, :, 0]
    audio = load_audio(data / source, PCEN.sample_rate)
    start = round(start_s * PCEN.frame_rate)
    np.testing.assert_allclose(x, features(audio, PCEN)[start:start + len(x)], rtol=1e-4, atol=1e-4)
    scores = tmp_path / "scores.csv"
    replay = subprocess.run([sys.executable, "-m", "device", "--replay", str(data / source), "--model", str(out),
                             "--scores-csv", str(scores)], capture_output=True, text=True, cwd=root)
    assert replay.returncode == 0, replay.stderr[-2000:]
    assert len(scores.read_text().splitlines()) > 1
