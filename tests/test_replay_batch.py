"""A season of recordings through python -m device --replay, as a subprocess: recording times,
sites, names that break tables, failed files, resume after SIGKILL, clean stops on signals,
and the batch outputs (Raven table, detections CSV, Audacity labels, activity summaries)."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile
from test_recording import AUDIOMOTH_COMMENT, write_wav
from test_replay import REPO, SR, device, events_of, tones_signal, write_config
from tinymodel import noise


def _season(root: Path, *, seconds: float = 20.0, per_site: int = 2) -> Path:
    """AudioMoth-style folders: SiteA and SiteB each hold 20240501_050000.WAV, ... (one name
    in both sites); SiteA's first file also carries the AudioMoth comment (one hour earlier
    than its name, so the comment is seen to win); SiteB/dawn.wav has no time at all."""
    for site in ("SiteA", "SiteB"):
        (root / site).mkdir(parents=True)
        for i in range(per_site):
            soundfile.write(root / site / f"20240501_0{5 + i}0000.WAV", tones_signal(seconds), SR,
                            subtype="PCM_16")
    comment = AUDIOMOTH_COMMENT.replace("05:30:00", "04:00:00")
    write_wav(root / "SiteA" / "20240501_050000.WAV", audio=tones_signal(seconds), comment=comment)
    soundfile.write(root / "SiteB" / "dawn.wav", tones_signal(seconds), SR, subtype="PCM_16")
    return root


OUTPUT_FLAGS = {
    "--events-jsonl": "events.jsonl", "--scores-csv": "scores.csv", "--counts-csv": "counts.csv",
    "--raven-dir": "raven", "--raven-table": "table.selections.txt",
    "--detections-csv": "detections.csv", "--audacity-dir": "audacity",
    "--activity-dir": "activity",
}


def _outputs(out: Path) -> list[str]:
    args = []
    for flag, name in OUTPUT_FLAGS.items():
        args += [flag, str(out / name)]
    return args


def test_sites_times_and_every_batch_output(tone_bundle, tmp_path):
    root = _season(tmp_path / "season")
    config = write_config(tmp_path, tone_bundle)
    out = tmp_path / "out"
    result = device("--config", str(config), "--replay", str(root), *_outputs(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "2 sites, 1 files without a recording time" in result.stderr

    events = events_of((out / "events.jsonl").read_text())
    by_source: dict[str, list[dict]] = {}
    for e in events:
        by_source.setdefault(e["source"], []).append(e)
    assert sorted(by_source) == ["SiteA/20240501_050000.WAV", "SiteA/20240501_060000.WAV",
                                 "SiteB/20240501_050000.WAV", "SiteB/20240501_060000.WAV",
                                 "SiteB/dawn.wav"]
    assert all(len(v) == 3 for v in by_source.values())
    first_a = by_source["SiteA/20240501_050000.WAV"][0]
    first_b = by_source["SiteB/20240501_050000.WAV"][0]
    # The comment says 04:00, the name 05:00: the comment wins; SiteB has only the name.
    assert (first_a["time_source"], first_a["site"], first_a["replay"]) == ("audiomoth", "SiteA", True)
    assert first_a["start_utc"] == f"2024-05-01T04:00:{first_a['start_s']:06.3f}Z"
    assert (first_b["time_source"], first_b["site"]) == ("filename", "SiteB")
    assert first_b["start_utc"] == f"2024-05-01T05:00:{first_b['start_s']:06.3f}Z"
    dawn = by_source["SiteB/dawn.wav"][0]
    assert dawn["start_utc"] is None and dawn["time_source"] is None and not dawn["clock_synced"]
    assert first_a["mono_s"] == first_a["start_s"]

    counts = list(csv.DictReader((out / "counts.csv").open()))
    assert [(r["source"], r["site"], r["tone"]) for r in counts][:2] == [
        ("SiteA/20240501_050000.WAV", "SiteA", "3"), ("SiteA/20240501_060000.WAV", "SiteA", "3")]
    assert len(counts) == 5  # two 20240501_050000.WAV, never merged

    tables = sorted(p.relative_to(out / "raven").as_posix() for p in (out / "raven").rglob("*.txt"))
    assert tables == ["SiteA/20240501_050000.callwatch.selections.txt",
                      "SiteA/20240501_060000.callwatch.selections.txt",
                      "SiteB/20240501_050000.callwatch.selections.txt",
                      "SiteB/20240501_060000.callwatch.selections.txt",
                      "SiteB/dawn.callwatch.selections.txt"]

    table = list(csv.DictReader((out / "table.selections.txt").open(), delimiter="\t"))
    assert len(table) == 15 and [int(r["Selection"]) for r in table] == list(range(1, 16))
    row = table[3]  # first event of the second file: Begin Time counts on from the first file
    assert Path(row["Begin Path"]) == (root / "SiteA" / "20240501_060000.WAV").resolve()
    assert float(row["Begin Time (s)"]) == pytest.approx(20.0 + float(row["File Offset (s)"]))
    assert row["Begin Date"] == "2024-05-01" and row["Begin Clock Time"].startswith("06:00:0")
    assert row["Site"] == "SiteA" and row["Species"] == "tone"

    detections = list(csv.DictReader((out / "detections.csv").open()))
    assert list(detections[0]) == ["source", "site", "start_s", "end_s", "start_utc", "end_utc",
                                   "label", "score"]
    assert len(detections) == 15
    assert detections[-1]["source"] == "SiteB/dawn.wav" and detections[-1]["start_utc"] == ""
    assert detections[0]["end_utc"].startswith("2024-05-01T04:00:")

    labels = (out / "audacity" / "SiteB" / "dawn.txt").read_text().splitlines()
    assert len(labels) == 3 and labels[0].split("\t")[2] == "tone"

    by_hour = list(csv.DictReader((out / "activity" / "activity_by_hour.csv").open()))
    assert {(r["site"], r["hour"], r["detections"]) for r in by_hour} == {
        ("SiteA", "4", "3"), ("SiteA", "6", "3"), ("SiteB", "5", "3"), ("SiteB", "6", "3")}
    assert float(by_hour[0]["recorded_h"]) == pytest.approx(20 / 3600, abs=1e-4)
    by_date = list(csv.DictReader((out / "activity" / "activity_by_date.csv").open()))
    assert {(r["site"], r["date"], r["detections"]) for r in by_date} == {
        ("SiteA", "2024-05-01", "6"), ("SiteB", "2024-05-01", "6")}
    try:
        import matplotlib  # noqa: F401  (workstation profile)
    except ImportError:
        assert "matplotlib is not installed" in result.stderr
    else:
        for name in ("activity_by_hour.png", "activity_by_date.png"):
            assert (out / "activity" / name).read_bytes()[:4] == b"\x89PNG"

    # Not a terminal: progress comes as log lines (files, hours, speed, time left).
    progress = [line for line in result.stderr.splitlines() if "progress: " in line]
    assert progress and "5/5 files" in progress[-1] and "h of audio" in progress[-1]
    assert "x real time" in progress[-1]


def test_progress_on_a_terminal_is_one_live_line(tone_bundle, tmp_path):
    import pty

    for i in range(3):
        soundfile.write(tmp_path / f"{i}.wav", noise(30.0, SR), SR)
    config = write_config(tmp_path, tone_bundle)
    controller, terminal = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "device", "--config", str(config), "--replay",
                             str(tmp_path)], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=terminal)
    os.close(terminal)
    chunks = []
    while True:
        try:
            data = os.read(controller, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(60) == 0
    text = b"".join(chunks).decode(errors="replace")
    updates = text.split("\r\x1b[Kreplay: ")
    assert len(updates) >= 3 and "3/3 files" in updates[-1], text
    assert "progress: " not in text  # no log lines when the live line is there


def test_start_time_timezone_and_site_pattern_flags(tone_bundle, tmp_path):
    folder = tmp_path / "rec" / "card7_Moor"
    folder.mkdir(parents=True)
    for name in ("a.wav", "b.wav"):
        soundfile.write(folder / name, tones_signal(20.0), SR)
    config = write_config(tmp_path, tone_bundle)
    result = device("--config", str(config), "--replay", str(tmp_path / "rec"), "--events-jsonl",
                    "-", "--start-time", "2024-06-01T22:00:00", "--timezone", "Europe/Berlin",
                    "--site-pattern", r"card\d+_(\w+)/", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    events = events_of(result.stdout)
    b = [e for e in events if e["source"] == "card7_Moor/b.wav"][0]
    # b.wav starts where a.wav (20 s) ended; 22:00 in Berlin is 20:00 UTC.
    assert b["start_utc"] == f"2024-06-01T20:00:{20 + b['start_s']:06.3f}Z"
    assert b["time_source"] == "given" and b["site"] == "Moor"


@pytest.mark.parametrize("args, message", [
    (["--start-time", "yesterday"], "--start-time: 'yesterday' is not an ISO 8601 time"),
    (["--timezone", "Mars/Base"], "--timezone: unknown time zone"),
    (["--time-format", "%H"], "--time-format: '%H' needs a year"),
    (["--site-pattern", "(unclosed"], "--site-pattern: not a regular expression"),
    (["--resume"], "--resume: needs a file output"),
])
def test_bad_batch_flags_exit_2_with_one_line(tone_bundle, tmp_path, args, message):
    soundfile.write(tmp_path / "a.wav", noise(2.0, SR), SR)
    config = write_config(tmp_path, tone_bundle)
    result = device("--config", str(config), "--replay", str(tmp_path / "a.wav"), *args,
                    cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr


def test_names_with_commas_quotes_and_newlines_stay_in_their_field(tone_bundle, tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    names = ['a,b "c".wav', "new\nline.wav", "tab\there.wav"]
    for name in names:
        soundfile.write(folder / name, tones_signal(20.0), SR)
    (folder / "forged\nERROR x.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk")
    config = write_config(tmp_path, tone_bundle)
    out = tmp_path / "out"
    result = device("--config", str(config), "--replay", str(folder), *_outputs(out), cwd=tmp_path)
    assert result.returncode == 1
    # No log line starts with a piece of a file name.
    assert not [line for line in result.stderr.splitlines() if line.startswith(("line.wav", "ERROR x"))]
    assert "forged\\nERROR x.wav" in result.stderr
    for table, key in (("scores.csv", "source"), ("counts.csv", "source"),
                       ("detections.csv", "source")):
        rows = list(csv.DictReader(io.StringIO((out / table).read_text(), newline="")))
        assert set(names) <= {r[key] for r in rows}, table
    assert {e["source"] for e in events_of((out / "events.jsonl").read_text())} == set(names)
    raven = (out / "table.selections.txt").read_text().splitlines()
    assert len(raven) == 1 + 9 and all(len(line.split("\t")) == 15 for line in raven)


def test_every_failed_file_has_its_own_error_line(tone_bundle, tmp_path):
    for i in range(4):
        (tmp_path / f"broken{i}.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot audio")
    soundfile.write(tmp_path / "good.wav", noise(2.0, SR), SR)
    config = write_config(tmp_path, tone_bundle)
    result = device("--config", str(config), "--replay", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 4 and all(f"broken{i}.wav" in errors[i] for i in range(4)), result.stderr
    assert "4 failed" in result.stderr


def test_header_only_tables_are_valid(tone_bundle, tmp_path):
    soundfile.write(tmp_path / "quiet.wav", noise(5.0, SR), SR)
    config = write_config(tmp_path, tone_bundle)
    out = tmp_path / "out"
    result = device("--config", str(config), "--replay", str(tmp_path / "quiet.wav"),
                    *_outputs(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for path in (out / "table.selections.txt", out / "raven" / "quiet.callwatch.selections.txt"):
        lines = path.read_text().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Selection\tView\tChannel")
        assert list(csv.DictReader(path.open(), delimiter="\t")) == []
    assert (out / "detections.csv").read_text() == (
        "source,site,start_s,end_s,start_utc,end_utc,label,score\n")
    assert (out / "audacity" / "quiet.txt").read_text() == ""
    pd = pytest.importorskip("pandas")
    assert len(pd.read_csv(out / "table.selections.txt", sep="\t")) == 0
    assert len(pd.read_csv(out / "detections.csv")) == 0


def test_min_conf_and_hop_flags(tone_bundle, tmp_path):
    soundfile.write(tmp_path / "tones.wav", tones_signal(20.0), SR)
    config = write_config(tmp_path, tone_bundle)
    rows = {}
    for hop in ("0.5", "1.0"):
        result = device("--config", str(config), "--replay", str(tmp_path / "tones.wav"),
                        "--hop", hop, "--scores-csv", str(tmp_path / f"s{hop}.csv"), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        rows[hop] = len((tmp_path / f"s{hop}.csv").read_text().splitlines()) - 1
    assert (rows["0.5"], rows["1.0"]) == (39, 20)
    strict = device("--config", str(config), "--replay", str(tmp_path / "tones.wav"),
                    "--min-conf", "0.999999", "--events-jsonl", "-", cwd=tmp_path)
    loose = device("--config", str(config), "--replay", str(tmp_path / "tones.wav"),
                   "--min-conf", "0.2", "--events-jsonl", "-", cwd=tmp_path)
    assert len(events_of(strict.stdout)) < len(events_of(loose.stdout)) == 3
    bad = device("--config", str(config), "--replay", str(tmp_path / "tones.wav"), "--min-conf",
                 "1.5", cwd=tmp_path)
    assert bad.returncode == 2 and "--min-conf: must be between 0 and 1" in bad.stderr


# --- leaving a batch running: kill, resume, signals -------------------------------------------


def _start(args: list[str], cwd: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("STATE_DIRECTORY", None)
    return subprocess.Popen([sys.executable, "-m", "device", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _finished_files(manifest: Path) -> int:
    try:
        return max(0, len(manifest.read_text().splitlines()) - 1)
    except FileNotFoundError:
        return 0


def _wait_for_files(manifest: Path, n: int, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while _finished_files(manifest) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the batch made no progress"
        time.sleep(0.01)


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "callwatch-manifest.jsonl" and p.suffix != ".png"}


@pytest.fixture(scope="module")
def long_season(tmp_path_factory) -> Path:
    # Long enough that the files after the first take a replay most of a second: the signal and
    # kill tests stop the batch once a file is done, and must land before the last one is (with
    # 90 s files, block-wise replay finished all nine before a SIGINT landed).
    return _season(tmp_path_factory.mktemp("long") / "season", seconds=360.0, per_site=4)


@pytest.mark.parametrize("jobs", ["1", pytest.param("2", marks=pytest.mark.slow)])
def test_a_batch_killed_with_sigkill_resumes_to_identical_outputs(
    tone_bundle, long_season, tmp_path, jobs
):
    config = write_config(tmp_path, tone_bundle)
    whole = tmp_path / "whole"
    ref = device("--config", str(config), "--replay", str(long_season), *_outputs(whole),
                 cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr

    out = tmp_path / "resumed"
    args = ["--config", str(config), "--replay", str(long_season), "--jobs", jobs, *_outputs(out)]
    proc = _start(args, tmp_path)
    _wait_for_files(out / "callwatch-manifest.jsonl", 2, proc)
    proc.kill()
    proc.wait()
    done_before = _finished_files(out / "callwatch-manifest.jsonl")
    assert 2 <= done_before < 9, "the kill must land in the middle of the batch"
    again = device(*args, "--resume", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"{9 - done_before} files" in again.stderr and "resumed" in again.stderr
    assert _snapshot(out) == _snapshot(whole)
    # Without --resume the batch starts afresh, and gives the same outputs again.
    fresh = device(*args, cwd=tmp_path)
    assert fresh.returncode == 0 and "9 files" in fresh.stderr
    assert _snapshot(out) == _snapshot(whole)


def test_resume_refuses_a_manifest_of_other_settings(tone_bundle, long_season, tmp_path):
    config = write_config(tmp_path, tone_bundle)
    out = tmp_path / "out"
    first = device("--config", str(config), "--replay", str(long_season / "SiteA"),
                   "--counts-csv", str(out / "c.csv"), cwd=tmp_path)
    assert first.returncode == 0
    other = device("--config", str(config), "--replay", str(long_season / "SiteA"), "--hop", "1",
                   "--counts-csv", str(out / "c.csv"), "--resume", cwd=tmp_path)
    assert other.returncode == 2 and "made with other settings (detection)" in other.stderr


@pytest.mark.parametrize("signum, jobs, group", [
    (signal.SIGTERM, "1", False),
    (signal.SIGHUP, "1", False),
    (signal.SIGINT, "1", True),   # Ctrl-C on a terminal: the whole process group
    pytest.param(signal.SIGINT, "2", True, marks=pytest.mark.slow),
    pytest.param(signal.SIGTERM, "2", False, marks=pytest.mark.slow),
])
def test_signals_stop_cleanly_with_every_output(tone_bundle, long_season, tmp_path, signum, jobs,
                                                group):
    config = write_config(tmp_path, tone_bundle)
    out = tmp_path / "out"
    args = ["--config", str(config), "--replay", str(long_season), "--jobs", jobs, *_outputs(out)]
    proc = _start(args, tmp_path, start_new_session=True)
    _wait_for_files(out / "callwatch-manifest.jsonl", 1, proc)
    if group:
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert f"stopped by {signal.Signals(signum).name}" in stderr and "--resume" in stderr
    done = _finished_files(out / "callwatch-manifest.jsonl")
    assert 1 <= done < 9
    counts = list(csv.DictReader((out / "counts.csv").open()))
    assert len(counts) == done  # the summaries cover exactly the finished files
    assert len((out / "events.jsonl").read_text().splitlines()) == 3 * done
    summary = [line for line in stderr.splitlines() if line.startswith("replay:")]
    assert summary and f"{done} files" in summary[0]
    # ... and the batch can be finished.
    rest = device(*args, "--resume", cwd=tmp_path)
    assert rest.returncode == 0, rest.stderr
    assert len(list(csv.DictReader((out / "counts.csv").open()))) == 9


# --- replays stay replays ---------------------------------------------------------------------


def test_a_replay_never_speaks_for_the_live_recorder(tone_bundle, tmp_path):
    """A live daemon's MQTT sink (device "pi") and replays with the very config it uses
    (mqtt.enabled, same device_id and state_dir) on one real broker."""
    from broker import Broker, Subscriber, sample_event

    from device.config import validate
    from device.mqtt import MqttSink

    broker = Broker(tmp_path / "broker").start()
    try:
        mqtt_cfg = broker.mqtt_config(discovery={"enabled": False})
        sub = Subscriber(broker, "callwatch/#")
        live = MqttSink(validate({"mqtt": mqtt_cfg}).mqtt, device_id="pi", labels=["tone"],
                        state_dir=tmp_path / "state", health=lambda: {})
        live.on_event(sample_event(1, device_id="pi"))
        assert sub.wait_for(lambda s: s.payloads("callwatch/pi/availability") == ["online"]
                            and len(s.on("callwatch/pi/events")) == 1)

        (tmp_path / "rec" / "SiteA").mkdir(parents=True)
        soundfile.write(tmp_path / "rec" / "SiteA" / "20240501_050000.WAV", tones_signal(20.0), SR)
        config = write_config(tmp_path, tone_bundle, mqtt=mqtt_cfg,
                              service={"device_id": "pi"})
        quiet = device("--config", str(config), "--replay", str(tmp_path / "rec"), cwd=tmp_path)
        assert quiet.returncode == 0, quiet.stderr
        assert "--mqtt publishes a replay" in quiet.stderr
        time.sleep(0.5)
        assert not [m for m in sub.messages if "/replay" in m.topic]

        loud = device("--config", str(config), "--replay", str(tmp_path / "rec"), "--mqtt",
                      cwd=tmp_path)
        assert loud.returncode == 0, loud.stderr
        assert sub.wait_for(lambda s: len(s.on("callwatch/pi/replay/events")) >= 3)
        replayed = [json.loads(p) for p in sub.payloads("callwatch/pi/replay/events")]
        assert all(e["replay"] is True and e["source"] == "SiteA/20240501_050000.WAV"
                   and e["start_utc"].startswith("2024-05-01T05:00:") for e in replayed)
        assert [e["seq"] for e in replayed] == [1, 2, 3]

        # The live recorder was never disturbed: still connected, still "online", its events
        # topic carries only its own events, and it keeps publishing.
        live.on_event(sample_event(2, device_id="pi"))
        assert sub.wait_for(lambda s: len(s.on("callwatch/pi/events")) == 2)
        assert all(not json.loads(p).get("replay") for p in sub.payloads("callwatch/pi/events"))
        assert sub.payloads("callwatch/pi/availability") == ["online"]
        assert live.counters["connects"] == 1 and live.counters["disconnects"] == 0
        assert not [m for m in sub.messages if m.topic.startswith("callwatch/pi/replay/")
                    and not m.topic.endswith("/events")]
        late = Subscriber(broker, "callwatch/pi/availability")
        assert late.wait_for(lambda s: s.payloads("callwatch/pi/availability") == ["online"])
        late.close()
        live.close()
        sub.close()
    finally:
        broker.stop()


def test_plot_draws_spectrogram_scores_and_events(tone_bundle, tmp_path):
    pytest.importorskip("matplotlib")
    soundfile.write(tmp_path / "tones.wav", tones_signal(20.0), SR)
    config = write_config(tmp_path, tone_bundle)
    png = tmp_path / "look.png"
    result = device("--config", str(config), "--plot", f"{tmp_path / 'tones.wav'}:2-18",
                    "--plot-out", str(png), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert png.read_bytes()[:4] == b"\x89PNG" and f"wrote {png}" in result.stderr
    bad = device("--config", str(config), "--plot", f"{tmp_path / 'tones.wav'}:9-3", cwd=tmp_path)
    assert bad.returncode == 2 and "END must be after START" in bad.stderr
    assert "Traceback" not in bad.stderr
