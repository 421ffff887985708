"""The file and log sinks: events as JSON lines, window scores as CSV, Raven selection
tables (one per source), event counts per file (CSV), a log line per event; and the text
helpers every table writer uses (safe names, CSV and TSV fields).

Each is a :class:`device.events.Sink` fed by the sink thread (device/sinks/queue.py); none
of them locks anything, since only that thread calls them.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import sys
from pathlib import Path
from typing import IO, Any, TextIO

from device.events import Event, SinkBase, WindowScores
from device.names import safe_name as _safe_name

log = logging.getLogger("device.sinks")

RAVEN_LABEL_COLUMN = "Species"
"""Label column of the selection tables (the column train reads by default)."""
RAVEN_SUFFIX = ".callwatch.selections.txt"
SCORES_HEADER = "source,start_s,end_s,label,score\n"


def open_text(path: str, *, append: bool) -> tuple[TextIO, bool]:
    """(file, is_empty): '-' is stdout; parent folders are created."""
    if path == "-":
        return sys.stdout, False
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    f = open(target, "a" if append else "w", encoding="utf-8", newline="")
    return f, f.tell() == 0


class JsonlSink(SinkBase):
    """Events as JSON lines (device.events.Event.to_json), flushed per event.

    ``retry`` (live): a file that cannot be opened or written (disk full, read-only) is opened
    again at the next event; the failing event raises OSError (the sink queue reports it once
    and the other sinks go on). A line cut short by a full disk is ended before the next one.
    """

    storage_part = "events file"

    def __init__(self, path: str, *, append: bool = True, retry: bool = False) -> None:
        self._path = path
        self._file: TextIO | None = None
        try:
            self._file, _ = open_text(path, append=append)
        except OSError:
            if not retry:
                raise
            log.warning("events file %s cannot be opened now; trying again at each event", path)

    def on_event(self, event: Event) -> None:
        if self._file is None:
            self._file, _ = open_text(self._path, append=True)
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
            if f is not None:
                f.close()
        except OSError:
            pass

    def flush_position(self) -> tuple[str, int] | None:
        """(path, bytes written so far); None for stdout (replay's manifest)."""
        return None if self._file is None else file_position(self._file)

    def close(self) -> None:
        if self._file is None:
            return
        try:
            self._file.flush()
        finally:
            if self._file is not sys.stdout:
                self._discard()


class ScoresCsvSink(SinkBase):
    """``source,start_s,end_s,label,score``: a row per evaluated window and label."""

    wants_scores = True

    def __init__(self, path: str | Path, *, append: bool = False, header: bool = True) -> None:
        self._file, empty = open_text(str(path), append=append)
        if header and (empty or path == "-"):
            self._file.write(SCORES_HEADER)

    def on_scores(self, scores: WindowScores) -> None:
        source = csv_field(scores.source)
        for label, score in scores.scores.items():
            self._file.write(
                f"{source},{scores.start_s:.3f},{scores.end_s:.3f},{csv_field(label)},{score:.4f}\n"
            )

    def on_source_end(self, source: str) -> None:
        self._file.flush()

    def flush_position(self) -> tuple[str, int] | None:
        """(path, bytes written so far) after a flush; None for stdout (replay's manifest)."""
        return file_position(self._file)

    def close(self) -> None:
        self._file.flush()
        if self._file is not sys.stdout:
            self._file.close()


class RavenSink(SinkBase):
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
        self,
        folder: str | Path,
        *,
        low_hz: float,
        high_hz: float,
        paths: dict | None = None,
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
        return (
            f"{n}\tSpectrogram 1\t1\t{e.start_s:.3f}\t{e.end_s:.3f}\t{self._low:.1f}\t"
            f"{self._high:.1f}\t{tsv_field(e.label)}\t{e.peak_score:.4f}"
        )

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
        begin_path = f"\t{tsv_field(str(self._paths.get(source, '')))}" if self._paths else ""
        for i, e in enumerate(events, 1):
            rows.append(
                f"{i}\tSpectrogram 1\t1\t{e.start_s:.3f}\t{e.end_s:.3f}\t{self._low:.1f}\t"
                f"{self._high:.1f}\t{tsv_field(e.label)}\t{e.peak_score:.4f}{begin_path}"
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


class CountsCsvSink(SinkBase):
    """Events per label per source (the call-counting task): ``source,site,<label>,...``.

    ``sites``: source -> site (replay); a source not in it has an empty site.
    ``incremental`` (live): the file is replaced atomically after every event, so a power cut
    loses at most the open event (otherwise it is written at close)."""

    storage_part = "counts file"

    def __init__(
        self, path: str, *, labels: list[str], sites: dict | None = None, incremental: bool = False
    ) -> None:
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
        f, _ = open_text(self._path, append=False)
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


class LogSink(SinkBase):
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


def table_stem(source: str) -> str:
    """A per-source output name without suffix: the source's folders (relative sources only)
    and its stem, each reduced to safe characters (``SiteA/20240501_053000``)."""
    p = Path(source)
    parts = (
        []
        if p.is_absolute()
        else [_safe_name(x) or "_" for x in p.parent.parts if x not in ("", ".", "..")]
    )
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


def file_position(f: IO[Any]) -> tuple[str, int] | None:
    """(path, bytes written so far) after a flush; None for stdout."""
    if f is sys.stdout:
        return None
    f.flush()
    return f.name, f.tell()
