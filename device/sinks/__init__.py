"""Where events go: a bounded queue and one thread in front of every sink.

- ``queue.py``: :class:`SinkQueue`, the messages the worker puts and the sink thread that
  hands them to every :class:`device.events.Sink`.
- ``files.py``: events as JSON lines, window scores as CSV, Raven tables, counts, a log line.
- ``clips.py``: a WAV per event within a disk budget.
- ``build.py``: the sinks an ``outputs`` section asks for.

The MQTT sink lives in device/mqtt/ and implements the same protocol.
"""

from device.sinks.build import Outputs, build_sinks, clip_sink
from device.sinks.clips import ClipSink
from device.sinks.files import (
    RAVEN_LABEL_COLUMN,
    RAVEN_SUFFIX,
    SCORES_HEADER,
    CountsCsvSink,
    JsonlSink,
    LogSink,
    RavenSink,
    ScoresCsvSink,
    csv_field,
    file_position,
    open_text,
    printable,
    table_stem,
    tsv_field,
)
from device.sinks.queue import SinkQueue

__all__ = [
    "RAVEN_LABEL_COLUMN",
    "RAVEN_SUFFIX",
    "SCORES_HEADER",
    "ClipSink",
    "CountsCsvSink",
    "JsonlSink",
    "LogSink",
    "Outputs",
    "RavenSink",
    "ScoresCsvSink",
    "SinkQueue",
    "build_sinks",
    "clip_sink",
    "csv_field",
    "file_position",
    "open_text",
    "printable",
    "table_stem",
    "tsv_field",
]
