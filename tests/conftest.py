"""Fixtures shared by several test files."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tone_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real int8 tone-detector bundle (tests/tinymodel.py), built once per session (~10 s).

    Returns the .tflite path; model.json is beside it. Shared: copy the folder before
    changing anything in it.
    """
    pytest.importorskip("tensorflow")
    from tinymodel import build_tone_bundle

    return build_tone_bundle(tmp_path_factory.mktemp("tone_bundle"))


@pytest.fixture(scope="session")
def tone_frames_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real int8 tone detector with a frame output and the frames event rule
    (tests/tinymodel.py ``build_tone_frames_bundle``). Shared: copy before changing it."""
    pytest.importorskip("tensorflow")
    from tinymodel import build_tone_frames_bundle

    return build_tone_frames_bundle(tmp_path_factory.mktemp("tone_frames_bundle"))
