"""Faults a field recorder meets, with real parts: a real ext4 "SD card" on a loop device that
fills up and goes read-only under the running daemon, tmpfs state folders that are full or
read-only at start, a real Mosquitto, the PulseAudio virtual microphone.

The promise under test: detection never stops for storage. Events keep reaching every sink
that can take them (MQTT from memory, stdout), each degradation is logged once and shows in
the health state, and everything writes to disk again by itself once it can.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from broker import Broker, Subscriber
from faults import Card, fill, remount, tmpfs
from test_live_audio import TONES, null_sink, recording  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parents[1]
DEVICE = "faults"


class LiveDaemon:
    """``python -m device`` on the virtual microphone, events JSONL on stdout (read by a thread),
    the log in a file."""

    def __init__(self, folder: Path, config: dict, sink: str) -> None:
        self.log_path = folder / "daemon.log"
        path = folder / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        env = {**os.environ, "PYTHONPATH": str(REPO), "PULSE_SOURCE": f"{sink}.monitor"}
        env.pop("NOTIFY_SOCKET", None)
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "device", "--config", str(path)], cwd=folder, env=env,
            stdout=subprocess.PIPE, stderr=self._log, text=True)
        self.events: list[dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.events.append(json.loads(line))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_listening(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while "listening on" not in self.log():
            if self.process.poll() is not None:
                pytest.fail(f"daemon exited with {self.process.returncode}: {self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                pytest.skip(f"no audio from the PulseAudio monitor within {timeout} s")
            time.sleep(0.1)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(30)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self._reader.join(5)
            self._log.close()
        return code


def play(sink: str, path: Path) -> None:
    result = subprocess.run(["paplay", f"--device={sink}", str(path)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    time.sleep(2.5)  # the last tone's event closes a window after the tone ends


def event_ids(messages) -> list[str]:
    return [json.loads(m.payload)["event_id"] for m in messages]


@pytest.mark.slow
def test_live_detection_survives_a_card_that_fills_then_goes_read_only(
        tone_bundle, null_sink, recording, tmp_path):  # noqa: F811 - fixtures
    card = Card(tmp_path / "card.img", tmp_path / "card")
    broker = Broker(tmp_path / "broker").start()
    subscriber = Subscriber(broker, f"callwatch/{DEVICE}/#")
    state = card.mountpoint / "state"
    daemon = None
    try:
        daemon = LiveDaemon(tmp_path, {
            "detection": {"model": str(tone_bundle), "hop_s": 0.5},
            "audio": {"device": "pulse"},
            "outputs": {"events_jsonl": "-", "raven_dir": str(state / "raven"),
                        "clips": {"enabled": True, "pre_s": 0.5, "post_s": 0.5}},
            "service": {"state_dir": str(state), "device_id": DEVICE, "min_free_mb": 0},
            "mqtt": broker.mqtt_config(),
        }, null_sink)
        daemon.wait_listening()
        time.sleep(1.0)
        phases: dict[str, tuple[int, int]] = {}

        def phase(name: str) -> None:
            first = len(daemon.events)
            play(null_sink, recording)
            phases[name] = (first, len(daemon.events))

        phase("before")
        filler = card.fill()
        phase("card full")
        filler.unlink()
        os.sync()  # the space is free on the card itself, not only in the page cache
        card.fail()
        phase("card read-only")
        card.replace()
        phase("card replaced")

        stdout_ids = [e["event_id"] for e in daemon.events]
        assert subscriber.wait_for(
            lambda s: set(stdout_ids) <= set(event_ids(s.on(f"callwatch/{DEVICE}/events"))),
            timeout_s=30), (
            "events detected but never published",
            [(e["seq"], e["event_id"] in event_ids(subscriber.on(f"callwatch/{DEVICE}/events")))
             for e in daemon.events], daemon.log()[-6000:])

        def recovered(s) -> bool:
            states = s.on(f"callwatch/{DEVICE}/state")
            return bool(states) and json.loads(states[-1].payload)["degraded"] == {}
        assert subscriber.wait_for(recovered, timeout_s=40), daemon.log()[-3000:]
        final_state = json.loads(subscriber.on(f"callwatch/{DEVICE}/state")[-1].payload)
        assert daemon.stop() == 0, daemon.log()
        log = daemon.log()
        assert "Traceback" not in log, log

        counts = {name: b - a for name, (a, b) in phases.items()}
        assert counts == dict.fromkeys(phases, len(TONES)), counts
        seqs = [e["seq"] for e in daemon.events]
        assert seqs == sorted(set(seqs)), seqs
        # Every degradation was seen, logged once per episode, and is over.
        during = [json.loads(m.payload) for m in subscriber.on(f"callwatch/{DEVICE}/state")]
        seen = set().union(*(s["degraded"] for s in during))
        assert {"sequence", "Raven tables", "clips"} <= seen, seen
        assert final_state["degradations"] >= 4
        # Full, then read-only with no event in between: one episode, one line.
        assert log.count("storage: sequence cannot write") == 1, log
        # Back on disk: numbering, the outbox, the tables.
        assert int((state / "seq").read_text()) == seqs[-1]
        assert list((state / "clips").glob("*.wav")) and not list((state / "clips").glob("*.part"))
        [table] = (state / "raven").glob("*.selections.txt")
        assert len(table.read_text().splitlines()) >= 1 + len(TONES)
        print("faults survived:", json.dumps({"events": counts, "lost": len(
            set(stdout_ids) - set(event_ids(subscriber.on(f"callwatch/{DEVICE}/events"))))}))
    finally:
        if daemon is not None and daemon.process.poll() is None:
            daemon.stop()
        subscriber.close()
        broker.stop()
        card.close()


def _replay(folder: Path, config: dict, audio: Path) -> subprocess.CompletedProcess:
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [sys.executable, "-m", "device", "--config", str(path), "--replay", str(audio),
         "--events-jsonl", "-", "--mqtt"],
        cwd=folder, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        timeout=180)


@pytest.mark.parametrize("fault", ["read-only", "full"])
def test_a_state_folder_read_only_or_full_at_start_is_no_reason_to_stop(
        fault, tone_bundle, recording, tmp_path):  # noqa: F811 - fixture
    """A replay publishing to MQTT (--mqtt) with its state on a tmpfs that is read-only (with
    an outbox from an earlier run) or full from the start: every event reaches the broker, from
    memory, and the outbox is neither called corrupt nor moved."""
    broker = Broker(tmp_path / "broker").start()
    subscriber = Subscriber(broker, f"callwatch/{DEVICE}/#")
    topic = f"callwatch/{DEVICE}/replay/events"
    try:
        with tmpfs(tmp_path / "state", size="1m") as state:
            first = _replay(tmp_path, {
                "detection": {"model": str(tone_bundle), "hop_s": 0.5},
                "service": {"state_dir": str(state), "device_id": DEVICE},
                "mqtt": broker.mqtt_config(),
            }, recording)
            assert first.returncode == 0, first.stderr
            if fault == "read-only":
                remount(state, "ro")
            else:
                fill(state)
            before = sorted(p.name for p in (state / "replay").iterdir())
            result = _replay(tmp_path, {
                "detection": {"model": str(tone_bundle), "hop_s": 0.5},
                "service": {"state_dir": str(state), "device_id": DEVICE},
                "mqtt": broker.mqtt_config(),
            }, recording)
            assert result.returncode == 0, result.stderr
            assert "Traceback" not in result.stderr and "corrupt" not in result.stderr
            assert "unreadable" not in result.stderr, result.stderr
            assert "storage: outbox cannot write" in result.stderr or fault == "full", result.stderr
            assert "storage: " in result.stderr, result.stderr  # the degradation was said
            after = sorted(p.name for p in (state / "replay").iterdir())
            assert not [n for n in after if "corrupt" in n or n.endswith(".tmp")], after
            assert set(before) <= set(after), (before, after)
            events = [json.loads(line) for line in result.stdout.splitlines()]
            assert len(events) == len(TONES)
            assert subscriber.wait_for(lambda s: len(s.on(topic)) >= 2 * len(TONES),
                                       timeout_s=20), result.stderr
            delivered = {json.loads(m.payload)["event_id"] for m in subscriber.on(topic)}
            print(f"faults survived: state {fault} at start:", json.dumps({
                "before": len(first.stdout.splitlines()), "during": len(events),
                "lost": len({e["event_id"] for e in events} - delivered)}))
            if fault == "read-only":
                remount(state, "rw")
    finally:
        subscriber.close()
        broker.stop()


def test_a_clip_cut_short_is_cleaned_up_and_a_full_disk_leaves_no_part(tmp_path):
    """A ``.wav.part`` left by a kill mid-write is deleted by the clip budget; a clip that
    cannot be written (a full tmpfs) leaves no ``.part`` behind, and clips resume when space
    returns."""
    import numpy as np
    from test_sinks import event

    from device.health import Health
    from device.sinks import ClipSink, SinkQueue

    with tmpfs(tmp_path / "clips", size="256k") as folder:
        (folder / "20260101T000000Z_tone_deadbeef.wav.part").write_bytes(b"RIFF")
        sink = ClipSink(folder, max_mb=100.0, max_age_days=30.0, min_free_mb=0.0)
        assert list(folder.iterdir()) == []
        health = Health()
        queue = SinkQueue([sink], maxsize=10, block=True, health=health).start()
        filler = fill(folder)
        queue.put_clip(event(1), np.zeros(16000, np.float32), 16000)
        queue.drain()
        assert [p.name for p in folder.iterdir()] == ["filler"]
        assert set(health.storage.active()) == {"clips"} and sink.skipped == 1
        filler.unlink()
        queue.put_clip(event(2), np.zeros(1600, np.float32), 16000)
        queue.close()
        assert [p.suffix for p in folder.iterdir()] == [".wav"]
        assert health.storage.active() == {} and health.storage.count == 1


def _port_below_ephemeral() -> int:
    """A free port outside the kernel's ephemeral range: thousands of connects to a port in
    that range end up connected to themselves (TCP simultaneous open) and hold the port."""
    import random
    import socket

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(100):
        port = random.randrange(10000, min(low, 32768))
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port below the ephemeral range")


def test_publishing_survives_thousands_of_failed_connects_then_delivers(tmp_path, monkeypatch):
    """More than 2,000 refused connects in a row (34 h of outage at the default backoff; here
    a 1 ms backoff): the reconnect arithmetic must not overflow and kill paho's thread, and
    the event queued meanwhile arrives once the broker is there."""
    import broker as broker_module
    from broker import sample_event

    monkeypatch.setattr(broker_module, "free_port", _port_below_ephemeral)

    from device.config import validate
    from device.health import Health
    from device.mqtt import MqttSink

    broker = Broker(tmp_path / "broker").start()
    # A persistent session: the broker keeps for it what arrives while it reconnects.
    subscriber = Subscriber(broker, f"callwatch/{DEVICE}/events", session="faults-sub")
    broker.stop()  # nothing listens on the port now
    health = Health()
    cfg = validate({"mqtt": broker.mqtt_config(reconnect_s=[0.001, 0.002])})
    sink = MqttSink(cfg.mqtt, device_id=DEVICE, labels=["tone"], state_dir=tmp_path / "state",
                    health=health.snapshot, storage=health.storage)
    try:
        sink.on_event(sample_event(1, device_id=DEVICE))
        deadline = time.monotonic() + 120
        while sink.counters["connect_failures"] <= 2100:
            assert time.monotonic() < deadline, sink.counters
            time.sleep(0.2)
        assert sink.stalled() is None  # away is not stalled: the outbox holds the event
        broker.start()
        sink.on_event(sample_event(2, device_id=DEVICE))
        assert subscriber.wait_for(lambda s: len(s.on(f"callwatch/{DEVICE}/events")) >= 2,
                                   timeout_s=60), sink.counters
        assert [json.loads(m.payload)["seq"] for m in subscriber.on(
            f"callwatch/{DEVICE}/events")][:2] == [1, 2]
        assert sink.counters["connects"] >= 1
        print("faults survived: broker away for", sink.counters["connect_failures"],
              "connects:", json.dumps({"during": 1, "after": 1, "lost": 0}))
    finally:
        sink.close()
        subscriber.close()
        broker.stop()


def test_a_stalled_publisher_starves_the_watchdog_and_says_so(tmp_path, monkeypatch):
    """Connected, events waiting, no PUBACK for STALL_S: health names the stall (run_live
    then stops feeding the systemd watchdog)."""
    from broker import sample_event

    import device.mqtt.pump
    from device.config import validate
    from device.health import Health
    from device.mqtt import MqttSink

    broker = Broker(tmp_path / "broker").start()
    health = Health()
    sink = MqttSink(validate({"mqtt": broker.mqtt_config()}).mqtt, device_id=DEVICE,
                    labels=["tone"], state_dir=tmp_path / "state", health=health.snapshot,
                    storage=health.storage)
    health.add_check("mqtt", sink.stalled)
    try:
        sink.on_event(sample_event(1, device_id=DEVICE))
        deadline = time.monotonic() + 20
        while sink.counters["events_published"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert health.snapshot()["stalled"] == []
        # The broker stops answering (SIGSTOP: the connection stays up, nothing is acked).
        broker._proc.send_signal(signal.SIGSTOP)
        monkeypatch.setattr(device.mqtt.pump, "STALL_S", 0.5)
        sink.on_event(sample_event(2, device_id=DEVICE))
        deadline = time.monotonic() + 20
        while not health.stalls():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert "no event acknowledged" in health.snapshot()["stalled"][0]
        broker._proc.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 20
        while health.stalls():
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        if broker._proc is not None:
            broker._proc.send_signal(signal.SIGCONT)
        sink.close()
        broker.stop()


# -- hostile audio input ----------------------------------------------------------------------


def test_a_fifo_in_a_replay_folder_is_named_and_skipped_not_waited_for(tone_bundle, tmp_path):
    import numpy as np
    import soundfile

    folder = tmp_path / "audio"
    folder.mkdir()
    soundfile.write(folder / "a.wav", np.zeros(16000, np.float32), 16000)
    os.mkfifo(folder / "b.wav")  # opening it would block until a writer comes
    result = subprocess.run(
        [sys.executable, "-m", "device", "--model", str(tone_bundle), "--replay", str(folder)],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
        text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "b.wav: not a regular file" in result.stderr, result.stderr


def _peak_rss_streaming(path: Path) -> tuple[int, int]:
    """(samples out, peak RSS MiB) of a fresh process streaming ``path`` to 16 kHz."""
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forking process
    # (pytest, with TensorFlow loaded).
    code = ("import re, sys; from device.audio import stream_audio; "
            "n = sum(len(b) for b in stream_audio(sys.argv[1], 16000)); "
            "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]; "
            "print(n, int(hwm) // 1024)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], check=True, text=True,
                         capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                         timeout=300).stdout.split()
    return int(out[0]), int(out[1])


@pytest.mark.parametrize("rate", [8009, 44111, 96001, 383987])
def test_any_rate_resamples_in_bounded_memory(rate, tmp_path):
    """Primes and odd rates: no matrix the size of the rates' least common multiple (the
    polyphase weights for 44111 -> 16000 Hz alone would be 5.6 GB); the process stays under
    the daemon's 64 MiB RSS budget and makes exactly ceil(n * 16000 / rate) samples."""
    import numpy as np
    import soundfile

    seconds = 20
    x = (np.random.default_rng(rate).standard_normal(rate * seconds) * 0.1).astype(np.float32)
    path = tmp_path / f"odd_{rate}.wav"
    soundfile.write(path, x, rate, subtype="PCM_16")
    del x
    n, rss_mib = _peak_rss_streaming(path)
    assert n == -(-rate * seconds * 16000 // rate)
    assert rss_mib < 64, f"peak RSS {rss_mib} MiB at {rate} Hz"


def test_the_direct_resampler_agrees_with_the_polyphase_one():
    """The bounded-memory path (forced here on rates the polyphase path also serves) gives the
    same signal, block sizes notwithstanding."""
    import numpy as np

    from device.resample import Resampler

    class Direct(Resampler):
        MAX_WEIGHT_VALUES = 0

    rng = np.random.default_rng(1)
    for rate in (44100, 22050, 48000, 12000):
        x = rng.standard_normal(rate * 2).astype(np.float32)
        poly, direct = Resampler(rate, 16000), Direct(rate, 16000)
        assert direct.direct and not poly.direct
        a = np.concatenate([poly.process(x[i:i + 1000]) for i in range(0, len(x), 1000)]
                           + [poly.flush()])
        b = np.concatenate([direct.process(x[i:i + 777]) for i in range(0, len(x), 777)]
                           + [direct.flush()])
        assert len(a) == len(b) == -(-len(x) * 16000 // rate)
        assert np.abs(a - b).max() < 2e-3, rate


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 3e4])
def test_non_finite_or_absurd_samples_are_an_error_for_that_file(value, tmp_path):
    import numpy as np
    import soundfile

    from device.audio import AudioError, load_audio

    x = np.zeros(48000, np.float32)
    x[30000] = value
    path = tmp_path / "broken.wav"
    soundfile.write(path, x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="broken.wav: .*not audio"):
        load_audio(path, 16000)


