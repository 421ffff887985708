"""The sections of config.yaml that the device (python -m device) reads.

Each is a frozen dataclass whose fields carry default, bounds, choices and description
(device.config.fields); the validator and the doc generators read them, and functions take the
section they need (``def state_dir(service: ServiceSection)``).
"""

from dataclasses import dataclass

from device.config.fields import Section, section, setting


@dataclass(frozen=True, eq=False, repr=False)
class AudioSection(Section):
    """The ``audio`` section."""

    device: str | int | None = setting(
        None,
        doc="Microphone: name (substring) or index; null = system default",
    )
    sample_rate: int | None = setting(
        None,
        minimum=8000,
        maximum=192000,
        doc="Capture rate, Hz; null = the model's rate (else resampled)",
    )
    channels: int = setting(
        1,
        minimum=1,
        maximum=32,
        doc="Channels to capture (downmixed to mono)",
    )
    block_s: float = setting(
        0.05,
        minimum=0.005,
        maximum=1.0,
        doc="Audio callback block length, seconds",
    )
    ring_s: float = setting(
        30.0,
        minimum=5,
        maximum=3600,
        doc="Ring buffer length, seconds (bounds memory; holds clip pre-roll)",
    )
    liveness_timeout_s: float = setting(
        5.0,
        minimum=0.5,
        maximum=600,
        doc="No audio frames for this long: reopen the microphone",
    )
    silence_timeout_s: float = setting(
        300.0,
        minimum=0,
        maximum=86400,
        doc="Digital silence or a stuck value this long: reopen; 0 = never",
    )
    reopen_backoff_s: list[float] = setting(
        [1.0, 60.0],
        doc="First and longest wait between microphone reopen attempts, seconds",
    )


@dataclass(frozen=True, eq=False, repr=False)
class DetectionSection(Section):
    """The ``detection`` section."""

    model: str = setting(
        "model.tflite",
        doc="Model bundle: a .tflite with model.json beside it, or a run folder",
    )
    hop_s: float = setting(
        0.5,
        minimum=0.02,
        maximum=60,
        doc="Seconds between inferences",
    )
    thresholds: dict[str, float] = setting(
        {},
        doc="Per-label threshold overriding model.json, probability units",
    )
    smoothing_windows: int = setting(
        1,
        minimum=1,
        maximum=100,
        doc="Scores averaged over this many consecutive windows (1 = off)",
    )
    confirm_k: int = setting(
        1,
        minimum=1,
        maximum=100,
        doc="An event needs k of the last n windows above the threshold",
    )
    confirm_n: int = setting(
        1,
        minimum=1,
        maximum=100,
        doc="n of k-of-n confirmation",
    )
    hysteresis: float = setting(
        0.1,
        minimum=0,
        maximum=1,
        doc="An event ends when the score falls below threshold minus this",
    )
    merge_gap_s: float = setting(
        0.0,
        minimum=0,
        maximum=600,
        doc="Events separated by at most this many seconds of windows below the threshold are merged into one; 0 = off",
    )
    refractory_s: float = setting(
        0.0,
        minimum=0,
        maximum=3600,
        doc="After an event, no new event for this long, seconds",
    )
    max_event_s: float = setting(
        60.0,
        minimum=0.5,
        maximum=86400,
        doc="An event longer than this is closed and a new one started",
    )
    delegate: str = setting(
        "cpu",
        choices=("cpu", "edgetpu"),
        doc="Inference on 'cpu' or 'edgetpu' (falls back to the CPU with a warning)",
    )
    num_threads: int = setting(
        1,
        minimum=1,
        maximum=64,
        doc="Interpreter threads",
    )


@dataclass(frozen=True, eq=False, repr=False)
class TlsSection(Section):
    """The ``mqtt.tls`` section."""

    enabled: bool = setting(
        False,
        doc="Connect with TLS",
    )
    ca_file: str | None = setting(
        None,
        doc="CA certificate file (null = system CAs)",
    )
    cert_file: str | None = setting(
        None,
        doc="Client certificate file (optional)",
    )
    key_file: str | None = setting(
        None,
        doc="Client key file (with cert_file)",
    )


@dataclass(frozen=True, eq=False, repr=False)
class OutboxSection(Section):
    """The ``mqtt.outbox`` section."""

    max_rows: int = setting(
        100000,
        minimum=10,
        doc="Events kept while the broker is away; oldest dropped beyond",
    )
    max_mb: float = setting(
        50.0,
        minimum=0.1,
        doc="Event bytes the outbox may hold, MiB (the file is a little larger); oldest dropped beyond",
    )


@dataclass(frozen=True, eq=False, repr=False)
class DiscoverySection(Section):
    """The ``mqtt.discovery`` section."""

    enabled: bool = setting(
        True,
        doc="Publish Home Assistant MQTT discovery messages",
    )
    prefix: str = setting(
        "homeassistant",
        minimum=1,
        doc="Home Assistant discovery prefix",
    )
    entity: str = setting(
        "event",
        choices=("event", "binary_sensor"),
        doc="Entity per label: 'event' or 'binary_sensor'",
    )
    off_delay_s: float = setting(
        10.0,
        minimum=1,
        maximum=86400,
        doc="Unused since event schema 3 (the binary_sensor turns off when its event closes); kept so older configs load",
    )


