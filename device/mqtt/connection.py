"""The MQTT connection: credentials and TLS for the paho client, and what its connection
callbacks say.

Paho-mqtt 2.x, ``CallbackAPIVersion.VERSION2``, ``connect_async`` + ``loop_start``; paho's own
thread retries a failed first connect and every lost connection, waiting
``reconnect_delay_set(first, longest)`` (paho doubles the wait from ``first`` up to
``longest``, and resets it after a successful CONNACK). Paho adds no jitter, so
``on_pre_connect`` waits a further random 0..50 % of the current step: a fleet that lost its
broker together does not come back in lockstep. A refused login or a TLS failure is logged as
one line naming the setting to check, repeated only when the reason changes or every
``REPEAT_LOG_S``; the daemon keeps running and keeps retrying.

Threads: every :class:`Connection` callback runs on paho's network thread, with paho's locks
held: it only logs, counts, sets events and posts a note (device/mqtt/notes.py) for the
publisher thread; it never calls back into paho and never raises. ``failures`` and the last
reason are paho-thread state; ``link_up``, ``first_result`` and ``stopping`` are
``threading.Event`` s that any thread may read.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from device.config import ConfigError, MqttSection
from device.mqtt.notes import Connected, Disconnected, Note

log = logging.getLogger("device.mqtt")

JITTER = 0.5
"""Extra random wait before a reconnect, as a fraction of the current backoff step."""
REPEAT_LOG_S = 60.0
"""The same connection failure is logged again (as a warning, with the attempts since) at most
this often."""
MAX_BACKOFF_DOUBLINGS = 30
"""The jitter's backoff step stops doubling here (2**30 steps is beyond any longest wait):
the arithmetic stays small however many connects fail."""


def read_password(
    mqtt_cfg: MqttSection, *, environ: dict[str, str] | None = None
) -> tuple[str | None, str]:
    """The broker password and where it came from: ``mqtt.password_file`` if set, else the
    systemd credential ``$CREDENTIALS_DIRECTORY/<mqtt.password_credential>`` if present, else
    None. A trailing newline is not part of the password. Raises ConfigError for a
    password_file that cannot be read."""
    env = os.environ if environ is None else environ
    if mqtt_cfg.password_file:
        path = Path(mqtt_cfg.password_file)
        try:
            password = path.read_text().rstrip("\r\n")
            mode = path.stat().st_mode
        except OSError as exc:
            raise ConfigError(f"mqtt.password_file: cannot read {path} ({exc.strerror})") from None
        if mode & 0o077:
            log.warning(
                "mqtt.password_file %s can be read by group or others (mode %03o): chmod 600 it",
                path,
                mode & 0o777,
            )
        return password, f"mqtt.password_file ({path})"
    creds = env.get("CREDENTIALS_DIRECTORY")
    if creds:
        path = Path(creds) / mqtt_cfg.password_credential
        if path.is_file():
            # install.sh lays down an empty credential file (LoadCredential= needs one):
            # empty means "no password", not the empty password.
            credential = path.read_text().rstrip("\r\n") or None
            return credential, f"credential {mqtt_cfg.password_credential}"
    return None, "nowhere (no mqtt.password_file, no $CREDENTIALS_DIRECTORY credential)"


def make_client(mqtt_cfg: MqttSection, *, client_id: str) -> tuple[mqtt.Client, str]:
    """A paho client (VERSION2 callbacks, MQTT 3.1.1) with credentials and TLS set from the
    ``mqtt`` config section; returns it and where the password came from (for messages).
    Raises ConfigError for unreadable password, certificate or key files."""
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv311,
        clean_session=True,
    )
    source = "none (no mqtt.username)"
    if mqtt_cfg.username:
        password, source = read_password(mqtt_cfg)
        if password is None:
            log.warning(
                "mqtt.username is set but no password was found in %s; connecting without one",
                source,
            )
        client.username_pw_set(mqtt_cfg.username, password)
    tls = mqtt_cfg.tls
    if tls.enabled:
        for key in ("ca_file", "cert_file", "key_file"):
            path = tls[key]
            if path and not os.access(path, os.R_OK):
                raise ConfigError(f"mqtt.tls.{key}: cannot read {path}")
        try:
            client.tls_set(
                ca_certs=tls.ca_file,
                certfile=tls.cert_file,
                keyfile=tls.key_file,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"mqtt.tls: cannot load the CA file, certificate or key ({exc})"
            ) from None
    return client, source


def describe_connect_error(exc: BaseException | None, *, host: str) -> str:
    """One line saying why a connection attempt failed and what to check."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"the TLS certificate of {host} was not accepted ({exc.verify_message}): check "
            "mqtt.tls.ca_file and that mqtt.host matches the certificate"
        )
    if isinstance(exc, ssl.SSLError):
        return (
            f"the TLS handshake failed ({exc.reason or exc}): check mqtt.tls (CA, client "
            "certificate and key) and that the broker port speaks TLS"
        )
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused: is the broker running and listening on mqtt.port?"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve mqtt.host {host!r} ({exc.strerror})"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "the connection timed out: is the broker reachable?"
    if isinstance(exc, OSError):
        return f"cannot connect ({exc.strerror or exc})"
    return f"cannot connect ({exc})" if exc else "cannot connect"


