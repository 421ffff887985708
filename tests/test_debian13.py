"""The device profile on today's Raspberry Pi OS userland: Debian 13 (trixie), Python 3.13.

A minimal trixie root (scripts/debian-root: debootstrap, cached between runs on the machine;
commands run in it by chroot with /proc and /sys mounted, as on a real system) gets a copy of
this checkout; ``systemd/install.sh --destdir`` runs *inside* it with trixie's own
python3, so pip resolves the device profile's pins for CPython 3.13 from the package index, and
the installed venv replays a recording. Its events and every window score must equal those of
this checkout's venv (Python 3.11 here): same pins, same LiteRT kernels, same NumPy front end.

Needs root (chroot), debootstrap and the package index; CI has all three. Elsewhere it skips
with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from tinymodel import noise, tone

REPO = Path(__file__).resolve().parents[1]
KEEP_OUT = {".git", ".venv", "runs", "demo", "__pycache__", ".pytest_cache", ".mypy_cache",
            ".ruff_cache", "node_modules"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trixie_root() -> Path:
    if os.geteuid() != 0:
        pytest.skip("needs root for debootstrap and chroot")
    if shutil.which("debootstrap") is None and not Path(
            os.environ.get("CALLWATCH_TRIXIE_ROOT", "/var/cache/callwatch/trixie"),
            "usr/bin/python3").exists():
        pytest.skip("debootstrap is not installed (scripts/setup installs it)")
    made = subprocess.run(["bash", str(REPO / "scripts" / "debian-root")], capture_output=True,
                          text=True, timeout=1800)
    assert made.returncode == 0, made.stderr
    return Path(made.stdout.strip().splitlines()[-1])


@pytest.fixture
def workdir(trixie_root: Path):
    """A scratch folder inside the root; yields (path inside the root, path on the host)."""
    inside = Path("/tmp") / f"callwatch-test-{uuid.uuid4().hex[:8]}"
    host = trixie_root / inside.relative_to("/")
    host.mkdir(parents=True)
    yield inside, host
    shutil.rmtree(host, ignore_errors=True)


def recording(path: Path) -> None:
    """12 s at 44.1 kHz stereo (resampled on the way in): noise, two tones, noise."""
    sr = 44100
    mono = np.concatenate([noise(3.0, sr), tone(2000.0, 2.0, sr) + noise(2.0, sr, seed=1),
                           noise(2.5, sr, seed=2), tone(2000.0, 1.5, sr) + noise(1.5, sr, seed=3),
                           noise(3.0, sr, seed=4)])
    sf.write(path, np.stack([mono, 0.5 * mono], axis=1), sr, subtype="PCM_16")


def replay_outputs(command: list[str], out: Path) -> tuple[list[dict], str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    # Ids, sequence numbers and the replay's clock differ between two runs; the detections must not.
    keep = ("label", "start_s", "end_s", "peak_score", "source")
    return [{k: e[k] for k in keep} for e in events], (out / "scores.csv").read_text()


def test_install_on_trixie_python313_replays_like_the_host(
        trixie_root: Path, workdir: tuple[Path, Path], tone_bundle: Path, tmp_path: Path) -> None:
    inside, host = workdir
    shutil.copytree(REPO, host / "src", ignore=shutil.ignore_patterns(*KEEP_OUT))
    shutil.copytree(tone_bundle.parent, host / "bundle")
    (host / "SiteA").mkdir()
    recording(host / "SiteA" / "calls.wav")
    (host / "out").mkdir()

    inside_root = ["bash", str(REPO / "scripts" / "debian-root"), str(trixie_root), "--"]
    install = subprocess.run(
        [*inside_root, "bash", f"{inside}/src/systemd/install.sh",
         "--destdir", f"{inside}/stage", f"{inside}/bundle/model.tflite"],
        capture_output=True, text=True, timeout=1500)
    assert install.returncode == 0, install.stdout + install.stderr
    venv = inside / "stage/opt/callwatch/venv"
    assert "version = 3.13" in (trixie_root / venv.relative_to("/") / "pyvenv.cfg").read_text()
    assert "installing the device profile" in install.stdout

    replay = ["--replay", "SiteA", "--events-jsonl", "out/events.jsonl",
              "--scores-csv", "out/scores.csv", "--config", "/dev/null"]
    # A folder: `source` is the path relative to it (calls.wav) in both.
    trixie_events, trixie_scores = replay_outputs(
        [*inside_root, "bash", "-c",
         f"cd {inside} && {venv}/bin/python -m device --model {inside}/stage/opt/callwatch/model "
         + " ".join(replay)], host / "out")

    (tmp_path / "out").mkdir()
    shutil.copytree(host / "SiteA", tmp_path / "SiteA")
    host_events, host_scores = replay_outputs(
        ["bash", "-c", f"cd {tmp_path} && {sys.executable} -m device --model {tone_bundle} "
         + " ".join(replay)], tmp_path / "out")

    assert len(host_events) == 2, host_events  # the two tones: the comparison means something
    assert host_events[0]["source"] == "calls.wav"  # relative to the folder replayed
    assert trixie_events == host_events
    assert trixie_scores == host_scores
