"""The systemd notify protocol, spoken directly (no libsystemd, no python-systemd).

systemd passes ``$NOTIFY_SOCKET`` to a ``Type=notify`` service: a unix datagram socket, either a
path (``/run/systemd/notify``) or an abstract name written with a leading ``@``. The service
sends newline-separated ``KEY=VALUE`` assignments in one datagram each:

- ``READY=1`` once start-up is finished (here: model loaded and audio flowing);
- ``WATCHDOG=1`` at least once per ``WatchdogSec=``, otherwise systemd kills and restarts the
  service (here: only while audio frames and inferences advance);
- ``STATUS=...`` a one-line health summary shown by ``systemctl status``;
- ``STOPPING=1`` when a clean shutdown begins.

Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op, so the daemon code never asks
"am I under systemd?". Sending never raises: a notify failure must not take detection down; the
first failure is logged as a warning, later ones at debug level.

Thread-safety: one ``sendto`` on a datagram socket is atomic, so the methods may be called from
any thread.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends notify messages to one socket address; a no-op when ``address`` is None."""

    def __init__(self, address: str | None, *, watchdog_usec: int | None = None) -> None:
        """``address``: the value of ``$NOTIFY_SOCKET`` (absolute path, or ``@name`` for an
        abstract socket); None disables notifications. ``watchdog_usec``: the service's
        watchdog timeout in microseconds (``$WATCHDOG_USEC``), None when there is no watchdog."""
        self._address = _socket_address(address) if address else None
        self._watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._failed_once = False
        if address and self._address is None:
            log.warning("NOTIFY_SOCKET=%r is not an absolute path or @abstract name; "
                        "systemd notifications are disabled", address)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """The notifier systemd asked for through the environment.

        ``$WATCHDOG_USEC`` applies only when ``$WATCHDOG_PID`` is unset or names this process
        (systemd sets it so a forked child does not take over the parent's watchdog).
        """
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        watchdog_usec = None
        pid = env.get("WATCHDOG_PID")
        if pid is None or pid.strip() == str(os.getpid()):
            try:
                watchdog_usec = int(env.get("WATCHDOG_USEC", ""))
            except ValueError:
                watchdog_usec = None
        return cls(address, watchdog_usec=watchdog_usec)

    @property
    def enabled(self) -> bool:
        """True when messages actually go somewhere (running under systemd's notify)."""
        return self._address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """Recommended ping period, seconds: half the watchdog timeout (as ``sd_watchdog_enabled``
        advises); None when systemd runs no watchdog for this process."""
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2e6

    def ready(self, status: str | None = None) -> bool:
        """Start-up finished (``READY=1``), optionally with a first status line."""
        return self.send("READY=1", status=status)

    def status(self, text: str) -> bool:
        """Replace the one-line status shown by ``systemctl status``."""
        return self.send(status=text)

    def watchdog(self) -> bool:
        """Keep-alive ping (``WATCHDOG=1``); call only when the pipeline is making progress."""
        return self.send("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """A clean shutdown has begun (``STOPPING=1``)."""
        return self.send("STOPPING=1", status=status)

    def send(self, *assignments: str, status: str | None = None) -> bool:
        """Send ``KEY=VALUE`` assignments (plus ``STATUS=`` when given) in one datagram.

        Returns True when the datagram was sent, False when disabled or on failure. Never raises.
        """
        if self._address is None:
            return False
        lines = list(assignments)
        if status is not None:
            # A newline would start a new assignment: keep the status on one line.
            lines.append("STATUS=" + " ".join(status.split()))
        if not lines:
            return False
        payload = "\n".join(lines).encode("utf-8", "replace")
        try:
            with self._lock:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX,
                                               socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(payload, self._address)
            return True
        except OSError as exc:
            if not self._failed_once:
                self._failed_once = True
                log.warning("systemd notify to %s failed (%s); continuing without it "
                            "(further failures are logged at debug level)", self._display(), exc)
            else:
                log.debug("systemd notify failed: %s", exc)
            return False

    def close(self) -> None:
        """Close the socket (later sends reopen it)."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def _display(self) -> str:
        address = self._address
        if isinstance(address, bytes):
            return "@" + address[1:].decode("utf-8", "replace")
        return str(address)


def _socket_address(value: str) -> str | bytes | None:
    """``$NOTIFY_SOCKET`` as a ``sendto`` address: a path, or bytes starting with NUL for an
    abstract socket; None for anything else (relative paths and ``vsock:`` are not supported)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode("utf-8")
    if value.startswith("/"):
        return value
    return None
