"""The README's fleet example: examples/fleet/node-red-flows.json in a real Node-RED on a real broker.

Node-RED (npm ``node-red``, installed by scripts/setup into ``.venv/node-red``) runs headless
with the example flow; recorders' events go through Mosquitto into it. It must write each event
once to its JSON Lines file: a QoS 1 repeat (the same message twice) dropped, an event published
again with its final extent (same ``event_id``, new payload) kept.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from broker import Broker, free_port, sample_event

FLOW = Path(__file__).resolve().parents[1] / "examples" / "fleet" / "node-red-flows.json"


def node_red() -> str | None:
    """The node-red command: .venv/node-red (scripts/setup), $CALLWATCH_NODE_RED or PATH."""
    candidates = [os.environ.get("CALLWATCH_NODE_RED"),
                  str(Path(sys.prefix) / "node-red" / "node_modules" / ".bin" / "node-red"),
                  shutil.which("node-red")]
    return next((c for c in candidates if c and Path(c).is_file()), None)


def _lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _wait(predicate, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_node_red_flow_writes_each_event_once(tmp_path: Path) -> None:
    command = node_red()
    if command is None or shutil.which("node") is None:
        pytest.skip("Node-RED is not installed (bash scripts/setup installs it with npm)")
    broker = Broker(tmp_path / "broker").start()
    user_dir = tmp_path / "node-red"
    user_dir.mkdir()
    shutil.copy(FLOW, user_dir / "flows.json")
    settings = user_dir / "settings.js"
    settings.write_text(
        "module.exports = { uiHost: '127.0.0.1', flowFile: 'flows.json', credentialSecret: false,\n"
        "  httpAdminRoot: false, httpNodeRoot: false, logging: { console: { level: 'info' } } };\n")
    events_file = tmp_path / "out" / "events.jsonl"
    env = {**os.environ, "CALLWATCH_MQTT_HOST": broker.host,
           "CALLWATCH_MQTT_PORT": str(broker.port), "CALLWATCH_EVENTS_FILE": str(events_file)}
    log = (tmp_path / "node-red.log").open("wb")
    proc = subprocess.Popen([command, "--settings", str(settings), "--userDir", str(user_dir),
                             "--port", str(free_port())], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="callwatch-rec0001")
    publisher.connect(broker.host, broker.port)
    publisher.loop_start()
    topic = "callwatch/rec0001/events"
    try:
        # Until Node-RED has subscribed, events are not kept for it: send distinct probes
        # until one comes through, then the events under test.
        def probe_arrived() -> bool:
            publisher.publish(topic, json.dumps({"event_id": uuid.uuid4().hex, "probe": True}),
                              qos=1)
            return _wait(lambda: bool(_lines(events_file)), 0.5)

        log_text = lambda: (tmp_path / "node-red.log").read_text(errors="replace")  # noqa: E731
        assert _wait(probe_arrived, 90), f"Node-RED wrote no event: {log_text()[-3000:]}"
        time.sleep(1.0)  # probes still in flight land before the count
        probes = len(_lines(events_file))

        first, second = sample_event(1, device_id="rec0001"), sample_event(2, device_id="rec0001")
        closed = json.loads(second.to_json()) | {"end_s": second.end_s + 3.0}
        for payload in (first.to_json(), first.to_json(), second.to_json(), json.dumps(closed)):
            publisher.publish(topic, payload, qos=1).wait_for_publish(10)
        assert _wait(lambda: len(_lines(events_file)) >= probes + 3), log_text()[-3000:]
        time.sleep(1.0)  # a wrongly kept repeat would arrive now
        written = _lines(events_file)[probes:]
        assert [(e["event_id"], e["end_s"]) for e in written] == [
            (first.event_id, first.end_s), (second.event_id, second.end_s),
            (second.event_id, second.end_s + 3.0)]
        assert written[0] == json.loads(first.to_json())
    finally:
        publisher.disconnect()
        publisher.loop_stop()
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        broker.stop()
