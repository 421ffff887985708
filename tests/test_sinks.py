"""Sinks and the bounded queue in front of them."""

from __future__ import annotations

import csv
import dataclasses
import errno
import json
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from device.events import EVENT_SCHEMA, Event, SinkBase, WindowScores
from device.health import Health
from device.sinks import (
    ClipSink,
    CountsCsvSink,
    JsonlSink,
    LogSink,
    RavenSink,
    ScoresCsvSink,
    SinkQueue,
)

RAVEN_HEADER = (
    "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\t"
    "High Freq (Hz)\tSpecies\tScore"
)
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def event(
    seq: int = 1,
    *,
    label: str = "call",
    start: float = 1.0,
    end: float = 4.0,
    source: str = "a.wav",
    peak: float = 0.9,
) -> Event:
    return Event(
        event_id=f"{seq:08x}" + "0" * 24,
        seq=seq,
        device_id="dev",
        label=label,
        start_s=start,
        end_s=end,
        peak_score=peak,
        source=source,
        start_utc="2026-11-22T23:00:00.500Z",
        clock_synced=True,
        mono_s=100.0 + start,
    )


class Recorder(SinkBase):
    """A sink that records calls; optionally slow or broken."""

    def __init__(
        self, *, delay_s: float = 0.0, fail: bool = False, wants_scores: bool = True
    ) -> None:
        self.calls: list[tuple[str, object]] = []
        self.delay_s, self.fail, self.wants_scores = delay_s, fail, wants_scores
        self.closed = False

    def _record(self, kind, payload):
        time.sleep(self.delay_s)
        if self.fail:
            raise OSError("disk on fire")
        self.calls.append((kind, payload))

    def on_event(self, e):
        self._record("event", e)

    def on_scores(self, s):
        self._record("scores", s)

    def on_source_end(self, source):
        self._record("end", source)

    def close(self):
        self.closed = True


def test_queue_delivers_in_order_and_close_flushes_everything():
    recorder = Recorder()
    queue = SinkQueue([recorder], maxsize=100, block=False).start()
    queue.put_scores(WindowScores("a.wav", 0.0, 3.0, {"call": 0.1}))
    queue.put_event(event(1))
    queue.put_source_end("a.wav")
    queue.close()
    assert [k for k, _ in recorder.calls] == ["scores", "event", "end"]
    assert recorder.closed


def test_a_failing_sink_does_not_silence_the_others(caplog):
    good, bad = Recorder(), Recorder(fail=True)
    queue = SinkQueue([bad, good], maxsize=10, block=False).start()
    with caplog.at_level(logging.WARNING):
        queue.put_event(event(1))
        queue.put_event(event(2))
        queue.close()
    assert [e.seq for _, e in good.calls] == [1, 2]
    assert queue.sink_errors == 2 and "disk on fire" in caplog.text


def test_storage_is_said_to_work_again_only_by_a_message_the_sink_writes():
    """A clip sink whose disk failed is not declared recovered by an event or a source end
    (which it does not write: SinkBase's no-ops), only by the next clip it writes."""

    class Clips(SinkBase):
        storage_part = "clips"

        def __init__(self) -> None:
            self.fail, self.written = True, 0

        def on_clip(self, event, samples, sample_rate) -> None:
            if self.fail:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += 1

    health, clips = Health(), Clips()
    queue = SinkQueue([clips, Recorder()], maxsize=10, block=True, health=health).start()
    queue.put_clip(event(1), np.zeros(160, np.float32), 16000)
    queue.drain()
    assert health.storage.active() == {"clips": "No space left on device"}
    queue.put_event(event(1))
    queue.put_source_end("a.wav")
    queue.drain()
    assert "clips" in health.storage.active()
    clips.fail = False
    queue.put_clip(event(2), np.zeros(160, np.float32), 16000)
    queue.close()
    assert health.storage.active() == {} and clips.written == 1


def test_live_queue_never_blocks_and_counts_what_it_drops():
    health = Health()
    slow = Recorder(delay_s=0.05)
    queue = SinkQueue([slow], maxsize=10, block=False, health=health).start()
    t0 = time.perf_counter()
    for i in range(20):
        queue.put_scores(WindowScores("a.wav", i, i + 3, {"call": 0.0}))
    for seq in range(1, 21):
        queue.put_event(event(seq))
    assert time.perf_counter() - t0 < 0.1  # the worker was never held up
    # Scores only use half the queue: events still found room after the scores filled theirs.
    assert health.dropped_scores >= 14
    assert 0 < health.dropped_events < 20
    queue.close()
    delivered = [k for k, _ in slow.calls]
    assert delivered.count("event") == 20 - health.dropped_events
    assert delivered.count("scores") == 20 - health.dropped_scores