def test_random_bytes_named_mp3_make_one_line_and_no_decoder_noise(tone_bundle, tmp_path):
    path = tmp_path / "noise.mp3"
    path.write_bytes(bytes(range(256)) * 80)  # not MPEG frames
    result = subprocess.run(
        [sys.executable, "-m", "device", "--model", str(tone_bundle), "--replay", str(path)],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
        text=True, timeout=120)
    assert result.returncode in (1, 2), result.stderr
    assert "noise.mp3" in result.stderr
    for noise in ("Illegal Audio-MPEG-Header", "mpg123", "Note:", "Trying to resync"):
        assert noise not in result.stderr, result.stderr


# -- outbox damage ------------------------------------------------------------------------------


def _killed_with_rows(path: Path, n: int) -> None:
    """A process stores ``n`` rows in the outbox at ``path`` and is SIGKILLed: the rows are in
    the write-ahead log, not yet in the main file."""
    script = (
        "import sys, time\n"
        "from device.mqtt.outbox import Outbox\n"
        f"outbox = Outbox({str(path)!r}, max_rows=1000, max_bytes=10**6)\n"
        f"for i in range({n}):\n"
        "    outbox.put('t', '{\"seq\": %d}' % i)\n"
        "print('stored', flush=True)\n"
        "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout.readline().strip() == "stored"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_a_zero_length_outbox_is_said_and_moved_aside(tmp_path, caplog):
    from device.mqtt.outbox import Outbox

    path = tmp_path / "outbox.sqlite"
    path.write_bytes(b"")
    with caplog.at_level("ERROR"):
        outbox = Outbox(path, max_rows=10, max_bytes=10**6)
    assert "the file is empty" in caplog.text and "moved aside" in caplog.text
    assert [p.stat().st_size for p in tmp_path.glob("outbox.sqlite.corrupt-*")] == [0]
    outbox.put("t", "{}")
    assert outbox.depth == 1 and not outbox.in_memory


def test_a_garbage_write_ahead_log_is_said_and_kept_the_rest_recovered(tmp_path, caplog):
    from device.mqtt.outbox import Outbox

    path = tmp_path / "outbox.sqlite"
    outbox = Outbox(path, max_rows=1000, max_bytes=10**6)
    for i in range(5):
        outbox.put("t", f'{{"seq": {i}}}')
    outbox.close()  # checkpointed: these 5 are in the main file
    _killed_with_rows(path, 3)  # 3 more live only in the -wal
    wal = Path(str(path) + "-wal")
    assert wal.stat().st_size > 0
    with open(wal, "r+b") as f:
        f.write(b"garbage!" * 4)  # the header sqlite would silently ignore the log for
    with caplog.at_level("ERROR"):
        outbox = Outbox(path, max_rows=1000, max_bytes=10**6)
    assert "write-ahead log" in caplog.text and "lost" in caplog.text, caplog.text
    assert list(tmp_path.glob("outbox.sqlite.corrupt-*-wal"))
    assert outbox.depth == 5  # the main file's rows are all there


def test_an_outbox_of_the_older_layout_is_migrated_not_a_crash(tmp_path):
    import sqlite3

    from device.mqtt.outbox import SCHEMA_VERSION, Outbox

    path = tmp_path / "outbox.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, "
        "payload TEXT NOT NULL);"
        "INSERT INTO outbox (topic, payload) VALUES ('t', '{\"seq\": 1}'), ('t', '{\"seq\": 2}');")
    db.close()
    outbox = Outbox(path, max_rows=1000, max_bytes=10**6)
    assert outbox.depth == 2 and outbox.size_bytes == 2 * (1 + len('{"seq": 1}'))
    assert [r.payload for r in outbox.peek()] == ['{"seq": 1}', '{"seq": 2}']
    outbox.put("t", '{"seq": 3}')
    outbox.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_an_outbox_from_a_newer_release_is_moved_aside_with_its_rows_recovered(tmp_path, caplog):
    import sqlite3

    from device.mqtt.outbox import Outbox

    path = tmp_path / "outbox.sqlite"
    outbox = Outbox(path, max_rows=1000, max_bytes=10**6)
    outbox.put("t", '{"seq": 1}')
    outbox.close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with caplog.at_level("ERROR"):
        again = Outbox(path, max_rows=1000, max_bytes=10**6)
    assert "schema version 99" in caplog.text and "1 queued events recovered" in caplog.text
    assert [r.payload for r in again.peek()] == ['{"seq": 1}']


