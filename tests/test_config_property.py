"""Every config that ``--check-config`` accepts runs.

Hypothesis generates configs around the values that once passed the checker and then failed
at run time (infinite sizes and waits, device ids and topic prefixes with MQTT wildcards,
slashes, control characters or absurd length, thresholds for labels the model lacks, silence
timeouts shorter than a window). For each one, ``--check-config`` (with the model) either
refuses it with one line on stderr and exit 2, or a replay with it exits 0 and delivers its
events to a real broker under ``<topic_prefix>/<device_id>/events``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml
from broker import Broker, Subscriber
from tinymodel import noise, tone

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from device.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SR = 16000

# Plausible values more often than hostile ones, so that some configs pass and get run.
numbers = st.one_of(
    st.floats(min_value=0.05, max_value=500.0),
    st.floats(min_value=0.05, max_value=500.0),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-5, max_value=10**6),
)
names = st.one_of(
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,30}", fullmatch=True),
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=80),
    st.from_regex(r"[a-z][a-z0-9_-]{0,20}(/[a-z0-9_-]{1,10}){0,2}", fullmatch=True),
    st.sampled_from(["pi-garden", "site/a", "a/+", "#", "$SYS", "x" * 200, "tab\there", "é-ü"]),
)


@st.composite
def configs(draw) -> dict:
    cfg: dict = {"detection": {}, "audio": {}, "service": {}, "mqtt": {"outbox": {}},
                 "outputs": {"clips": {}}}
    if draw(st.booleans()):
        cfg["outputs"]["clips"]["max_mb"] = draw(numbers)
    if draw(st.booleans()):
        cfg["mqtt"]["outbox"]["max_mb"] = draw(numbers)
    if draw(st.booleans()):
        cfg["mqtt"]["reconnect_s"] = [draw(numbers), draw(numbers)]
    if draw(st.booleans()):
        cfg["service"]["device_id"] = draw(names)
    if draw(st.booleans()):
        cfg["mqtt"]["topic_prefix"] = draw(names)
    if draw(st.booleans()):
        cfg["detection"]["thresholds"] = draw(st.dictionaries(
            st.sampled_from(["tone", "owl", "Tone"]), numbers, max_size=2))
    if draw(st.booleans()):
        cfg["detection"]["hop_s"] = draw(numbers)
    if draw(st.booleans()):
        cfg["audio"]["silence_timeout_s"] = draw(numbers)
    return cfg


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = Broker(tmp_path_factory.mktemp("broker")).start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def one_tone(tmp_path_factory) -> Path:
    x = noise(4.0, SR)
    x[SR : 2 * SR] += tone(2000, 1.0, SR)
    path = tmp_path_factory.mktemp("audio") / "one_tone.wav"
    soundfile.write(path, x.astype(np.float32), SR)
    return path


@pytest.mark.slow
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(values=configs())
def test_a_config_the_checker_accepts_runs(values, tone_bundle, broker, one_tone,
                                           tmp_path_factory):
    folder = tmp_path_factory.mktemp("cfg")
    values = {**values, "mqtt": {**broker.mqtt_config(), **values["mqtt"]}}
    values["mqtt"]["outbox"] = values["mqtt"].get("outbox") or {}
    values["service"]["state_dir"] = str(folder / "state")
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(values, allow_unicode=True))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--config", str(path), "--check-config", "--model", str(tone_bundle)])
    if code != 0:
        hypothesis.event("refused")
        assert code == 2, (code, err.getvalue())
        lines = err.getvalue().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), lines
        return
    assert "config OK" in out.getvalue()
    from device.config import load_config

    cfg = load_config(path)
    device = cfg.service.device_id or os.uname().nodename
    topic = f"{cfg.mqtt.topic_prefix}/{device}/replay/events"
    subscriber = Subscriber(broker, topic)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "device", "--config", str(path), "--model", str(tone_bundle),
             "--replay", str(one_tone), "--events-jsonl", "-", "--mqtt"],
            cwd=folder, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
            text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr, result.stderr
        events = [json.loads(line) for line in result.stdout.splitlines()]
        hypothesis.event(f"accepted, replayed: {len(events)} events")
        ids = {e["event_id"] for e in events}
        assert subscriber.wait_for(
            lambda s: ids <= {json.loads(m.payload)["event_id"] for m in s.on(topic)},
            timeout_s=20), (values, result.stderr[-2000:])
    finally:
        subscriber.close()