def test_replay_queue_blocks_instead_of_dropping():
    health = Health()
    slow = Recorder(delay_s=0.002)
    queue = SinkQueue([slow], maxsize=10, block=True, health=health).start()
    for seq in range(1, 101):
        queue.put_event(event(seq))
    queue.close()
    assert [e.seq for _, e in slow.calls] == list(range(1, 101))
    assert health.dropped_events == 0


def test_scores_are_only_made_when_a_sink_wants_them(tmp_path):
    assert not SinkQueue(
        [JsonlSink(str(tmp_path / "e.jsonl")), LogSink()], maxsize=10, block=True
    ).wants_scores
    assert SinkQueue([ScoresCsvSink(tmp_path / "s.csv")], maxsize=10, block=True).wants_scores


def test_open_events_reach_only_the_sinks_that_want_them(tmp_path):
    """MQTT publishes an event as it opens; files, tables and counts keep finished events."""

    class Opens(SinkBase):
        wants_open_events = True

        def __init__(self) -> None:
            self.events: list[Event] = []

        def on_event(self, e: Event) -> None:
            self.events.append(e)

        def close(self) -> None:
            pass

    opens, path = Opens(), tmp_path / "e.jsonl"
    queue = SinkQueue([opens, JsonlSink(str(path))], maxsize=10, block=True).start()
    opened = dataclasses.replace(event(1), state="open")
    queue.put_event(opened)
    queue.put_event(dataclasses.replace(opened, state="closed", end_s=opened.end_s + 1))
    queue.close()
    assert [e.state for e in opens.events] == ["open", "closed"]
    assert [Event.from_json(line).state for line in path.read_text().splitlines()] == ["closed"]


def test_jsonl_sink_writes_one_event_per_line_and_appends(tmp_path):
    path = tmp_path / "out" / "events.jsonl"
    sink = JsonlSink(str(path))
    sink.on_event(event(1))
    assert len(path.read_text().splitlines()) == 1  # flushed per event, before close
    sink.close()
    sink = JsonlSink(str(path), append=True)
    sink.on_event(event(2))
    sink.close()
    lines = path.read_text().splitlines()
    assert [Event.from_json(line).seq for line in lines] == [1, 2]
    assert json.loads(lines[0])["schema"] == EVENT_SCHEMA
    fresh = JsonlSink(str(path), append=False)
    fresh.close()
    assert path.read_text() == ""


def test_scores_csv_has_the_contract_header_and_a_row_per_window_and_label(tmp_path):
    path = tmp_path / "scores.csv"
    sink = ScoresCsvSink(path)
    sink.on_scores(WindowScores("a.wav", 0.0, 3.0, {"call": 0.12345, "owl": 0.9}))
    sink.on_scores(WindowScores("a.wav", 0.5, 3.5, {"call": 0.5, "owl": 0.0}))
    sink.close()
    rows = list(csv.DictReader(path.open()))
    assert path.read_text().splitlines()[0] == "source,start_s,end_s,label,score"
    assert len(rows) == 4
    assert rows[0] == {
        "source": "a.wav",
        "start_s": "0.000",
        "end_s": "3.000",
        "label": "call",
        "score": "0.1235",
    }
    # Appending (live) does not repeat the header.
    again = ScoresCsvSink(path, append=True)
    again.close()
    assert path.read_text().count("source,start_s") == 1


def test_raven_table_per_source_loadable_as_a_selection_table(tmp_path):
    sink = RavenSink(tmp_path, low_hz=100.0, high_hz=8000.0)
    sink.on_event(event(2, start=10.0, end=13.5, peak=0.8, source="rec_01.mp3"))
    sink.on_event(event(1, start=2.0, end=5.0, peak=0.97, source="rec_01.mp3"))
    sink.on_source_end("rec_01.mp3")
    sink.on_source_end("quiet.wav")
    sink.on_source_end("other/rec_01.mp3")  # same name in another folder: its own table there
    sink.on_source_end("/abs/rec_01.mp3")  # a file given by itself: a suffix tells it apart
    table = tmp_path / "rec_01.callwatch.selections.txt"
    lines = table.read_text().splitlines()
    assert lines[0] == RAVEN_HEADER
    rows = list(csv.DictReader(lines, delimiter="\t"))
    assert [
        (r["Selection"], r["Begin Time (s)"], r["End Time (s)"], r["Species"], r["Score"])
        for r in rows
    ] == [("1", "2.000", "5.000", "call", "0.9700"), ("2", "10.000", "13.500", "call", "0.8000")]
    assert rows[0]["View"] == "Spectrogram 1" and rows[0]["Channel"] == "1"
    assert (tmp_path / "quiet.callwatch.selections.txt").read_text().splitlines() == [RAVEN_HEADER]
    assert (tmp_path / "other" / "rec_01.callwatch.selections.txt").is_file()
    assert (tmp_path / "rec_01-2.callwatch.selections.txt").is_file()


