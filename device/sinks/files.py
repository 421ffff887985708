"""Where events go: a bounded queue and one thread in front of every sink.

The worker only puts messages into :class:`SinkQueue`; a single sink thread calls the sinks,
so a slow disk or broker never stalls the audio. Live, a full queue drops (and counts) rather
than blocks: window scores first (they only use the half of the queue that events leave
free), events only when the whole queue is full. Replay blocks instead, since there is no
audio to lose.

Sinks here: events as JSON lines, window scores as CSV, Raven selection tables (one per
source), event counts per file (CSV), WAV clips of events with a disk budget, a log line
per event. The MQTT sink lives in device/mqtt.py and implements the same protocol.
"""

from __future__ import annotations

import csv
import errno
import io
import logging
import os
import queue
import re
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from device.events import Event, Sink, WindowScores

log = logging.getLogger(__name__)

_STOP = object()
RAVEN_LABEL_COLUMN = "Species"
"""Label column of the selection tables (the column train reads by default)."""
RAVEN_SUFFIX = ".callwatch.selections.txt"
SCORES_HEADER = "source,start_s,end_s,label,score\n"


class SinkQueue:
    """Bounded queue plus the thread that feeds the sinks. Put from one thread (the worker).

    ``block=False`` (live): never waits; ``block=True`` (replay): waits for room.
    """

    def __init__(self, sinks: list[Sink], *, maxsize: int, block: bool, health=None) -> None:
        self.sinks = list(sinks)
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self._block = block
        self._health = health
        self._thread = threading.Thread(target=self._run, name="sinks", daemon=True)
        self.wants_scores = any(getattr(s, "wants_scores", False) for s in self.sinks)
        """False when no sink writes scores: the worker then skips making them."""
        self.sink_errors = 0

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> SinkQueue:
        self._thread.start()
        return self

    def put_event(self, event: Event) -> bool:
        return self._put(("event", event), reserve=0)

    def put_scores(self, scores: WindowScores) -> bool:
        return self._put(("scores", scores), reserve=self._queue.maxsize // 2)

    def put_source_end(self, source: str) -> bool:
        return self._put(("source_end", source), reserve=0)

    def put_clip(self, event: Event, samples: np.ndarray, sample_rate: int) -> bool:
        return self._put(("clip", (event, samples, sample_rate)), reserve=0)

    def _put(self, item: tuple, *, reserve: int) -> bool:
        if self._block:
            self._queue.put(item)
            return True
        if reserve and self._queue.qsize() >= self._queue.maxsize - reserve:
            self._count_drop(item[0])
            return False
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            self._count_drop(item[0])
            return False

    def _count_drop(self, kind: str) -> None:
        if self._health is None:
            return
        if kind == "scores":
            self._health.dropped_scores += 1
        else:
            self._health.dropped_events += 1
            log.warning("sink queue full: %s dropped (sinks are too slow)", kind)

    def drain(self) -> None:
        """Wait until the sink thread has handled everything queued so far."""
        self._queue.join()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                self._queue.task_done()
                return
            try:
                self._dispatch(*item)
            finally:
                self._queue.task_done()

    def _dispatch(self, kind: str, payload) -> None:
        for sink in self.sinks:
            try:
                if kind == "event":
                    if payload.closed or getattr(sink, "wants_open_events", False):
                        sink.on_event(payload)
                elif kind == "scores":
                    sink.on_scores(payload)
                elif kind == "source_end":
                    sink.on_source_end(payload)
                elif kind == "clip" and hasattr(sink, "on_clip"):
                    sink.on_clip(*payload)
            except OSError as exc:
                # The disk is full or read-only: this output pauses, the others go on. Logged
                # once per episode (health.storage), not per event.
                self.sink_errors += 1
                part = getattr(sink, "storage_part", type(sink).__name__)
                if self._health is not None:
                    self._health.storage.failed(part, exc, fallback="its output is skipped")
                else:
                    log.warning("%s failed on %s: %s", type(sink).__name__, kind, exc)
            except Exception as exc:  # one broken sink must not silence the others
                self.sink_errors += 1
                log.warning("%s failed on %s: %s", type(sink).__name__, kind, exc)
            else:
                if self._health is not None and _writes(sink, kind):
                    self._health.storage.ok(getattr(sink, "storage_part", type(sink).__name__))

    def close(self) -> None:
        """Deliver everything queued, then close every sink (flushes files)."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:
                log.warning("%s failed to close: %s", type(sink).__name__, exc)


_METHODS = {"event": "on_event", "scores": "on_scores", "source_end": "on_source_end",
            "clip": "on_clip"}


def _writes(sink, kind: str) -> bool:
    """Whether ``sink`` does real work for ``kind`` (not a no-op of the protocol): only then
    does its success say its storage works again."""
    method = getattr(type(sink), _METHODS[kind], None)
    return method is not None and method is not getattr(_BaseSink, _METHODS[kind], None)


class _BaseSink:
    """Default no-op methods of the Sink protocol."""

    wants_scores = False
    wants_open_events = False

    def on_event(self, event: Event) -> None:
        pass

    def on_scores(self, scores: WindowScores) -> None:
        pass

    def on_source_end(self, source: str) -> None:
        pass

    def close(self) -> None:
        pass


def _open_text(path: str, *, append: bool) -> tuple[io.TextIOBase, bool]:
    """(file, is_empty): '-' is stdout; parent folders are created."""
    if path == "-":
        return sys.stdout, False
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    f = open(target, "a" if append else "w", encoding="utf-8", newline="")
    return f, f.tell() == 0


class JsonlSink(_BaseSink):
    """Events as JSON lines (device.events.Event.to_json), flushed per event.

    ``retry`` (live): a file that cannot be opened or written (disk full, read-only) is opened
    again at the next event; the failing event raises OSError (the sink queue reports it once
    and the other sinks go on). A line cut short by a full disk is ended before the next one.
    """

    storage_part = "events file"

    def __init__(self, path: str, *, append: bool = True, retry: bool = False) -> None:
        self._path = path
        self._file: io.TextIOBase | None = None
        try:
            self._file, _ = _open_text(path, append=append)
        except OSError:
            if not retry:
                raise
            log.warning("events file %s cannot be opened now; trying again at each event", path)

    def on_event(self, event: Event) -> None:
        if self._file is None:
            self._file, _ = _open_text(self._path, append=True)
            if self._file is not sys.stdout and self._file.tell() > 0:
                with open(self._path, "rb") as f:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        self._file.write("\n")
        try:
            self._file.write(event.to_json() + "\n")
            self._file.flush()
        except OSError:
            if self._file is not sys.stdout:
                self._discard()
            raise

    def _discard(self) -> None:
        """Drop the file and whatever its buffer could not write (reopened at the next event)."""
        f, self._file = self._file, None
        try:
            f.close()
        except OSError:
            pass

    def flush_position(self) -> tuple[str, int] | None:
        """(path, bytes written so far); None for stdout (replay's manifest)."""
        return _position(self._file)

    def close(self) -> None:
        if self._file is None:
            return
        try:
            self._file.flush()
        finally:
            if self._file is not sys.stdout:
                self._discard()


class ScoresCsvSink(_BaseSink):
    """``source,start_s,end_s,label,score``: a row per evaluated window and label."""

    wants_scores = True

    def __init__(self, path: str | Path, *, append: bool = False, header: bool = True) -> None:
        self._file, empty = _open_text(str(path), append=append)
        if header and (empty or path == "-"):
            self._file.write(SCORES_HEADER)

    def on_scores(self, scores: WindowScores) -> None:
        source = csv_field(scores.source)
        for label, score in scores.scores.items():
            self._file.write(
                f"{source},{scores.start_s:.3f},{scores.end_s:.3f},{csv_field(label)},"
                f"{score:.4f}\n"
            )

    def on_source_end(self, source: str) -> None:
        self._file.flush()

    def flush_position(self) -> tuple[str, int] | None:
        """(path, bytes written so far) after a flush; None for stdout (replay's manifest)."""
        return _position(self._file)

    def close(self) -> None:
        self._file.flush()
        if self._file is not sys.stdout:
            self._file.close()


class RavenSink(_BaseSink):
    """One Raven Pro selection table per source: ``<stem>.callwatch.selections.txt``, in the
    source's own subfolder (``SiteA/20240501_053000.WAV`` -> ``SiteA/20240501_053000...``), so
    two recorders' files of one name keep two tables.

    Tab-separated, events as selections on channel 1 of "Spectrogram 1", the label in the
    Species column, spanning the front end's frequency range. In replay (``paths``: source ->
    file) a last column ``Begin Path`` names the audio, so the table finds its file again
    (Raven, OpenSoundscape, ``train.hard_negatives``). A source without events gets a table with the
    header only, so every analysed file has one.
    """

    storage_part = "Raven tables"

    def __init__(
        self, folder: str | Path, *, low_hz: float, high_hz: float, paths: dict | None = None,
        incremental: bool = False,
    ) -> None:
        """``incremental`` (live): each event is appended to its table and flushed as it
        comes, so a power cut loses at most the open event; a table that exists (an earlier
        session of the same microphone) is continued. Otherwise (replay) a table is written
        whole, sorted by time, when its source ends."""
        self.folder = Path(folder)
        self._paths = dict(paths or {})
        self._incremental = incremental
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            if not incremental:
                raise
        self._low, self._high = low_hz, high_hz
        self._events: dict[str, list[Event]] = {}
        self._written: set[str] = set()
        self._next_selection: dict[str, int] = {}

    def on_event(self, event: Event) -> None:
        if not self._incremental:
            self._events.setdefault(event.source, []).append(event)
            return
        name = self._table_name(event.source)
        path = self.folder / name
        if name not in self._next_selection:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._next_selection[name] = _count_rows(path) + 1
        n = self._next_selection[name]
        with open(path, "a", encoding="utf-8") as f:
            if f.tell() == 0:
                f.write(_RAVEN_HEADER + "\n")
            f.write(self._row(n, event) + "\n")
        self._next_selection[name] = n + 1

    def _table_name(self, source: str) -> str:
        return table_stem(source) + RAVEN_SUFFIX

    def _row(self, n: int, e: Event) -> str:
        return (f"{n}\tSpectrogram 1\t1\t{e.start_s:.3f}\t{e.end_s:.3f}\t{self._low:.1f}\t"
                f"{self._high:.1f}\t{tsv_field(e.label)}\t{e.peak_score:.4f}")

    def on_source_end(self, source: str) -> None:
        if self._incremental:
            name = self._table_name(source)
            if name not in self._next_selection:  # a session without events: header only
                path = self.folder / name
                path.parent.mkdir(parents=True, exist_ok=True)
                if not path.exists():
                    path.write_text(_RAVEN_HEADER + "\n", encoding="utf-8")
            return
        events = sorted(self._events.pop(source, []), key=lambda e: (e.start_s, e.label))
        stem = table_stem(source)
        name, n = stem + RAVEN_SUFFIX, 1
        while name in self._written:  # two files with one stem in different folders
            n += 1
            name = f"{stem}-{n}{RAVEN_SUFFIX}"
        self._written.add(name)
        rows = [_RAVEN_HEADER + ("\tBegin Path" if self._paths else "")]
        path = f"\t{tsv_field(str(self._paths.get(source, '')))}" if self._paths else ""
        for i, e in enumerate(events, 1):
            rows.append(
                f"{i}\tSpectrogram 1\t1\t{e.start_s:.3f}\t{e.end_s:.3f}\t{self._low:.1f}\t"
                f"{self._high:.1f}\t{tsv_field(e.label)}\t{e.peak_score:.4f}{path}"
            )
        target = self.folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("\n".join(rows) + "\n", encoding="utf-8")


_RAVEN_HEADER = "\t".join(
    (
        "Selection",
        "View",
        "Channel",
        "Begin Time (s)",
        "End Time (s)",
        "Low Freq (Hz)",
        "High Freq (Hz)",
        RAVEN_LABEL_COLUMN,
        "Score",
    )
)


def _count_rows(path: Path) -> int:
    """Selections already in a table (lines after the header); 0 when there is none."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return max(0, sum(1 for line in f if line.strip()) - 1)
    except FileNotFoundError:
        return 0


class CountsCsvSink(_BaseSink):
    """Events per label per source (the call-counting task): ``source,site,<label>,...``.

    ``sites``: source -> site (replay); a source not in it has an empty site.
    ``incremental`` (live): the file is replaced atomically after every event, so a power cut
    loses at most the open event (otherwise it is written at close)."""

    storage_part = "counts file"

    def __init__(self, path: str, *, labels: list[str], sites: dict | None = None,
                 incremental: bool = False) -> None:
        self._path = path
        self._labels = list(labels)
        self._sites = dict(sites or {})
        self._counts: dict[str, dict[str, int]] = {}
        self._incremental = incremental and path != "-"

    def restore(self, events: list[Event], source: str) -> None:
        """A file a resumed replay finished before (device/batch.py)."""
        for event in events:
            self.on_event(event)
        self.on_source_end(source)

    def on_event(self, event: Event) -> None:
        counts = self._counts.setdefault(event.source, dict.fromkeys(self._labels, 0))
        counts[event.label] = counts.get(event.label, 0) + 1
        if self._incremental:
            self._replace()

    def on_source_end(self, source: str) -> None:
        self._counts.setdefault(source, dict.fromkeys(self._labels, 0))

    def _replace(self) -> None:
        target = Path(self._path)
        tmp = target.with_name(target.name + ".part")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                self._write(f)
            tmp.replace(target)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise

    def close(self) -> None:
        if self._incremental:
            self._replace()
            return
        f, _ = _open_text(self._path, append=False)
        self._write(f)
        if f is not sys.stdout:
            f.close()

    def _write(self, f) -> None:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["source", "site", *self._labels])
        for source, counts in self._counts.items():
            writer.writerow(
                [source, self._sites.get(source) or "", *(counts[label] for label in self._labels)]
            )


class LogSink(_BaseSink):
    """One INFO log line per event."""

    def on_event(self, event: Event) -> None:
        log.info(
            "event %s %.2f-%.2f s peak %.3f in %s (seq %d)",
            printable(event.label),
            event.start_s,
            event.end_s,
            event.peak_score,
            printable(event.source),
            event.seq,
        )


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def table_stem(source: str) -> str:
    """A per-source output name without suffix: the source's folders (relative sources only)
    and its stem, each reduced to safe characters (``SiteA/20240501_053000``)."""
    p = Path(source)
    parts = [] if p.is_absolute() else [
        _safe_name(x) or "_" for x in p.parent.parts if x not in ("", ".", "..")
    ]
    return "/".join([*parts, _safe_name(p.stem) or "source"])


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\\n``, ``\\x1b``): a file name with a
    newline cannot forge a log line or a table row."""
    if not _CONTROL.search(text):
        return text
    return _CONTROL.sub(lambda m: repr(m.group(0))[1:-1], text.replace("\\", "\\\\"))


def csv_field(text: str) -> str:
    """One CSV field (RFC 4180): quoted when it holds a comma, quote or line break."""
    if any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def tsv_field(text: str) -> str:
    """One field of a tab-separated table (Raven, Audacity), which has no quoting: tabs and
    line breaks escaped as in :func:`printable`."""
    return printable(text)


def _position(f) -> tuple[str, int] | None:
    if f is sys.stdout:
        return None
    f.flush()
    return f.name, f.tell()


class ClipSink(_BaseSink):
    """Writes a 16-bit WAV per event and keeps the clip folder within its budget.

    Budget: clips older than ``max_age_days`` are deleted, then the oldest ones until the
    folder holds at most ``max_mb``. Below ``min_free_mb`` of free disk no clip is written
    (counted in ``skipped``); events still flow to the other sinks.
    """

    storage_part = "clips"

    def __init__(
        self, folder: str | Path, *, max_mb: float, max_age_days: float, min_free_mb: float
    ) -> None:
        self.folder = Path(folder)
        self._max_bytes = max_mb * 2**20
        self._max_age_s = max_age_days * 86400.0
        self._min_free_bytes = min_free_mb * 2**20
        self.written = 0
        self.skipped = 0
        self.deleted = 0
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.enforce_budget()
        except OSError as exc:  # read-only at start: clips wait, detection does not
            log.warning("clip folder %s cannot be prepared now (%s); trying again at each clip",
                        self.folder, exc.strerror or exc)

    def on_clip(self, event: Event, samples: np.ndarray, sample_rate: int) -> None:
        """Raises OSError when the clip cannot be written (free disk below
        service.min_free_mb, full, read-only): counted in ``skipped``."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(self.folder).free
            if free < self._min_free_bytes:
                raise OSError(errno.ENOSPC, "free disk below service.min_free_mb")
            stamp = re.sub(r"[-:]", "", event.start_utc).replace(".", "_")
            name = f"{stamp}_{_safe_name(event.label)}_{event.event_id[:8]}.wav"
            tmp = self.folder / (name + ".part")
            try:
                soundfile.write(
                    tmp, np.clip(samples, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV"
                )
                tmp.replace(self.folder / name)
            except (OSError, RuntimeError) as exc:  # soundfile raises LibsndfileError
                try:
                    tmp.unlink(missing_ok=True)
                except OSError:
                    pass
                if isinstance(exc, OSError):
                    raise
                raise OSError(errno.EIO, f"cannot write {tmp.name}: {exc}") from None
        except OSError:
            self.skipped += 1
            raise
        self.written += 1
        self.enforce_budget()

    def enforce_budget(self, *, now: float | None = None) -> None:
        now = time.time() if now is None else now
        clips = []
        # A clip cut short (a kill or power cut while writing) is never finished: remove it.
        for part in self.folder.glob("*.wav.part"):
            try:
                part.unlink()
                self.deleted += 1
            except FileNotFoundError:
                pass
        for path in self.folder.glob("*.wav"):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            clips.append((st.st_mtime, st.st_size, path))
        clips.sort()
        total = sum(size for _, size, _ in clips)
        for mtime, size, path in clips:
            if now - mtime <= self._max_age_s and total <= self._max_bytes:
                break
            try:
                os.unlink(path)
                self.deleted += 1
            except FileNotFoundError:
                pass
            total -= size


@dataclass(frozen=True)
class Outputs:
    """Where the file sinks write: the config's outputs section with command-line overrides."""

    events_jsonl: str | None = None
    scores_csv: str | None = None
    raven_dir: str | None = None
    counts_csv: str | None = None
    raven_table: str | None = None
    """Replay: one selection table for the batch (device/tables.py)."""
    detections_csv: str | None = None
    """Replay: a CSV row per event (device/tables.py)."""
    audacity_dir: str | None = None
    """Replay: an Audacity label file per source."""
    activity_dir: str | None = None
    """Replay: activity per site and label per hour of day and date (CSV, PNG)."""
    clips_dir: Path | None = None
    """None: no clips."""
    log_events: bool = True


def build_sinks(
    outputs: Outputs,
    cfg,
    *,
    labels: list[str],
    low_hz: float,
    high_hz: float,
    append: bool,
    scores: bool = True,
    clips: bool = True,
    sites: dict | None = None,
    paths: dict | None = None,
    live: bool = False,
) -> list[Sink]:
    """The file and log sinks ``outputs`` asks for. ``append``: live appends to the JSONL and
    CSV files, replay writes them afresh. ``scores`` / ``clips``: False where another process
    writes those (replay with --jobs). ``sites`` / ``paths``: source -> site / absolute file
    (replay). ``live``: Raven tables and counts are written as events come, and the events
    file, tables and clips try again at each event when they cannot be written, so a full or
    read-only disk (also at start) does not stop detection. Raises OSError for a file or
    folder it cannot create (replay)."""
    sinks: list[Sink] = []
    if outputs.events_jsonl:
        sinks.append(JsonlSink(outputs.events_jsonl, append=append, retry=live))
    if scores and outputs.scores_csv:
        sinks.append(ScoresCsvSink(outputs.scores_csv, append=append))
    if outputs.raven_dir:
        sinks.append(RavenSink(outputs.raven_dir, low_hz=low_hz, high_hz=high_hz, paths=paths,
                               incremental=live))
    if outputs.counts_csv:
        sinks.append(CountsCsvSink(outputs.counts_csv, labels=labels, sites=sites,
                                   incremental=live))
    if clips and outputs.clips_dir is not None:
        sinks.append(clip_sink(outputs.clips_dir, cfg))
    if outputs.log_events:
        sinks.append(LogSink())
    return sinks


def clip_sink(folder: Path, cfg) -> ClipSink:
    c = cfg.outputs.clips
    return ClipSink(
        folder, max_mb=c.max_mb, max_age_days=c.max_age_days, min_free_mb=cfg.service.min_free_mb
    )
