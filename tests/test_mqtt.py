"""The MQTT sink against a real Mosquitto: delivery, outages, restarts, kills, TLS, passwords."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from broker import Broker, Subscriber, free_port, make_ca, sample_event
from faults import fill, tmpfs

from device.config import ConfigError, validate
from device.mqtt import MqttSink, read_password
from device.mqtt.outbox import Outbox

REPO = Path(__file__).resolve().parents[1]
EVENTS = "callwatch/dev1/events"
REPLAY_EVENTS = "callwatch/dev1/replay/events"
"""Where a replay given --mqtt publishes (never the live recorder's topics)."""


def make_sink(broker: Broker, state_dir: Path, *, health=None, labels=("tone",),
              **mqtt) -> MqttSink:
    cfg = validate({"mqtt": broker.mqtt_config(**mqtt)})
    return MqttSink(cfg.mqtt, device_id="dev1", labels=list(labels), state_dir=state_dir,
                    health=health or (lambda: {"realtime_factor": 0.0007, "overflows": 0}))


def received(sub: Subscriber, topic: str = EVENTS) -> list[dict]:
    return [json.loads(p) for p in sub.payloads(topic)]


def assert_all_arrived_in_order(sub: Subscriber, events) -> None:
    """Every event arrived; a repeat is byte-identical to its first copy; first copies keep
    the publishing order."""
    got = received(sub)
    first: dict[str, dict] = {}
    for event in got:
        assert first.setdefault(event["event_id"], event) == event, "a duplicate that differs"
    assert [e["seq"] for e in first.values()] == [e.seq for e in events]
    assert set(first) == {e.event_id for e in events}


@pytest.fixture
def broker(tmp_path):
    broker = Broker(tmp_path / "broker").start()
    yield broker
    broker.stop()


def test_events_state_and_availability_reach_a_subscriber(broker, tmp_path):
    sub = Subscriber(broker, "callwatch/#")
    sink = make_sink(broker, tmp_path / "state", state_interval_s=1.0)
    events = [sample_event(i) for i in range(40)]
    for event in events:
        sink.on_event(event)
    assert sub.wait_for(lambda s: len(s.on(EVENTS)) >= 40)
    assert sub.wait_for(lambda s: len(s.on("callwatch/dev1/state")) >= 2, 4), "state every 1 s"
    sink.close()
    assert sub.wait_for(lambda s: s.payloads("callwatch/dev1/availability")[-1:] == ["offline"])

    assert received(sub) == [e.to_dict() for e in events]
    assert all(m.qos == 1 and not m.retain for m in sub.on(EVENTS))
    assert sub.payloads("callwatch/dev1/availability") == ["online", "offline"]
    state = json.loads(sub.payloads("callwatch/dev1/state")[-1])
    assert state["realtime_factor"] == 0.0007 and state["outbox_depth"] == 0
    assert state["dropped_events"] == 0 and state["mqtt"]["events_published"] == 40
    assert state["mqtt"]["connects"] == 1 and state["device_id"] == "dev1"

    # Retained: a subscriber arriving later sees the last state and "offline".
    late = Subscriber(broker, "callwatch/dev1/+")
    assert late.wait_for(lambda s: len(s.messages) >= 2, 3)
    assert {m.topic: m.payload.decode() for m in late.messages if m.retain}[
        "callwatch/dev1/availability"] == "offline"
    assert not late.on(EVENTS), "events are not retained"
    assert Outbox(tmp_path / "state" / "outbox.sqlite", max_rows=10, max_bytes=10**6).depth == 0


def test_first_connect_failing_is_retried_and_queued_events_follow(tmp_path):
    broker = Broker(tmp_path / "broker")  # not started yet
    sink = make_sink(broker, tmp_path / "state")
    events = [sample_event(i) for i in range(10)]
    for event in events:
        sink.on_event(event)
    time.sleep(1.0)
    assert sink.counters["connect_failures"] >= 1
    broker.start()
    try:
        sub = Subscriber(broker, EVENTS)
        assert sub.wait_for(lambda s: len(s.on(EVENTS)) >= 10, 10)
        sink.close()
        assert_all_arrived_in_order(sub, events)
    finally:
        broker.stop()


def test_broker_stopped_mid_stream_and_restarted_loses_nothing(broker, tmp_path):
    # A persistent session keeps what arrives while the subscriber itself is cut off.
    sub = Subscriber(broker, EVENTS, session="watcher")
    sink = make_sink(broker, tmp_path / "state")
    events = [sample_event(i) for i in range(120)]
    for event in events[:60]:  # a burst, so some are in flight when the broker goes
        sink.on_event(event)
    broker.stop()
    for event in events[60:90]:
        sink.on_event(event)
        time.sleep(0.01)
    time.sleep(0.5)
    assert sink.state()["outbox_depth"] >= 30
    broker.start()
    for event in events[90:]:
        sink.on_event(event)
        time.sleep(0.005)
    ids = {e.event_id for e in events}
    assert sub.wait_for(lambda s: {e["event_id"] for e in received(s)} >= ids, 20)
    sink.close()
    assert_all_arrived_in_order(sub, events)
    assert sink.counters["disconnects"] == 1 and sink.counters["connects"] == 2


KILLED_CHILD = """
import json, sys, time
from broker import sample_event
from device.config import validate
from device.mqtt import MqttSink
cfg = validate(json.loads(sys.argv[1]))
sink = MqttSink(cfg.mqtt, device_id="dev1", labels=["tone"], state_dir=sys.argv[2], health=dict)
events = [sample_event(i) for i in range(25)]
for event in events:
    sink.on_event(event)
print(json.dumps([e.event_id for e in events]), flush=True)
time.sleep(120)
"""


def test_events_queued_when_killed_with_broker_down_arrive_after_restart(tmp_path):
    broker = Broker(tmp_path / "broker")  # down while the first process runs
    state_dir = tmp_path / "state"
    cfg = {"mqtt": broker.mqtt_config()}
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(KILLED_CHILD), json.dumps(cfg),
                              str(state_dir)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        ids = json.loads(child.stdout.readline())
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert len(ids) == 25

    broker.start()
    try:
        sub = Subscriber(broker, EVENTS)
        sink = make_sink(broker, state_dir)
        assert sub.wait_for(lambda s: len(s.on(EVENTS)) >= 25, 10)
        sink.close()
        assert [e["event_id"] for e in received(sub)] == ids
        assert [e["seq"] for e in received(sub)] == list(range(25))
    finally:
        broker.stop()


def test_full_outbox_drops_oldest_and_reports_it(tmp_path, caplog):
    broker = Broker(tmp_path / "broker")
    sink = make_sink(broker, tmp_path / "state", outbox={"max_rows": 10})
    events = [sample_event(i) for i in range(25)]
    with caplog.at_level(logging.WARNING, logger="device.mqtt"):
        for event in events:
            sink.on_event(event)
    assert "mqtt outbox full" in caplog.text and "15 dropped in all" in caplog.text
    broker.start()
    try:
        sub = Subscriber(broker, "callwatch/dev1/#")
        assert sub.wait_for(lambda s: len(s.on(EVENTS)) >= 10, 10)
        assert sub.wait_for(lambda s: any(json.loads(p)["outbox_dropped"] == 15
                                          for p in s.payloads("callwatch/dev1/state")), 5)
        sink.close()
        assert_all_arrived_in_order(sub, events[15:])
    finally:
        broker.stop()


def test_events_in_flight_to_a_frozen_broker_are_never_counted_dropped(broker, tmp_path):
    """The broker stops answering (SIGSTOP: the connection stays up, nothing is acked) while
    the outbox overflows: the rows already handed to the connection are kept, so every event
    either arrives or is counted dropped, never both, and the counts add up."""
    sub = Subscriber(broker, EVENTS)
    sink = make_sink(broker, tmp_path / "state", outbox={"max_rows": 10})  # window: 5 rows
    events = [sample_event(i) for i in range(40)]
    sink.on_event(events[0])
    assert sub.wait_for(lambda s: len(s.on(EVENTS)) == 1, 5)
    broker._proc.send_signal(signal.SIGSTOP)
    try:
        for event in events[1:]:
            sink.on_event(event)
            time.sleep(0.01)  # the publisher hands rows while the outbox fills
    finally:
        broker._proc.send_signal(signal.SIGCONT)

    def arrived(s: Subscriber) -> set[int]:
        return {e["seq"] for e in received(s)}

    assert sub.wait_for(
        lambda s: len(arrived(s)) + sink.state()["outbox_dropped"] == len(events), 10), (
        sorted(arrived(sub)), sink.state()["outbox_dropped"])
    sink.close()
    dropped = Outbox(tmp_path / "state" / "outbox.sqlite", max_rows=10, max_bytes=10**6).dropped
    assert dropped > 0 and len(arrived(sub)) + dropped == len(events)
    assert {1, 2, 3, 4, 5} <= arrived(sub), "rows in flight when the broker froze were dropped"
    assert max(arrived(sub)) == 39, "the newest events are kept"


def test_reconnects_back_off_instead_of_storming(tmp_path):
    """Against a closed port, attempts follow 0.2, 0.4, 0.8, 1.0, 1.0 s (+ up to 50 % jitter)."""
    sink = make_sink(Broker(tmp_path / "broker"), tmp_path / "state", reconnect_s=[0.2, 1.0])
    time.sleep(4.0)
    failures = sink.counters["connect_failures"]
    started = time.monotonic()
    sink.close()
    assert time.monotonic() - started < 3, "close() must not hang while the broker is away"
    assert 3 <= failures <= 8, failures


def test_close_with_the_broker_away_keeps_events_for_the_next_start(tmp_path):
    sink = make_sink(Broker(tmp_path / "broker"), tmp_path / "state")
    for i in range(5):
        sink.on_event(sample_event(i))
    sink.close()
    assert Outbox(tmp_path / "state" / "outbox.sqlite", max_rows=10, max_bytes=10**6).depth == 5


def test_an_outbox_whose_disk_fills_publishes_from_memory_then_returns_to_disk(
        broker, tmp_path, caplog):
    """The state folder fills up under a running sink (a real 1 MiB tmpfs): the event is
    still published (the outbox carries on in memory), and once there is room again the
    outbox is back on disk and ends empty."""
    sub = Subscriber(broker, EVENTS)
    with tmpfs(tmp_path / "state", size="1m") as state:
        cfg = validate({"mqtt": broker.mqtt_config()}).mqtt
        outbox = Outbox(state / "outbox.sqlite", max_rows=1000, max_bytes=10**6, retry_s=0.2)
        sink = MqttSink(cfg, device_id="dev1", labels=["tone"], state_dir=state, health=dict,
                        outbox=outbox)
        try:
            sink.on_event(first := sample_event(0))
            assert sub.wait_for(lambda s: len(s.on(EVENTS)) == 1, 5)
            filler = fill(state)
            with caplog.at_level(logging.WARNING, logger="device.mqtt"):
                sink.on_event(second := sample_event(1))
            assert sub.wait_for(lambda s: len(s.on(EVENTS)) == 2, 5)
            assert outbox.in_memory and "cannot write" in caplog.text, caplog.text
            filler.unlink()
            deadline = time.monotonic() + 10
            while outbox.in_memory:  # the publisher tries the disk again every retry_s
                assert time.monotonic() < deadline, "the outbox never went back to disk"
                sink.on_event(sample_event(2))
                time.sleep(0.3)
        finally:
            sink.close()
        assert received(sub)[:2] == [first.to_dict(), second.to_dict()]
        assert sink.counters["outbox_write_errors"] == 0
        assert Outbox(state / "outbox.sqlite", max_rows=10, max_bytes=10**6).depth == 0


class _UnusableOutbox(Outbox):
    """An outbox that cannot store anything, not even in memory (MqttSink's ``outbox``)."""

    def put(self, topic, payload, *, keep=()):
        raise sqlite3.OperationalError("database or disk is full")


def test_an_event_the_outbox_cannot_store_is_still_published_from_memory(
        broker, tmp_path, caplog):
    sub = Subscriber(broker, EVENTS)
    cfg = validate({"mqtt": broker.mqtt_config()}).mqtt
    outbox = _UnusableOutbox(tmp_path / "outbox.sqlite", max_rows=10, max_bytes=10**6)
    sink = MqttSink(cfg, device_id="dev1", labels=["tone"], state_dir=tmp_path, health=dict,
                    outbox=outbox)
    sink.on_event(event := sample_event(0))
    assert sub.wait_for(lambda s: len(s.on(EVENTS)) == 1, 5)
    sink.close()
    assert received(sub) == [event.to_dict()]
    assert sink.counters["outbox_write_errors"] == 1
    assert "cannot store event seq 0 (database or disk is full)" in caplog.text


def test_a_failing_health_callback_does_not_stop_the_state(broker, tmp_path, caplog):
    def health():
        raise RuntimeError("boom")

    sub = Subscriber(broker, "callwatch/dev1/state")
    sink = make_sink(broker, tmp_path / "state", health=health)
    assert sub.wait_for(lambda s: len(s.messages) >= 1, 5)
    sink.close()
    assert json.loads(sub.messages[0].payload)["outbox_depth"] == 0
    assert "health() failed (boom)" in caplog.text


# -- security -------------------------------------------------------------------------------


@pytest.fixture
def secure_broker(tmp_path):
    broker = Broker(tmp_path / "tls-broker", tls=True, users={"alice": "s3cret"}).start()
    yield broker
    broker.stop()


def test_tls_and_password_from_a_file(secure_broker, tmp_path):
    password_file = tmp_path / "mqtt_password"
    password_file.write_text("s3cret\n")
    sub = Subscriber(secure_broker, EVENTS, username="alice", password="s3cret")
    sink = make_sink(secure_broker, tmp_path / "state", username="alice",
                     password_file=str(password_file))
    sink.on_event(event := sample_event(0))
    assert sub.wait_for(lambda s: len(s.on(EVENTS)) == 1)
    sink.close()
    assert received(sub) == [event.to_dict()]


def test_wrong_password_is_one_log_line_and_retried(secure_broker, tmp_path, caplog, monkeypatch):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt_password").write_text("wrong")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    with caplog.at_level(logging.WARNING, logger="device.mqtt"):
        sink = make_sink(secure_broker, tmp_path / "state", username="alice")
        sink.on_event(sample_event(0))
        time.sleep(3.5)
        sink.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "device.mqtt"]
    assert sink.counters["connect_failures"] >= 3, "retried"
    assert len(lines) == 1, lines
    assert "refused the connection" in lines[0] and "credential mqtt_password" in lines[0]
    assert Outbox(tmp_path / "state" / "outbox.sqlite", max_rows=10, max_bytes=10**6).depth == 1