@dataclass(frozen=True, eq=False, repr=False)
class MqttSection(Section):
    """The ``mqtt`` section."""

    enabled: bool = setting(
        False,
        doc="Publish events and health to an MQTT broker",
    )
    host: str = setting(
        "localhost",
        minimum=1,
        doc="Broker host name or address",
    )
    port: int = setting(
        1883,
        minimum=1,
        maximum=65535,
        doc="Broker port",
    )
    keepalive_s: int = setting(
        60,
        minimum=5,
        maximum=3600,
        doc="MQTT keepalive, seconds",
    )
    topic_prefix: str = setting(
        "callwatch",
        minimum=1,
        doc="Topics are <topic_prefix>/<device_id>/...",
    )
    username: str | None = setting(
        None,
        doc="Broker user name; the password comes from password_file or a credential",
    )
    password_file: str | None = setting(
        None,
        doc="File holding the broker password (never the password itself)",
    )
    password_credential: str = setting(
        "mqtt_password",
        doc="Name of the systemd credential ($CREDENTIALS_DIRECTORY/<name>) holding the password",
    )
    tls: TlsSection = section(TlsSection)
    state_interval_s: float = setting(
        60.0,
        minimum=1,
        maximum=86400,
        doc="Seconds between retained health messages",
    )
    reconnect_s: list[float] = setting(
        [1.0, 120.0],
        doc="First and longest wait between reconnects, seconds (with jitter)",
    )
    outbox: OutboxSection = section(OutboxSection)
    discovery: DiscoverySection = section(DiscoverySection)


@dataclass(frozen=True, eq=False, repr=False)
class ClipsSection(Section):
    """The ``outputs.clips`` section."""

    enabled: bool = setting(
        False,
        doc="Save a WAV clip of each event",
    )
    dir: str | None = setting(
        None,
        doc="Clip folder; null = <state_dir>/clips",
    )
    pre_s: float = setting(
        2.0,
        minimum=0,
        maximum=60,
        doc="Audio kept before the event, seconds",
    )
    post_s: float = setting(
        2.0,
        minimum=0,
        maximum=60,
        doc="Audio kept after the event, seconds",
    )
    max_mb: float = setting(
        500.0,
        minimum=1,
        doc="Disk budget for clips, MiB; oldest deleted beyond",
    )
    max_age_days: float = setting(
        30.0,
        minimum=0.01,
        doc="Clips older than this are deleted",
    )


@dataclass(frozen=True, eq=False, repr=False)
class OutputsSection(Section):
    """The ``outputs`` section."""

    events_jsonl: str | None = setting(
        None,
        doc="Append events as JSON lines to this file; '-' = stdout",
    )
    scores_csv: str | None = setting(
        None,
        doc="Write every window's score to this CSV",
    )
    raven_dir: str | None = setting(
        None,
        doc="Write one Raven selection table per source into this folder",
    )
    counts_csv: str | None = setting(
        None,
        doc="Replay: events per label per file, as CSV",
    )
    log_events: bool = setting(
        True,
        doc="One log line per event",
    )
    queue_size: int = setting(
        1000,
        minimum=10,
        maximum=1000000,
        doc="Events and scores waiting for the sinks, at most",
    )
    clips: ClipsSection = section(ClipsSection)


@dataclass(frozen=True, eq=False, repr=False)
class ReplaySection(Section):
    """The ``replay`` section."""

    site_pattern: str | None = setting(
        None,
        doc="Regex searched in each replayed file's path (relative to the replay root); its first group (or the whole match) is the site, e.g. '^([^/]+)/'; null = the file's folder (--site-pattern overrides)",
    )
    time_format: str | None = setting(
        None,
        doc="Recording start written in file names, strftime codes %Y %y %m %d %j %H %M %S (e.g. '%Y-%m-%d_%H-%M-%S'), tried before the built-in YYYYMMDD_HHMMSS (AudioMoth, Song Meter); --time-format overrides",
    )
    timezone: str = setting(
        "UTC",
        minimum=1,
        doc="Time zone of recording times written without one (file names, GUANO without an offset): UTC, an IANA name or +HH:MM; --timezone overrides",
    )
    progress_interval_s: float = setting(
        60.0,
        minimum=1,
        maximum=86400,
        doc="Replay progress in the log at most this often, seconds (a terminal gets a live line instead)",
    )


@dataclass(frozen=True, eq=False, repr=False)
class ServiceSection(Section):
    """The ``service`` section."""

    device_id: str | None = setting(
        None,
        doc="Name of this recorder in events and topics; null = host name",
    )
    state_dir: str | None = setting(
        None,
        doc="Outbox and clips; null = $STATE_DIRECTORY (systemd) or ~/.local/state/callwatch",
    )
    log_level: str = setting(
        "info",
        choices=("debug", "info", "warning", "error"),
        doc="Log level",
    )
    warning_interval_s: float = setting(
        60.0,
        minimum=0,
        maximum=86400,
        doc="Repeats of one warning are logged at most this often",
    )
    min_free_mb: float = setting(
        200.0,
        minimum=0,
        doc="Below this much free disk, clips stop (events still flow)",
    )
