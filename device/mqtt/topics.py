"""The MQTT topics of one device (the contract: tests/test_contract.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topics:
    """The topics of one device."""

    base: str
    """``<topic_prefix>/<device_id>`` (``.../replay`` for a replay's events)."""

    @property
    def availability(self) -> str:
        return f"{self.base}/availability"

    @property
    def events(self) -> str:
        return f"{self.base}/events"

    @property
    def state(self) -> str:
        return f"{self.base}/state"


def device_topics(topic_prefix: str, device_id: str) -> Topics:
    return Topics(f"{topic_prefix.rstrip('/')}/{device_id}")