def test_unknown_ca_is_one_log_line(secure_broker, tmp_path, caplog):
    other_ca, _ = make_ca(tmp_path / "other", "other")
    with caplog.at_level(logging.WARNING, logger="device.mqtt"):
        sink = make_sink(secure_broker, tmp_path / "state",
                         tls={"enabled": True, "ca_file": str(other_ca)})
        time.sleep(2.0)
        sink.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "device.mqtt"]
    assert sink.counters["connect_failures"] >= 2
    assert len(lines) == 1 and "certificate" in lines[0] and "mqtt.tls.ca_file" in lines[0], lines


def test_client_certificate_required_by_the_broker(tmp_path, caplog):
    broker = Broker(tmp_path / "broker", tls=True, require_client_cert=True).start()
    certs = broker.certs
    try:
        with caplog.at_level(logging.WARNING, logger="device.mqtt"):
            without = make_sink(broker, tmp_path / "a")
            time.sleep(2.0)
            without.close()
        lines = [r.getMessage() for r in caplog.records if r.name == "device.mqtt"]
        assert len(lines) == 1 and "mqtt.tls" in lines[0], lines

        sink = make_sink(broker, tmp_path / "b", tls={
            "enabled": True, "ca_file": str(certs.ca), "cert_file": str(certs.client_cert),
            "key_file": str(certs.client_key)})
        sink.on_event(sample_event(0))
        deadline = time.monotonic() + 5
        while sink.counters["events_published"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        sink.close()
        assert sink.counters["events_published"] == 1
    finally:
        broker.stop()


def test_password_sources(tmp_path):
    cfg = validate({"mqtt": {"username": "u", "password_file": str(tmp_path / "missing")}}).mqtt
    with pytest.raises(ConfigError, match=r"^mqtt.password_file: cannot read"):
        read_password(cfg)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "broker_pw").write_text("pw\n")
    cfg = validate({"mqtt": {"username": "u", "password_credential": "broker_pw"}}).mqtt
    assert read_password(cfg, environ={"CREDENTIALS_DIRECTORY": str(creds)})[0] == "pw"
    assert read_password(cfg, environ={})[0] is None


