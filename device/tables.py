"""Batch outputs of a replay, in the formats other tools read.

- :class:`RavenTableSink`: one Raven selection table for the whole batch, with ``Begin Path``
  and ``File Offset (s)`` (OpenSoundscape's and Raven's multi-file columns) and the recording
  time (``Begin Date``, ``Begin Clock Time``, UTC).
- :class:`DetectionsCsvSink`: a flat CSV, a row per event (``source,site,start_s,end_s,
  start_utc,end_utc,label,score``), as BirdNET-Analyzer's CSV output; opens in R and pandas.
- :class:`AudacitySink`: an Audacity label file per source (``start<TAB>end<TAB>label``).
- :class:`ActivitySink`: detections per site and label per hour of day and per date, with the
  hours of audio recorded in each (CSV; PNG plots where matplotlib is installed).

Each gets a source's events when the source ends (the replay parent hands over whole files
in file order), so the rows of a file are together and ordered by time. Sinks with
``restore()`` take the events of files a resumed replay finished before, without writing them.
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, TextIO

from device.events import Event, SinkBase
from device.recording import Recording
from device.sinks import (
    RAVEN_LABEL_COLUMN,
    file_position,
    open_text,
    table_stem,
    tsv_field,
)

log = logging.getLogger(__name__)

RAVEN_TABLE_COLUMNS = (
    "Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
    "High Freq (Hz)", "Begin Path", "File Offset (s)", "Begin File", "Begin Date",
    "Begin Clock Time", "Site", RAVEN_LABEL_COLUMN, "Score",
)
DETECTIONS_COLUMNS = ("source", "site", "start_s", "end_s", "start_utc", "end_utc", "label", "score")


def _iso(start: dt.datetime | None, offset_s: float) -> str:
    if start is None:
        return ""
    t = start + dt.timedelta(seconds=offset_s)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _ordered(events: list[Event]) -> list[Event]:
    return sorted(events, key=lambda e: (e.start_s, e.label, e.end_s))


class _PerSource(SinkBase):
    """Collects a source's events until it ends."""

    def __init__(self, recordings: dict[str, Recording]) -> None:
        self._recordings = recordings
        self._events: dict[str, list[Event]] = defaultdict(list)

    def on_event(self, event: Event) -> None:
        self._events[event.source].append(event)

    def _take(self, source: str) -> tuple[Recording | None, list[Event]]:
        return self._recordings.get(source), _ordered(self._events.pop(source, []))


class _OneFile(_PerSource):
    """A batch table in one file (``self._file``, opened by the subclass; '-' is stdout)."""

    _file: TextIO

    def flush_position(self) -> tuple[str, int] | None:
        return file_position(self._file)

    def close(self) -> None:
        if self._file is not sys.stdout:
            self._file.close()


class RavenTableSink(_OneFile):
    """The batch's selection table. ``Begin Time (s)`` counts from the start of the first file,
    the files laid end to end in batch order (Raven's multi-file convention); ``File Offset
    (s)`` is the time within the file named in ``Begin Path``."""

    def __init__(
        self, path: str, *, recordings: dict[str, Recording], low_hz: float, high_hz: float,
        append: bool = False,
    ) -> None:
        super().__init__(recordings)
        self._file, empty = open_text(path, append=append)
        self._low, self._high = low_hz, high_hz
        self._selection = 0
        self._elapsed_s = 0.0
        if empty:
            self._file.write("\t".join(RAVEN_TABLE_COLUMNS) + "\n")

    def restore(self, events: list[Event], source: str) -> None:
        self._selection += len(events)
        self._elapsed_s += self._duration(source)

    def _duration(self, source: str) -> float:
        rec = self._recordings.get(source)
        return rec.duration_s if rec else 0.0

    def on_source_end(self, source: str) -> None:
        rec, events = self._take(source)
        path = str(Path(rec.path).resolve()) if rec else source
        for e in events:
            self._selection += 1
            start = rec.start if rec else None
            when = _iso(start, e.start_s)
            self._file.write("\t".join((
                str(self._selection), "Spectrogram 1", "1", f"{self._elapsed_s + e.start_s:.3f}",
                f"{self._elapsed_s + e.end_s:.3f}", f"{self._low:.1f}", f"{self._high:.1f}",
                tsv_field(path), f"{e.start_s:.3f}", tsv_field(Path(path).name),
                when[:10], when[11:23], tsv_field(e.site or ""), tsv_field(e.label),
                f"{e.peak_score:.4f}",
            )) + "\n")
        self._elapsed_s += self._duration(source)
        self._file.flush()


class DetectionsCsvSink(_OneFile):
    """A row per event; times in UTC are empty where the recording's time is unknown."""

    def __init__(self, path: str, *, recordings: dict[str, Recording], append: bool = False) -> None:
        super().__init__(recordings)
        self._file, empty = open_text(path, append=append)
        self._writer = csv.writer(self._file, lineterminator="\n")
        if empty:
            self._writer.writerow(DETECTIONS_COLUMNS)

    def on_source_end(self, source: str) -> None:
        rec, events = self._take(source)
        start = rec.start if rec else None
        for e in events:
            self._writer.writerow((
                e.source, e.site or "", f"{e.start_s:.3f}", f"{e.end_s:.3f}",
                _iso(start, e.start_s), _iso(start, e.end_s), e.label, f"{e.peak_score:.4f}",
            ))
        self._file.flush()


