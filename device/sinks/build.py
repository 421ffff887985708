"""Which file sinks a run gets: the outputs section with command-line overrides -> sinks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from device.config import Config
from device.events import Sink
from device.sinks.clips import ClipSink
from device.sinks.files import CountsCsvSink, JsonlSink, LogSink, RavenSink, ScoresCsvSink


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
    cfg: Config,
    *,
    labels: list[str],
    low_hz: float,
    high_hz: float,
    append: bool,
    scores: bool = True,
    clips: bool = True,
    sites: dict[str, str | None] | None = None,
    paths: dict[str, Path] | None = None,
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
        sinks.append(
            RavenSink(
                outputs.raven_dir, low_hz=low_hz, high_hz=high_hz, paths=paths, incremental=live
            )
        )
    if outputs.counts_csv:
        sinks.append(
            CountsCsvSink(outputs.counts_csv, labels=labels, sites=sites, incremental=live)
        )
    if clips and outputs.clips_dir is not None:
        sinks.append(clip_sink(outputs.clips_dir, cfg))
    if outputs.log_events:
        sinks.append(LogSink())
    return sinks


def clip_sink(folder: Path, cfg: Config) -> ClipSink:
    """The clip sink of ``outputs.clips`` and ``service.min_free_mb`` (the whole config)."""
    c = cfg.outputs.clips
    return ClipSink(
        folder, max_mb=c.max_mb, max_age_days=c.max_age_days, min_free_mb=cfg.service.min_free_mb
    )