class Connection:
    """The connection callbacks of one paho client (all on paho's network thread).

    ``cfg``: the mqtt section. ``counters``: the sink's counters; this class writes
    ``connect_failures`` only. ``post``: puts a note on the publisher's queue.
    """

    def __init__(
        self,
        cfg: MqttSection,
        *,
        password_source: str,
        counters: dict[str, int],
        post: Callable[[Note], None],
    ) -> None:
        self._cfg = cfg
        self._password_source = password_source
        self._counters = counters
        self._post = post
        self._first_s, self._longest_s = cfg.reconnect_s
        self.link_up = threading.Event()
        """Set while the broker has accepted the connection (paho's view)."""
        self.first_result = threading.Event()
        """Set once the first connect attempt has succeeded or failed."""
        self.stopping = threading.Event()
        """Set by close(): a disconnect is then expected, and no reconnect jitter waits."""
        self._failures = 0
        self._last_reason: str | None = None
        self._last_report = 0.0

    def attach(self, client: mqtt.Client) -> None:
        """Set the reconnect backoff and the connection callbacks on ``client``."""
        client.reconnect_delay_set(self._first_s, self._longest_s)  # type: ignore[arg-type]  # paho stubs say int; it waits float seconds
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_pre_connect = self._on_pre_connect

    def _on_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        # An exception here would end paho's network thread for good: never let one out.
        try:
            if self._failures and not self.stopping.is_set():
                self.stopping.wait(random.uniform(0, JITTER * self._backoff_step()))
        except Exception:  # noqa: BLE001
            log.exception("mqtt: reconnect jitter failed (reconnecting without it)")

    def _backoff_step(self) -> float:
        """The current reconnect wait (seconds): first_s doubled per failure, up to longest_s."""
        doublings = min(max(self._failures - 1, 0), MAX_BACKOFF_DOUBLINGS)
        return min(self._first_s * 2.0**doublings, self._longest_s)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self.first_result.set()
        if reason_code.is_failure:
            self._counters["connect_failures"] += 1
            self._report(
                f"{self._cfg.host}:{self._cfg.port} refused the connection: "
                f"{reason_code} (check mqtt.username and the password from "
                f"{self._password_source})"
            )
            return
        if self._last_reason:
            log.info(
                "mqtt: connected to %s:%d after %d failed attempts",
                self._cfg.host,
                self._cfg.port,
                self._failures,
            )
        else:
            log.info("mqtt: connected to %s:%d", self._cfg.host, self._cfg.port)
        self._failures = 0
        self._last_reason = None
        self.link_up.set()
        self._post(Connected())

    def _on_connect_fail(self, client, userdata) -> None:
        # Paho calls this from inside its `except OSError` block, so the exception is current.
        self.first_result.set()
        self._failures += 1
        self._counters["connect_failures"] += 1
        try:
            self._report(describe_connect_error(sys.exception(), host=self._cfg.host))
        except Exception:  # noqa: BLE001 - paho's thread must survive a logging failure
            pass

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.first_result.set()
        was_up = self.link_up.is_set()
        self.link_up.clear()
        if self.stopping.is_set():
            return
        self._failures += 1
        if was_up:
            log.warning(
                "mqtt: lost the connection to %s:%d (%s); events wait in the outbox",
                self._cfg.host,
                self._cfg.port,
                reason_code,
            )
            self._post(Disconnected())
        elif self._last_reason is None or self._last_reason.startswith(
            (f"{self._where} accepted", f"{self._where} closed")
        ):
            # (A refused login also ends in a disconnect: its own message stands.)
            if "keep alive" in str(reason_code).lower():
                # We gave up waiting: the port took the TCP connection and said nothing.
                self._report(
                    f"{self._where} accepted the connection but never answered the "
                    f"MQTT handshake ({reason_code}): {self._closed_early_hint()}"
                )
            else:
                self._report(
                    f"{self._where} closed the connection before accepting it "
                    f"({reason_code}): {self._closed_early_hint()}"
                )

    @property
    def _where(self) -> str:
        return f"{self._cfg.host}:{self._cfg.port}"

    def _closed_early_hint(self) -> str:
        if self._cfg.tls.enabled:
            # Typically a client certificate the broker rejects.
            return "check mqtt.tls.cert_file/key_file and the broker's log"
        return (
            "check that mqtt.port is the broker's plain MQTT port (not a TLS or other "
            "port; else set mqtt.tls.enabled) and the broker's log"
        )

    def _report(self, reason: str) -> None:
        """Log a connection failure once per reason (again, with the count of attempts since,
        after REPEAT_LOG_S), then debug."""
        now = time.monotonic()
        if reason != self._last_reason:
            log.warning(
                "mqtt: %s; retrying with backoff (%g..%g s)", reason, self._first_s, self._longest_s
            )
        elif now - self._last_report >= REPEAT_LOG_S:
            log.warning(
                "mqtt: still cannot connect after %d attempts: %s; retrying every %g s",
                self._failures,
                reason,
                self._backoff_step(),
            )
        else:
            log.debug("mqtt: %s", reason)
            return
        self._last_reason, self._last_report = reason, now
