"""Stage: events. Detections become :class:`device.events.Event` messages.

Contract: :meth:`EventFactory.make` turns one :class:`device.detector.Detection` (seconds from
the start of the source) into the event JSON's fields: id, sequence number, device, wall-clock
start (UTC ISO 8601, or None when unknown), open or closed. Not thread-safe: one owner, the
worker (the sequence it numbers from is not thread-safe either).
"""

from __future__ import annotations

import uuid

from device.clock import clock_synced, utc_iso
from device.detector import Detection
from device.events import CLOSED, OPEN, Event
from device.sequence import Sequence


class EventFactory:
    """Turns detections into :class:`Event` messages: id, sequence number, device, clocks.

    ``replay``: events of replayed files: marked ``replay``, their ids derived from the source,
    label, start and ``id_salt`` (the model), so analysing a file again gives the same ids
    (a resumed batch equals an uninterrupted one; a subscriber drops re-sent events)."""

    def __init__(
        self, *, device_id: str, sequence: Sequence, replay: bool = False, id_salt: str = ""
    ) -> None:
        self.device_id = device_id
        self.sequence = sequence
        self.replay = replay
        self.id_salt = id_salt

    def make(
        self,
        detection: Detection,
        *,
        source: str,
        t0_wall: float | None,
        t0_mono: float,
        site: str | None = None,
        time_source: str | None = "clock",
        opened: Event | None = None,
    ) -> Event:
        """t0_wall / t0_mono: wall-clock and monotonic time of the source's time 0 (t0_wall
        None: unknown, the event's start_utc is None). opened: the event this detection closes,
        as sent when it opened (the closing one keeps its id and seq)."""
        start_s = round(detection.start_s, 3)
        if opened is not None:
            event_id = opened.event_id
        elif self.replay:
            key = f"{self.id_salt}\0{self.device_id}\0{source}\0{detection.label}\0{start_s:.3f}"
            event_id = uuid.uuid5(uuid.NAMESPACE_URL, key).hex
        else:
            event_id = uuid.uuid4().hex
        return Event(
            event_id=event_id,
            seq=opened.seq if opened is not None else self.sequence.next(),
            device_id=self.device_id,
            label=detection.label,
            start_s=start_s,
            end_s=round(detection.end_s, 3),
            peak_score=round(float(detection.peak_score), 4),
            source=source,
            start_utc=None if t0_wall is None else utc_iso(t0_wall + detection.start_s),
            clock_synced=t0_wall is not None if self.replay else clock_synced(),
            mono_s=round(t0_mono + detection.start_s, 3),
            site=site,
            time_source=time_source if t0_wall is not None else None,
            replay=self.replay,
            state=CLOSED if detection.closed else OPEN,
        )