class AudacitySink(_PerSource):
    """``<folder>/<source folder>/<stem>.txt``: Audacity's label track format (start, end and
    label, tab-separated, seconds); a source without events gets an empty file."""

    def __init__(self, folder: str, *, recordings: dict[str, Recording]) -> None:
        super().__init__(recordings)
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def on_source_end(self, source: str) -> None:
        _, events = self._take(source)
        target = self.folder / (table_stem(source) + ".txt")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(
            "".join(f"{e.start_s:.3f}\t{e.end_s:.3f}\t{tsv_field(e.label)}\n" for e in events),
            encoding="utf-8",
        )


class ActivitySink(SinkBase):
    """Diel and seasonal activity: detections and recorded hours per site, label and hour of
    day (UTC), and per date (UTC). Files whose recording time is unknown are counted apart.

    Writes ``activity_by_hour.csv`` and ``activity_by_date.csv`` (``site,label,hour|date,
    detections,recorded_h,per_hour``) and, with matplotlib, ``activity_by_hour.png`` (a diel
    chart) and ``activity_by_date.png`` (a daily series), one line per site and label.
    """

    def __init__(self, folder: str, *, recordings: dict[str, Recording], labels: list[str]) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._recordings = recordings
        self._labels = list(labels)
        self._hour: dict[tuple, int] = defaultdict(int)
        self._date: dict[tuple, int] = defaultdict(int)
        self._hour_h: dict[tuple, float] = defaultdict(float)
        self._date_h: dict[tuple, float] = defaultdict(float)
        self.undated_files = 0

    def restore(self, events: list[Event], source: str) -> None:
        for e in events:
            self.on_event(e)
        self.on_source_end(source)

    def on_event(self, event: Event) -> None:
        rec = self._recordings.get(event.source)
        if rec is None or rec.start is None:
            return
        t = rec.start + dt.timedelta(seconds=event.start_s)
        site = event.site or ""
        self._hour[(site, event.label, t.hour)] += 1
        self._date[(site, event.label, t.date().isoformat())] += 1

    def on_source_end(self, source: str) -> None:
        rec = self._recordings.get(source)
        if rec is None or rec.start is None:
            self.undated_files += 1
            return
        site = rec.site or ""
        t, end = rec.start, rec.start + dt.timedelta(seconds=rec.duration_s)
        while t < end:  # split the recording at hour boundaries
            step = min(end, t.replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=1))
            hours = (step - t).total_seconds() / 3600
            self._hour_h[(site, t.hour)] += hours
            self._date_h[(site, t.date().isoformat())] += hours
            t = step

    def _rows(self, counts: dict, hours: dict) -> list[tuple]:
        rows = []
        for (site, key), recorded in sorted(hours.items()):
            for label in self._labels:
                n = counts.get((site, label, key), 0)
                rows.append((site, label, key, n, f"{recorded:.4f}",
                             f"{n / recorded:.3f}" if recorded > 0 else ""))
        return rows

    def close(self) -> None:
        for name, counts, hours, column in (
            ("activity_by_hour", self._hour, self._hour_h, "hour"),
            ("activity_by_date", self._date, self._date_h, "date"),
        ):
            rows = self._rows(counts, hours)
            with open(self.folder / f"{name}.csv", "w", encoding="utf-8", newline="") as f:
                writer = csv.writer(f, lineterminator="\n")
                writer.writerow(("site", "label", column, "detections", "recorded_h", "per_hour"))
                writer.writerows(rows)
            if rows:
                plot_activity(rows, self.folder / f"{name}.png", column=column)


def plot_activity(rows: list[tuple], path: Path, *, column: str) -> bool:
    """Detections per recorded hour, a line per site and label; False (one log line) without
    matplotlib, which is a workstation-only dependency."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (workstation profile): %s not drawn", path.name)
        return False
    series: dict[tuple, list] = defaultdict(list)
    for site, label, key, _, _, rate in rows:
        series[(site, label)].append((key, float(rate) if rate else 0.0))
    fig, ax = plt.subplots(figsize=(9, 4))
    for (site, label), points in sorted(series.items()):
        xs: list[Any] = [dt.date.fromisoformat(k) if column == "date" else k for k, _ in points]
        ax.plot(xs, [v for _, v in points], marker="o", label=f"{site or '(no site)'} {label}")
    ax.set_xlabel("hour of day (UTC)" if column == "hour" else "date (UTC)")
    ax.set_ylabel("detections per recorded hour")
    if column == "hour":
        ax.set_xticks(range(0, 24, 2))
        ax.set_xlim(-0.5, 23.5)
    else:
        fig.autofmt_xdate()
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