# -- files and secrets --------------------------------------------------------------------------


def test_state_is_private_outside_systemd_and_a_readable_password_file_is_flagged(
        tone_bundle, tmp_path, caplog):
    import numpy as np
    import soundfile

    from device.config import validate
    from device.mqtt import read_password

    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    audio = tmp_path / "a.wav"
    soundfile.write(audio, np.zeros(16000, np.float32), 16000)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"service": {"state_dir": str(state)},
                                      "outputs": {"clips": {"enabled": True}}}))
    env = {k: v for k, v in os.environ.items() if k != "INVOCATION_ID"}
    result = subprocess.run(
        [sys.executable, "-m", "device", "--config", str(config), "--model", str(tone_bundle),
         "--replay", str(audio)], cwd=tmp_path, env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (state.stat().st_mode & 0o777) == 0o700
    assert (state / "clips").stat().st_mode & 0o077 == 0

    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    section = validate({"mqtt": {"username": "u", "password_file": str(secret)}}).mqtt
    with caplog.at_level("WARNING"):
        assert read_password(section)[0] == "s3cret"
    assert "can be read by group or others (mode 644): chmod 600" in caplog.text
    caplog.clear()
    secret.chmod(0o600)
    read_password(section)
    assert "chmod 600" not in caplog.text


def test_sighup_ends_the_live_daemon_cleanly(tone_bundle, null_sink, tmp_path):  # noqa: F811
    daemon = LiveDaemon(tmp_path, {
        "detection": {"model": str(tone_bundle), "hop_s": 0.5},
        "audio": {"device": "pulse"},
        "service": {"state_dir": str(tmp_path / "state"), "device_id": DEVICE},
    }, null_sink)
    daemon.wait_listening()
    daemon.process.send_signal(signal.SIGHUP)
    assert daemon.process.wait(30) == 0, daemon.log()
    daemon._reader.join(5)
    daemon._log.close()
    assert "stopped:" in daemon.log() and "Traceback" not in daemon.log()


# -- a hostile broker -----------------------------------------------------------------------------


def _json_values():
    from hypothesis import strategies as st

    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                        st.text(max_size=30))
    return st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
        max_leaves=20)


