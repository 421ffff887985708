"""The notes other threads leave for the MQTT publisher thread (device/mqtt/pump.py).

Paho's network thread and the sink thread never touch the outbox's in-flight bookkeeping or
call paho from a callback: they put one of these on the publisher's queue and return. The
publisher thread is the only consumer.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Wake:
    """Sink thread: the outbox has a new row (or close() wants a last pump)."""


@dataclass(frozen=True)
class Connected:
    """Paho's thread (on_connect): the broker accepted the connection."""


@dataclass(frozen=True)
class Disconnected:
    """Paho's thread (on_disconnect): an accepted connection was lost."""


@dataclass(frozen=True)
class Acked:
    """Paho's thread (on_publish): the broker acknowledged one QoS 1 message."""

    mid: int
    """Paho's message id, as returned by ``publish``."""


@dataclass(frozen=True)
class PublishDirect:
    """Sink thread: an event the outbox could not store, to be handed to paho's memory."""

    payload: str
    """The event JSON."""


@dataclass(frozen=True)
class Finish:
    """Sink thread (close()): publish the final state and "offline", then end the thread."""

    deadline: float
    """time.monotonic() by which the last messages should be acknowledged."""


Note = Wake | Connected | Disconnected | Acked | PublishDirect | Finish