def test_file_names_cannot_break_a_table_or_forge_a_line():
    from device.sinks import csv_field, printable

    assert csv_field('a,b "c".wav') == '"a,b ""c"".wav"' and csv_field("plain.wav") == "plain.wav"
    assert list(csv.reader([csv_field("new\nline.wav") + ",1"])) == [["new\nline.wav", "1"]]
    assert printable("x\nERROR y\tz\\w") == "x\\nERROR y\\tz\\\\w"
    assert "\n" not in printable("a\r\nb\x1b[31m")


def test_raven_header_matches_the_real_data_sets_tables(tmp_path):
    tables = sorted((SHARED_DATA / "capuchin" / "selections").glob("*.txt"))
    if not tables:
        pytest.skip("../shared/data is absent")
    assert tables[0].read_text().splitlines()[0] == RAVEN_HEADER


def test_counts_csv_has_a_row_per_source_even_without_events(tmp_path):
    path = tmp_path / "counts.csv"
    sink = CountsCsvSink(str(path), labels=["call", "owl"])
    for e in (
        event(1, source="a.wav"),
        event(2, source="a.wav"),
        event(3, label="owl", source="a.wav"),
    ):
        sink.on_event(e)
    sink.on_source_end("a.wav")
    sink.on_source_end("b.wav")
    sink.close()
    assert path.read_text().splitlines() == ["source,site,call,owl", "a.wav,,2,1", "b.wav,,0,0"]


def test_log_sink_writes_one_line_per_event(caplog):
    with caplog.at_level(logging.INFO, logger="device.sinks"):
        LogSink().on_event(event(7, label="owl"))
    assert len(caplog.records) == 1 and "owl" in caplog.text and "seq 7" in caplog.text


def clip_sink(folder: Path, **overrides) -> ClipSink:
    settings = {"max_mb": 100.0, "max_age_days": 30.0, "min_free_mb": 0.0} | overrides
    return ClipSink(folder, **settings)


def test_clip_sink_writes_a_wav_per_event(tmp_path):
    sink = clip_sink(tmp_path / "clips")
    samples = np.sin(np.arange(16000) / 10).astype(np.float32) * 0.5
    sink.on_clip(event(1, label="call/owl?"), samples, 16000)
    [path] = list((tmp_path / "clips").iterdir())
    assert (
        path.suffix == ".wav"
        and "call_owl" in path.name
        and path.name.startswith("20261122T230000_500Z")
    )
    data, rate = soundfile.read(path, dtype="float32")
    assert rate == 16000 and len(data) == 16000
    np.testing.assert_allclose(data, samples, atol=1e-4)
    assert sink.written == 1


def test_clip_budget_deletes_the_oldest_clips_first(tmp_path):
    folder = tmp_path / "clips"
    sink = clip_sink(folder, max_mb=0.1)  # 104857 bytes: three 32 KB clips, not four
    clip = np.zeros(16000, np.float32)  # 1 s, 16-bit: 32 KB
    now = time.time()
    for seq in range(1, 6):
        sink.on_clip(event(seq), clip, 16000)
        written = next(folder.glob(f"*{seq:08x}.wav"))
        os.utime(written, (now - 100 + seq,) * 2)  # distinct ages, oldest = lowest seq
    sink.enforce_budget()
    left = sorted(p.name.split("_")[-1] for p in folder.iterdir())
    assert left == [f"{seq:08x}.wav" for seq in (3, 4, 5)] and sink.deleted == 2
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 0.1 * 2**20


def test_clip_budget_deletes_clips_older_than_max_age(tmp_path):
    folder = tmp_path / "clips"
    sink = clip_sink(folder, max_age_days=1.0)
    sink.on_clip(event(1), np.zeros(1600, np.float32), 16000)
    sink.on_clip(event(2), np.zeros(1600, np.float32), 16000)
    old = sorted(folder.iterdir())[0]
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    sink.enforce_budget()
    assert not old.exists() and len(list(folder.iterdir())) == 1


def test_clips_stop_when_free_disk_is_low_but_events_flow(tmp_path, caplog):
    folder = tmp_path / "clips"
    sink = clip_sink(folder, min_free_mb=1e12)  # more free space than any disk has
    events = Recorder()
    queue = SinkQueue([sink, events], maxsize=10, block=True).start()
    with caplog.at_level(logging.WARNING):
        queue.put_event(event(1))
        queue.put_clip(event(1), np.zeros(1600, np.float32), 16000)
        queue.close()
    assert list(folder.iterdir()) == []
    assert sink.skipped == 1 and [k for k, _ in events.calls] == ["event"]
    assert "min_free_mb" in caplog.text


def test_close_waits_for_a_slow_sink(tmp_path):
    slow = Recorder(delay_s=0.05)
    queue = SinkQueue([slow], maxsize=10, block=True).start()
    for seq in range(5):
        queue.put_event(event(seq))
    queue.close()
    assert len(slow.calls) == 5 and not any(t.name == "sinks" for t in threading.enumerate())