def test_the_monitor_survives_any_payload_and_escapes_control_characters():
    """Hypothesis: any topic under the prefix, any payload (JSON of any shape with the state
    and event keys given wrong types, Infinity and NaN, raw bytes, nesting deeper than the
    parser's recursion limit): the monitor prints lines, never raises, and never prints a
    control character."""
    hypothesis = pytest.importorskip("hypothesis")
    import io
    import re

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from device.monitor import Monitor

    keys = ["seq", "label", "start_s", "end_s", "peak_score", "source", "start_utc", "event_id",
            "realtime_factor", "overflows", "outbox_depth", "dropped_events", "uptime_s",
            "cpu_temp_c", "degraded", "stalled"]
    objects = st.dictionaries(st.sampled_from(keys), _json_values(), max_size=8)
    payloads = st.one_of(
        objects.map(lambda d: json.dumps(d).encode()),
        _json_values().map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=200),
        st.integers(1000, 200000).map(lambda n: b"[" * n + b"]" * n),
        st.sampled_from([b'{"seq": 1.5}', b'{"overflows": Infinity}', b'{"seq": NaN}',
                         b'{"label": "\\u001b[2J\\u0007bell", "event_id": "x"}']),
    )
    names = st.text(max_size=20).filter(lambda s: "/" not in s)
    bad = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")

    @settings(max_examples=300, deadline=None)
    @given(device=names, kind=st.sampled_from(["events", "state", "availability", "x"]),
           payload=payloads)
    def check(device, kind, payload):
        out = io.StringIO()
        Monitor("callwatch", out).on_message(f"callwatch/{device}/{kind}", payload)
        assert not bad.search(out.getvalue()), out.getvalue()

    del hypothesis
    check()


