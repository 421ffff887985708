"""The bounded queue and the one thread in front of every sink.

The worker (the audio worker live, the batch loop in replay) only puts messages into
:class:`SinkQueue`; a single sink thread calls the sinks, so a slow disk or broker never
stalls the audio. Live, a full queue drops (and counts) rather than blocks: window scores
first (they only use the half of the queue that events leave free), events only when the
whole queue is full. Replay blocks instead, since there is no audio to lose.

Each message is a frozen dataclass made by the worker thread and, once queued, owned by the
sink thread, which hands it to every sink (:meth:`Message.deliver`).
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from numpy.typing import NDArray

from device.events import Event, Sink, SinkBase, WindowScores

if TYPE_CHECKING:
    from device.health import Health

log = logging.getLogger("device.sinks")


@dataclass(frozen=True)
class EventMessage:
    """An event, open or closed. Made by the worker thread; the sink thread delivers it."""

    kind: ClassVar[str] = "event"
    event: Event

    def deliver(self, sink: Sink) -> bool:
        """Hand the event to ``sink`` if it takes it (open events only to those that want
        them); returns whether the sink wrote something (its storage is known to work)."""
        if not (self.event.closed or sink.wants_open_events):
            return False
        sink.on_event(self.event)
        return type(sink).on_event is not SinkBase.on_event


@dataclass(frozen=True)
class ScoresMessage:
    """The scores of one window. Made by the worker thread; the sink thread delivers it."""

    kind: ClassVar[str] = "scores"
    scores: WindowScores

    def deliver(self, sink: Sink) -> bool:
        sink.on_scores(self.scores)
        return type(sink).on_scores is not SinkBase.on_scores


@dataclass(frozen=True)
class SourceEndMessage:
    """A source (file, microphone session) ended. Made by the worker thread; the sink thread
    delivers it."""

    kind: ClassVar[str] = "source_end"
    source: str
    """The source's name as in Event.source."""

    def deliver(self, sink: Sink) -> bool:
        sink.on_source_end(self.source)
        return type(sink).on_source_end is not SinkBase.on_source_end


@dataclass(frozen=True, eq=False)  # never compared: an array has no single truth value
class ClipMessage:
    """The audio of one event. Made by the worker thread from a copy of the ring buffer; the
    array belongs to the sink thread once queued (nobody writes into it)."""

    kind: ClassVar[str] = "clip"
    event: Event
    samples: NDArray[np.float32]
    """Mono, -1..1, shape (n,), pre- and post-roll included."""
    sample_rate: int
    """Hz."""

    def deliver(self, sink: Sink) -> bool:
        sink.on_clip(self.event, self.samples, self.sample_rate)
        return type(sink).on_clip is not SinkBase.on_clip


Message = EventMessage | ScoresMessage | SourceEndMessage | ClipMessage


@dataclass(frozen=True)
class _Stop:
    """close(): the sink thread ends after the messages queued before it."""


class SinkQueue:
    """Bounded queue plus the thread that feeds the sinks. Put from one thread (the worker).

    ``block=False`` (live): never waits; ``block=True`` (replay): waits for room.
    ``health``: where drops and storage failures are counted, or None (logged only).
    """

    def __init__(
        self, sinks: list[Sink], *, maxsize: int, block: bool, health: Health | None = None
    ) -> None:
        self.sinks = list(sinks)
        self._queue: queue.Queue[Message | _Stop] = queue.Queue(maxsize=maxsize)
        self._block = block
        self._health = health
        self._thread = threading.Thread(target=self._run, name="sinks", daemon=True)
        self.wants_scores = any(s.wants_scores for s in self.sinks)
        """False when no sink writes scores: the worker then skips making them."""
        self.sink_errors = 0
        """Calls that raised (sink thread only)."""

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> SinkQueue:
        self._thread.start()
        return self

    def put_event(self, event: Event) -> bool:
        return self._put(EventMessage(event), reserve=0)

    def put_scores(self, scores: WindowScores) -> bool:
        return self._put(ScoresMessage(scores), reserve=self._queue.maxsize // 2)

    def put_source_end(self, source: str) -> bool:
        return self._put(SourceEndMessage(source), reserve=0)

    def put_clip(self, event: Event, samples: NDArray[np.float32], sample_rate: int) -> bool:
        return self._put(ClipMessage(event, samples, sample_rate), reserve=0)

    def _put(self, message: Message, *, reserve: int) -> bool:
        """Queue ``message``; False when it was dropped (live, no room)."""
        if self._block:
            self._queue.put(message)
            return True
        if reserve and self._queue.qsize() >= self._queue.maxsize - reserve:
            self._count_drop(message.kind)
            return False
        try:
            self._queue.put_nowait(message)
            return True
        except queue.Full:
            self._count_drop(message.kind)
            return False

    def _count_drop(self, kind: str) -> None:
        if self._health is None:
            return
        if kind == ScoresMessage.kind:
            self._health.dropped_scores += 1
        else:
            self._health.dropped_events += 1
            log.warning("sink queue full: %s dropped (sinks are too slow)", kind)

    def drain(self) -> None:
        """Wait until the sink thread has handled everything queued so far."""
        self._queue.join()

    def _run(self) -> None:
        while True:
            message = self._queue.get()
            try:
                if isinstance(message, _Stop):
                    return
                self._dispatch(message)
            finally:
                self._queue.task_done()

    def _dispatch(self, message: Message) -> None:
        for sink in self.sinks:
            try:
                wrote = message.deliver(sink)
            except OSError as exc:
                # The disk is full or read-only: this output pauses, the others go on. Logged
                # once per episode (health.storage), not per event.
                self.sink_errors += 1
                if self._health is not None:
                    self._health.storage.failed(
                        sink.storage_part, exc, fallback="its output is skipped"
                    )
                else:
                    log.warning("%s failed on %s: %s", type(sink).__name__, message.kind, exc)
            except Exception as exc:  # one broken sink must not silence the others
                self.sink_errors += 1
                log.warning("%s failed on %s: %s", type(sink).__name__, message.kind, exc)
            else:
                if self._health is not None and wrote:
                    self._health.storage.ok(sink.storage_part)

    def close(self) -> None:
        """Deliver everything queued, then close every sink (flushes files)."""
        if self._thread.is_alive():
            self._queue.put(_Stop())
            self._thread.join()
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:
                log.warning("%s failed to close: %s", type(sink).__name__, exc)
