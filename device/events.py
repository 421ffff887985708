"""What leaves the pipeline: detection events, window scores, and the sink interface.

The JSON keys of :class:`Event` are an API (JSONL files, MQTT payloads, dashboards):
``tests/test_contract.py`` freezes them. Add keys only with a new ``schema`` number.
Schema 2 added ``site``, ``time_source`` and ``replay``, and lets ``start_utc`` be null (a
replayed recording whose time is unknown).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

EVENT_SCHEMA = 3
"""2 added site, time_source and replay; 3 added ``state``: an event is sent when it opens and
again when it closes."""
OPEN, CLOSED = "open", "closed"


@dataclass(frozen=True)
class Event:
    """One detection: where a call of one label is, from the windows of the model that saw it.

    The MQTT sink sends it twice, with the same ``event_id`` and ``seq``: when it opens
    (``state`` "open": start known, end and peak so far) and when it closes (``state``
    "closed": the final start, end and peak). Files (JSONL, Raven, counts) keep closed ones."""

    event_id: str
    """Unique id (UUID4 hex); a subscriber drops repeats of an id that QoS 1 may deliver."""
    seq: int
    """Per-device sequence number, increasing by one per event (persisted across restarts)."""
    device_id: str
    """Recorder that made the detection (service.device_id or the host name)."""
    label: str
    """Model label detected."""
    start_s: float
    """Start, seconds from the start of the source (file or microphone session)."""
    end_s: float
    """End, seconds from the start of the source."""
    peak_score: float
    """Highest (smoothed) probability of the label within the event, 0..1."""
    source: str
    """Replay: the file's path relative to the replay root (absolute for a file given by
    itself); live: the microphone name."""
    start_utc: str | None
    """Start, ISO 8601 UTC with milliseconds (e.g. 2026-11-22T23:00:00.500Z): live, the wall
    clock; replay, the recording's start (see time_source) plus start_s, None when unknown."""
    clock_synced: bool
    """Live: whether the system clock was NTP-synchronised when the event was made; if false,
    start_utc may be wrong (a Pi without a real-time clock before it reached a time server).
    Replay: whether the recording's time is known."""
    mono_s: float
    """Monotonic clock at the event start, seconds (orders events even when start_utc is
    wrong); replay: equal to start_s."""
    site: str | None = None
    """Replay: the recorder's site, from the path (replay.site_pattern); live: None."""
    time_source: str | None = "clock"
    """Where start_utc comes from: 'clock' (live), 'given' (--start-time), 'guano',
    'audiomoth' (the WAV comment), 'filename'; None when the recording's time is unknown."""
    replay: bool = False
    """True for events of a replayed file: never a detection happening now."""
    state: str = CLOSED
    """"open": the call is going on (sent at onset; end_s and peak_score so far); "closed":
    finished, with its final extent and peak."""
    schema: int = EVENT_SCHEMA

    @property
    def closed(self) -> bool:
        return self.state == CLOSED

    def to_dict(self) -> dict:
        data = asdict(self)
        return {"schema": data.pop("schema"), **data}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Event:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class WindowScores:
    """The model's probabilities for one window."""

    source: str
    start_s: float
    """Window start, seconds from the start of the source."""
    end_s: float
    scores: dict[str, float]
    """label -> probability, 0..1 (sigmoid of the dequantized logit)."""


class Sink(Protocol):
    """Where events, scores and clips go: the one seam between the pipeline and its outputs.

    Thread: every method is called from the sink thread only (device.sinks.SinkQueue), never
    the audio path; ``restore`` and ``flush_position`` from the batch loop (device/batch.py)
    while the sink thread is idle (before it starts, or after ``SinkQueue.drain``). So a sink
    needs no lock of its own for what these methods touch.

    Blocking: a sink may be slow (disk, network) and may block; the queue in front of it
    absorbs that. It must not raise for a transient failure it can ride out (log and keep the
    event, as the MQTT outbox does) and must not drop an event silently. An ``OSError`` (disk
    full, read-only) pauses that output only: the queue reports it once per episode under
    ``storage_part`` and delivers to the other sinks.

    Times are seconds from the start of the source; scores are probabilities, 0..1.
    :class:`SinkBase` gives the no-op default of every member.
    """

    @property
    def wants_scores(self) -> bool:
        """Whether ``on_scores`` does anything: when no sink wants scores, the worker does not
        make them."""

    @property
    def wants_open_events(self) -> bool:
        """Whether ``on_event`` also receives events as they open (``state`` "open"); sinks
        without it receive closed events only."""

    @property
    def storage_part(self) -> str:
        """What this sink writes, in words (``"clips"``, ``"events file"``): the name under
        which a failing disk is reported (device.health.Degradations)."""

    def on_event(self, event: Event) -> None:
        """One event: closed, or also open ones for a sink that ``wants_open_events``."""

    def on_scores(self, scores: WindowScores) -> None:
        """One evaluated window (only called usefully when ``wants_scores``)."""

    def on_clip(self, event: Event, samples: NDArray[np.float32], sample_rate: int) -> None:
        """The audio of one closed event with its pre- and post-roll: mono float32 samples in
        -1..1, shape (n,), at ``sample_rate`` Hz. The array is the sink's to keep (a copy)."""

    def on_source_end(self, source: str) -> None:
        """A source (replayed file, microphone session) ended: write per-source outputs."""

    def restore(self, events: list[Event], source: str) -> None:
        """A resumed replay: the closed events of a file an earlier run finished, to count in
        batch-wide outputs without writing them again (device/batch.py)."""

    def flush_position(self) -> tuple[str, int] | None:
        """(path, bytes written so far) of the one file this sink appends to, after a flush,
        so a resumed replay can cut it back (device/manifest.py); None when there is none (or
        it is stdout)."""

    def close(self) -> None:
        """Flush and release everything; called once at shutdown."""


class SinkBase:
    """The no-op default of every :class:`Sink` member: a sink overrides what it writes."""

    wants_scores: bool = False
    wants_open_events: bool = False

    @property
    def storage_part(self) -> str:
        return type(self).__name__

    def on_event(self, event: Event) -> None:
        pass

    def on_scores(self, scores: WindowScores) -> None:
        pass

    def on_clip(self, event: Event, samples: NDArray[np.float32], sample_rate: int) -> None:
        pass

    def on_source_end(self, source: str) -> None:
        pass

    def restore(self, events: list[Event], source: str) -> None:
        pass

    def flush_position(self) -> tuple[str, int] | None:
        return None

    def close(self) -> None:
        pass