# -- model bundles ------------------------------------------------------------------------------


@pytest.fixture
def bundle_folder(tone_bundle, tmp_path) -> Path:
    import shutil

    folder = tmp_path / "bundle"
    shutil.copytree(tone_bundle.parent, folder)
    return folder


def test_an_edited_feature_setting_that_keeps_the_shape_is_refused(bundle_folder):
    from device.bundle import BundleError, load_bundle

    path = bundle_folder / "model.json"
    manifest = json.loads(path.read_text())
    manifest["features"]["fmin"] = manifest["features"]["fmin"] + 50.0  # same input shape
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="changed after convert wrote it"):
        load_bundle(bundle_folder)


def test_a_bundle_from_before_the_manifest_hash_loads_with_a_warning(bundle_folder, caplog):
    from device.bundle import load_bundle

    path = bundle_folder / "model.json"
    manifest = json.loads(path.read_text())
    del manifest["manifest_sha256"]
    path.write_text(json.dumps(manifest))
    with caplog.at_level("WARNING"):
        assert load_bundle(bundle_folder).labels == ("tone",)
    assert "no manifest_sha256" in caplog.text and "re-run convert" in caplog.text


def test_a_model_file_outside_the_bundle_folder_is_refused(bundle_folder, tmp_path):
    import shutil

    from device.bundle import BundleError, load_bundle, seal_manifest

    shutil.copy(bundle_folder / "model.tflite", tmp_path / "elsewhere.tflite")
    path = bundle_folder / "model.json"
    manifest = json.loads(path.read_text())
    manifest["model_file"] = "../elsewhere.tflite"
    path.write_text(json.dumps(seal_manifest(manifest)))
    with pytest.raises(BundleError, match="points outside the bundle folder"):
        load_bundle(bundle_folder)