def test_unreadable_tls_file_is_a_config_error(tmp_path):
    cfg = validate({"mqtt": {"tls": {"enabled": True, "ca_file": str(tmp_path / "nope.crt")}}})
    with pytest.raises(ConfigError, match=r"^mqtt.tls.ca_file: cannot read"):
        MqttSink(cfg.mqtt, device_id="dev1", labels=["tone"], state_dir=tmp_path, health=dict)


# -- through the daemon: python -m device --replay with mqtt.enabled ---------------------------


def write_tones(path: Path, count: int, *, gap_s: float = 1.5, tone_s: float = 1.5) -> Path:
    """Noise with ``count`` loud 2 kHz tones, each one event for the tone model."""
    import numpy as np
    import soundfile as sf
    from tinymodel import noise, tone

    sr = 16000
    parts = []
    for i in range(count):
        parts += [noise(gap_s, sr, seed=i),
                  noise(tone_s, sr, seed=100 + i) + tone(2000, tone_s, sr)]
    parts.append(noise(gap_s, sr, seed=99))
    sf.write(path, np.concatenate(parts), sr)
    return path


class Daemon:
    """``python -m device`` as a subprocess, its stderr collected line by line."""

    def __init__(self, *args: str, config: dict, folder: Path) -> None:
        import yaml

        folder.mkdir(parents=True, exist_ok=True)
        config_path = folder / "config.yaml"
        config_path.write_text(yaml.safe_dump(config))
        self.lines: list[str] = []
        command = [sys.executable, "-m", "device", "--config", str(config_path), *args]
        self.proc = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, text=True)
        import threading

        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stderr),
                                        daemon=True)
        self._reader.start()

    def wait_for_line(self, text: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(text in line for line in self.lines):
            assert time.monotonic() < deadline and self.proc.poll() is None, "".join(self.lines)
            time.sleep(0.05)

    def wait(self, timeout_s: float = 60) -> int:
        code = self.proc.wait(timeout_s)
        self._reader.join(5)
        return code


def daemon_config(broker: Broker, tmp_path: Path) -> dict:
    return {"service": {"device_id": "dev1", "state_dir": str(tmp_path / "state")},
            "mqtt": broker.mqtt_config()}


def test_replay_publishes_exactly_the_jsonl_events(broker, tmp_path, tone_bundle):
    audio = write_tones(tmp_path / "tones.wav", 5)
    sub = Subscriber(broker, "callwatch/dev1/#")
    daemon = Daemon("--replay", str(audio), "--model", str(tone_bundle), "--mqtt",
                    "--events-jsonl", str(tmp_path / "out.jsonl"),
                    config=daemon_config(broker, tmp_path), folder=tmp_path)
    assert daemon.wait() == 0, "".join(daemon.lines)
    jsonl = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(jsonl) == 5 and all(e["replay"] for e in jsonl)
    assert sub.wait_for(lambda s: len(s.on(REPLAY_EVENTS)) >= 5, 5)
    # A replay analyses a recording, nothing is happening now: finished events only.
    assert received(sub, REPLAY_EVENTS) == jsonl and all(e["state"] == "closed" for e in jsonl)
    # A replay never speaks for the live recorder: no availability, state or live events.
    assert [m.topic for m in sub.messages] == [REPLAY_EVENTS] * 5


@pytest.mark.slow
def test_replay_through_a_broker_restart_loses_nothing(broker, tmp_path, tone_bundle):
    audio = write_tones(tmp_path / "tones.wav", 4, gap_s=1.0, tone_s=1.0)  # 9 s at real-time pace
    sub = Subscriber(broker, REPLAY_EVENTS, session="watcher")
    daemon = Daemon("--replay", str(audio), "--realtime", "--mqtt", "--model", str(tone_bundle),
                    "--events-jsonl", str(tmp_path / "out.jsonl"),
                    config=daemon_config(broker, tmp_path), folder=tmp_path)
    daemon.wait_for_line("(seq 1)")
    broker.stop()
    daemon.wait_for_line("(seq 3)")
    broker.start()
    assert daemon.wait() == 0, "".join(daemon.lines)
    assert any("lost the connection" in line for line in daemon.lines)
    jsonl = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(jsonl) == 4
    ids = {e["event_id"] for e in jsonl}
    assert sub.wait_for(lambda s: {e["event_id"] for e in received(s, REPLAY_EVENTS)} >= ids, 10)
    first: dict[tuple, dict] = {}
    for event in received(sub, REPLAY_EVENTS):
        assert first.setdefault((event["event_id"], event["state"]), event) == event
    assert [e for e in first.values() if e["state"] == "closed"] == jsonl


def test_daemon_killed_with_the_broker_down_delivers_after_restart(tmp_path, tone_bundle):
    broker = Broker(tmp_path / "broker")  # down
    audio = write_tones(tmp_path / "tones.wav", 4, gap_s=1.0, tone_s=1.0)
    config = daemon_config(broker, tmp_path)
    daemon = Daemon("--replay", str(audio), "--realtime", "--mqtt", "--model", str(tone_bundle),
                    config=config, folder=tmp_path / "run1")
    daemon.wait_for_line("(seq 2)")
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.wait()
    # A replay keeps its outbox apart from the live service's (<state_dir>/replay/).
    outbox = Outbox(tmp_path / "state" / "replay" / "outbox.sqlite", max_rows=10**5,
                    max_bytes=10**8)
    queued = [json.loads(row.payload) for row in outbox.peek(limit=100)]
    outbox.close()
    assert [e["seq"] for e in queued if e["state"] == "closed"][:2] == [1, 2]

    broker.start()
    try:
        sub = Subscriber(broker, REPLAY_EVENTS)
        silence = write_tones(tmp_path / "quiet.wav", 0)  # no events of its own
        again = Daemon("--replay", str(silence), "--mqtt", "--model", str(tone_bundle),
                       config=config, folder=tmp_path / "run2")
        assert again.wait() == 0, "".join(again.lines)
        assert sub.wait_for(lambda s: len(s.on(REPLAY_EVENTS)) >= len(queued), 5)
        assert received(sub, REPLAY_EVENTS) == queued
    finally:
        broker.stop()


# -- python -m device --monitor ----------------------------------------------------------------


def test_monitor_lines_drop_repeated_event_ids():
    import io

    from device.monitor import Monitor

    out = io.StringIO()
    monitor = Monitor("callwatch", out)
    event = sample_event(7)
    opened = dataclasses.replace(event, end_s=14.5, state="open")
    monitor.on_message("callwatch/dev1/availability", b"online")
    monitor.on_message("callwatch/dev1/events", opened.to_json().encode())
    monitor.on_message("callwatch/dev1/events", opened.to_json().encode())  # a QoS 1 repeat
    monitor.on_message("callwatch/dev1/events", event.to_json().encode())
    monitor.on_message("callwatch/dev1/events", event.to_json().encode())  # a QoS 1 repeat
    monitor.on_message("callwatch/dev1/state", json.dumps(
        {"realtime_factor": 0.0012, "overflows": 2, "outbox_depth": 5, "dropped_events": 0,
         "uptime_s": 61.2}).encode())
    monitor.on_message("callwatch/dev1/events", b"garbage")
    monitor.on_message("homeassistant/event/x/config", b"{}")
    lines = [line.split(" ", 1)[1] for line in out.getvalue().splitlines()]  # without the time
    assert lines == [
        "dev1         online",
        "dev1         open     #7 tone 14.00-14.50 s  peak 0.93  test.wav  "
        "2026-11-22T23:00:00.500Z",
        "dev1         event    #7 tone 14.00-15.50 s  peak 0.93  test.wav  "
        "2026-11-22T23:00:00.500Z",
        "dev1         state    rtf 0.0012  overflows 2  outbox 5  dropped 0  up 61 s",
        "dev1         events   (not JSON: 'garbage')",
    ]


def test_monitor_with_no_broker_says_so_once_and_ends_on_ctrl_c(tmp_path):
    import yaml

    config = tmp_path / "monitor.yaml"
    config.write_text(yaml.safe_dump({"mqtt": {"host": "127.0.0.1", "port": free_port(),
                                               "reconnect_s": [0.1, 0.2]}}))
    proc = subprocess.Popen([sys.executable, "-m", "device", "--monitor", "--config", str(config)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()
        assert first.startswith("monitor: ") and "retrying" in first, first
        time.sleep(1.0)  # several retries at 0.1-0.2 s: still one line
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    rest = proc.stderr.read()
    assert rest == "", rest  # no repeat of the reason, no traceback


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_monitor_command_shows_every_device(broker, tmp_path, stop):
    import yaml

    config = tmp_path / "monitor.yaml"
    config.write_text(yaml.safe_dump({"mqtt": {"host": broker.host, "port": broker.port}}))
    proc = subprocess.Popen([sys.executable, "-m", "device", "--monitor", "--config", str(config)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "connected to" in proc.stderr.readline()
        sinks = [make_sink(broker, tmp_path / "a"),  # dev1
                 MqttSink(validate({"mqtt": broker.mqtt_config()}).mqtt, device_id="dev2",
                          labels=["tone"], state_dir=tmp_path / "b", health=dict)]
        sinks[0].on_event(sample_event(1))
        sinks[1].on_event(sample_event(1, device_id="dev2"))
        lines = []
        deadline = time.monotonic() + 10
        while not (any("dev2" in x and "event" in x for x in lines)
                   and any("dev1" in x and "event" in x for x in lines)):
            assert time.monotonic() < deadline, lines
            lines.append(proc.stdout.readline())
        for sink in sinks:
            sink.close()
    finally:
        proc.send_signal(stop)
        assert proc.wait(10) == 0
    seen = {tuple(line.split()[1:3]) for line in lines}
    assert {("dev1", "online"), ("dev2", "online"), ("dev1", "event"), ("dev2", "event")} <= seen