@pytest.mark.parametrize("text", ["[" * 100000 + "]" * 100000, '{"a":' * 50000 + "1" + "}" * 50000,
                                  "\x00\xff", '"just a string"', "[]", "1e999"])
def test_malformed_model_json_of_any_shape_is_exit_2_in_one_line(bundle_folder, tmp_path, text):
    (bundle_folder / "model.json").write_text(text, encoding="utf-8", errors="surrogateescape")
    audio = tmp_path / "a.wav"
    import numpy as np
    import soundfile

    soundfile.write(audio, np.zeros(16000, np.float32), 16000)
    result = subprocess.run(
        [sys.executable, "-m", "device", "--model", str(bundle_folder), "--replay", str(audio)],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
        text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if "WARNING" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "model.json" in lines[0], lines


def test_a_host_that_never_answers_is_not_blamed_on_tls_when_tls_is_off(tmp_path, caplog):
    """A plain connection to a port that accepts and then says nothing (a firewall, a TLS
    port): the warning names the port and plain MQTT, not TLS files that are not in use."""
    import socket
    import threading

    from device.config import validate
    from device.health import Health
    from device.mqtt import MqttSink

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)  # never answers, never closes

    threading.Thread(target=accept, daemon=True).start()
    health = Health()
    cfg = validate({"mqtt": {"enabled": True, "host": "127.0.0.1",
                             "port": server.getsockname()[1], "keepalive_s": 5,
                             "reconnect_s": [0.2, 0.5]}})
    with caplog.at_level("WARNING", logger="device.mqtt"):
        sink = MqttSink(cfg.mqtt, device_id=DEVICE, labels=["tone"], state_dir=tmp_path / "state",
                        health=health.snapshot, storage=health.storage)
        try:
            deadline = time.monotonic() + 30
            while "never answered" not in caplog.text:
                assert time.monotonic() < deadline, caplog.text
                time.sleep(0.2)
        finally:
            sink.close()
            server.close()
            for conn in held:
                conn.close()
    assert "cert_file" not in caplog.text and "key_file" not in caplog.text, caplog.text
    assert "plain MQTT port" in caplog.text


@pytest.mark.slow
def test_kill_9_keeps_the_raven_table_and_counts_written_so_far(
        tone_bundle, null_sink, recording, tmp_path):  # noqa: F811 - fixtures
    daemon = LiveDaemon(tmp_path, {
        "detection": {"model": str(tone_bundle), "hop_s": 0.5},
        "audio": {"device": "pulse"},
        "outputs": {"events_jsonl": "-", "raven_dir": str(tmp_path / "raven"),
                    "counts_csv": str(tmp_path / "counts.csv")},
        "service": {"state_dir": str(tmp_path / "state"), "device_id": DEVICE},
    }, null_sink)
    try:
        daemon.wait_listening()
        time.sleep(1.0)
        play(null_sink, recording)
        deadline = time.monotonic() + 10
        while len(daemon.events) < len(TONES):
            assert time.monotonic() < deadline, daemon.log()
            time.sleep(0.1)
        daemon.process.kill()  # a power cut, as far as the process can tell
        daemon.process.wait(10)
    finally:
        if daemon.process.poll() is None:
            daemon.process.kill()
        daemon._log.close()
    [table] = (tmp_path / "raven").glob("*.selections.txt")
    rows = table.read_text().splitlines()
    assert rows[0].startswith("Selection\t") and len(rows) == 1 + len(TONES), rows
    assert [r.split("\t")[0] for r in rows[1:]] == [str(i) for i in range(1, len(TONES) + 1)]
    counts = (tmp_path / "counts.csv").read_text().splitlines()
    assert counts == ["source,site,tone", f"pulse,,{len(TONES)}"], counts
    print("faults survived: kill -9:", json.dumps({"before": len(TONES),
                                                   "in table": len(rows) - 1, "lost": 0}))
