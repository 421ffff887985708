"""config.yaml: one schema, one set of defaults, for train, convert and the device.

The schema below is the only place a default lives. :func:`load_config` reads a YAML file,
refuses unknown keys, wrong types and out-of-range values with one line naming the key path
(``mqtt.port: must be 1..65535, got 70000``), and returns a :class:`Section` tree with every
default filled in. Secrets (the MQTT password) are never read from this file: only the name
of a file or systemd credential that holds them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_CONFIG_PATHS = (Path("config.yaml"), Path("/etc/callwatch/config.yaml"))
"""Where the tools look when --config is not given (first that exists); $CALLWATCH_CONFIG first."""


class ConfigError(Exception):
    """A config problem; str() is one line naming the key path and what was expected."""


@dataclass(frozen=True)
class Key:
    """One setting: its default, what it is, and the values it accepts."""

    default: Any
    doc: str
    types: tuple = ()
    """Accepted Python types; () means the type of the default."""
    min: float | None = None
    max: float | None = None
    choices: tuple = ()
    nullable: bool = False
    item: Any = None
    """For lists: the type of each item, or a dict schema for lists of mappings."""

    def accepted(self) -> tuple:
        if self.types:
            return self.types
        if isinstance(self.default, bool):
            return (bool,)
        if isinstance(self.default, float):
            return (float, int)
        return (type(self.default),)


def _feature_keys() -> dict:
    return {
        "sample_rate": Key(16000, "Sample rate the model hears, Hz (audio is resampled to it)", min=1000, max=192000),
        "n_fft": Key(512, "FFT and frame length, samples (power of two)", min=16, max=16384),
        "win_length": Key(400, "Hann window length, samples (<= n_fft)", min=1, max=16384),
        "hop_length": Key(320, "Samples between spectrogram frames", min=1, max=16384),
        "n_mels": Key(40, "Mel bands", min=1, max=512),
        "fmin": Key(100.0, "Lowest mel band edge, Hz", min=0),
        "fmax": Key(8000.0, "Highest mel band edge, Hz (<= sample_rate / 2)", min=1),
        "log_floor": Key(1e-10, "Power floor before the log (dB floor = 10 log10 of it)", min=1e-20, max=0.5),
        "front_end": Key("logmel", "Model input: 'logmel' (dB of the mel power; the model subtracts "
                         "each band's mean) or 'pcen' (per-channel energy normalisation: each band "
                         "divided by its own recent level, streaming state on the device)",
                         choices=("logmel", "pcen")),
        "pcen_time_constant_s": Key(0.4, "PCEN: how long each band's background level is "
                                    "averaged over, seconds", min=0.01, max=60),
        "pcen_gain": Key(0.98, "PCEN: exponent of the background level (1 = fully gain-normalised)",
                         min=0, max=1),
        "pcen_bias": Key(2.0, "PCEN: bias added before the root compression", min=1e-6, max=100),
        "pcen_power": Key(0.5, "PCEN: root compression exponent", min=0.01, max=1),
        "pcen_eps": Key(1e-10, "PCEN: floor of the background level, mel power (bands quieter "
                        "than this are not amplified)", min=1e-20, max=1),
    }


DATASET = {
    "path": Key("", "Folder of clips or recordings, relative to --data-root", min=1),
    "kind": Key("clips", "clips: one subfolder per class; selections: long recordings with Raven "
                "or Audacity tables; background: noise recordings for mixing and as negatives",
                choices=("clips", "selections", "background")),
    "classes": Key({}, "Class folder or annotation label -> target label, or 'negative'", item=str),
    "tables": Key(None, "Folder of selection tables (default: beside the recordings)", types=(str,), nullable=True),
    "label_column": Key("Species", "Column of a Raven table holding the annotation label"),
    "ignore": Key([], "Annotation labels left out of both positives and negatives", item=str),
    "group_pattern": Key(None, "Regex on the file path whose first group names the recording "
                         "group (site); default: one group per file", types=(str,), nullable=True),
    "split": Key(None, "Put every file of this dataset in one split (train, validation or test) "
                 "instead of splitting it by group; e.g. extra negatives used for training only",
                 types=(str,), nullable=True, choices=("train", "validation", "test")),
    "negatives_per_minute": Key(None, "Negative windows per minute of unannotated audio for this "
                                "dataset; null = train.negatives_per_minute", types=(float, int),
                                nullable=True, min=0, max=600),
}

SCHEMA: dict = {
    "audio": {
        "device": Key(None, "Microphone: name (substring) or index; null = system default", types=(str, int), nullable=True),
        "sample_rate": Key(None, "Capture rate, Hz; null = the model's rate (else resampled)", types=(int,), nullable=True, min=8000, max=192000),
        "channels": Key(1, "Channels to capture (downmixed to mono)", min=1, max=32),
        "block_s": Key(0.05, "Audio callback block length, seconds", min=0.005, max=1.0),
        "ring_s": Key(30.0, "Ring buffer length, seconds (bounds memory; holds clip pre-roll)", min=5, max=3600),
        "liveness_timeout_s": Key(5.0, "No audio frames for this long: reopen the microphone", min=0.5, max=600),
        "silence_timeout_s": Key(300.0, "Digital silence or a stuck value this long: reopen; 0 = never", min=0, max=86400),
        "reopen_backoff_s": Key([1.0, 60.0], "First and longest wait between microphone reopen attempts, seconds", item=float),
    },
    "train": {
        "name": Key("run", "Run name: the run folder is runs/<name>/ unless --out is given", min=1),
        "data_root": Key(".", "Folder the dataset paths are relative to (--data-root overrides)", min=1),
        "cache_dir": Key("runs/.cache", "Folder for cached log-mel features of whole recordings, reused "
                         "across runs (null = no cache)", types=(str,), nullable=True),
        "labels": Key(["call"], "Target labels, one sigmoid output each", item=str),
        "datasets": Key([], "Datasets read by python -m train (see examples/)", item=DATASET),
        "window_s": Key(3.0, "Model window, seconds of audio per input", min=0.25, max=30),
        "features": _feature_keys(),
        "split": {
            "validation": Key(0.2, "Share of groups for validation", min=0.0, max=0.9),
            "test": Key(0.2, "Share of groups for the test split", min=0.0, max=0.9),
            "test_groups": Key([], "Groups forced into the test split (e.g. a site); when set, "
                               "they replace the test share", item=str),
            "validation_groups": Key([], "Groups forced into the validation split; when set, they "
                                     "replace the validation share", item=str),
            "validation_by": Key("group", "'group': validation takes whole groups; 'file': it takes "
                                 "files of the training groups (when there are too few groups, "
                                 "e.g. two sites)", choices=("group", "file")),
            "leave_one_group_out": Key(False, "Cross-validate: each group held out once; reports each fold"),
            "folds": Key(0, "Group k-fold cross-validation for data with many groups (e.g. 50 recordings): "
                         "k >= 2 holds out a k-th of the groups in turn, the main run's test split being "
                         "the first fold; reports each fold, the spread and the pooled out-of-fold figures. "
                         "0: off", min=0, max=20, types=(int,)),
            "final": Key(False, "After cross-validation (leave_one_group_out or folds), train the "
                         "model to deploy on every recording: as many epochs as the folds kept "
                         "(their median), thresholds calibrated on their pooled held-out scores; "
                         "the folds' figures are its estimate of accuracy (--final)"),
        },
        "negatives_per_minute": Key(10.0, "Background windows sampled per minute of unannotated recording", min=0, max=600),
        "negatives_beside_calls": Key(True, "Also train on the windows just before and just after each "
                                      "annotated call of a long recording as negatives (when nothing else is "
                                      "annotated there; jittered by the time shift, taking in at most a "
                                      "quarter of the call): the model learns where a call ends, as tables "
                                      "on a fixed chunk grid draw it"),
        "max_positive_ratio": Key(0.333, "Positives per negative after oversampling, at most", min=0.01, max=1.0),
        "windows_per_epoch": Key(1000, "Training windows per epoch, at least: small data sets are "
                                 "sampled again (fresh crops) until there are this many", min=1, max=1000000),
        "augment": {
            "background_p": Key(0.5, "Probability of mixing a background into a training window", min=0, max=1),
            "snr_db": Key([0.0, 20.0], "Range of the mixing signal-to-noise ratio, dB", item=float),
            "gain_db": Key([-12.0, 12.0], "Range of random gain, dB", item=float),
            "time_shift_s": Key(0.5, "Largest random shift of a crop, seconds", min=0, max=10),
            "time_masks": Key(2, "SpecAugment time masks per window", min=0, max=10),
            "time_mask_frames": Key(10, "Longest time mask, frames", min=0, max=200),
            "freq_masks": Key(2, "SpecAugment frequency masks per window", min=0, max=10),
            "freq_mask_bands": Key(4, "Widest frequency mask, mel bands", min=0, max=64),
            "freq_shift_bands": Key(0, "Largest random shift along the mel axis, bands (pitch "
                                    "differences between individuals); 0 = off", min=0, max=16),
            "mixup_alpha": Key(0.0, "Mixup Beta(alpha, alpha); 0 = off", min=0, max=2),
            "eq_db": Key(0.0, "Random colouring of the call before the background is mixed in: "
                         "largest tilt over the mel bands, dB (plus a ripple of half that); 0 = off",
                         min=0, max=24),
            "reverb_p": Key(0.0, "Probability of a synthetic reverberant tail (before mixing)", min=0, max=1),
            "reverb_rt60_s": Key([0.2, 1.2], "Range of the reverberation's 60 dB decay time in the lowest "
                                 "band, seconds (the highest band's is half)", item=float),
            "reverb_drr_db": Key([0.0, 15.0], "Range of the direct-to-reverberant energy ratio, dB",
                                 item=float),
        },
        "model": {
            "filters": Key([16, 24, 32, 48], "Channels of the convolution blocks", item=int),
            "dropout": Key(0.2, "Dropout before the output layer", min=0, max=0.9),
            "normalisation": Key("band_mean", "Inside the model: 'band_mean' subtracts each mel "
                                 "band's mean over the window (gain and steady background), "
                                 "'none' feeds raw dB", choices=("band_mean", "none")),
            "pooling": Key("max", "Global pooling over time and frequency: 'max' (a short call "
                           "anywhere in the window) or 'avg'; 'time': max over frequency only, "
                           "the output layer weighs each time step (it knows whether a call fills "
                           "the window or only clips its edge)", choices=("max", "avg", "time")),
            "stem_stride": Key(2, "Stride of the first convolution in time and frequency: 2 "
                               "costs about a third of 1 on the device (measured in "
                               "BENCHMARKS.md) for the same accuracy on the example data", min=1, max=2),
        },
        "epochs": Key(40, "Most epochs (early stopping usually ends sooner)", min=1, max=1000),
        "patience": Key(8, "Epochs without validation improvement before stopping", min=1, max=200),
        "batch_size": Key(64, "Windows per batch", min=1, max=4096),
        "learning_rate": Key(0.002, "Adam learning rate", min=1e-6, max=1.0),
        "seed": Key(1234, "Seed for splits, crops, augmentation and weights", min=0),
        "calibration": {
            "method": Key("precision", "Threshold rule: 'precision' (reach target_precision on "
                          "validation), 'f1' (the best F1 on validation: about as many false alarms "
                          "as misses, so counts of calls stay unbiased; within one standard error "
                          "of the best, the cut nearest 0.5) or 'false_alarms' (at most "
                          "false_alarms_per_hour of background)",
                          choices=("precision", "f1", "false_alarms")),
            "target_precision": Key(0.9, "Precision the threshold must reach on validation", min=0.01, max=1.0),
            "false_alarms_per_hour": Key(2.0, "False alarms per hour of background audio allowed", min=0, max=3600),
        },
        "calibration_windows": Key(400, "Training windows saved for int8 quantization", min=10, max=100000),
        "hard_negatives": Key([], "Events JSONL files or Raven tables of false positives to train on as negatives", item=str),
        "hard_negatives_audio": Key([], "Folders where the audio of hard_negatives is looked for (e.g. the "
                                    "replay root: replay sources are relative to it)", item=str),
    },
    "convert": {
        "auc_tolerance": Key(0.01, "Largest ROC-AUC that int8 may lose against float before convert fails", min=0, max=1),
        "size_budget_kb": Key(100.0, "Warn when the int8 model is larger than this, KiB", min=1),
        "representative_windows": Key(300, "Calibration windows used for int8 quantization", min=10, max=100000),
    },
    "detection": {
        "model": Key("model.tflite", "Model bundle: a .tflite with model.json beside it, or a run folder"),
        "hop_s": Key(0.5, "Seconds between inferences", min=0.02, max=60),
        "thresholds": Key({}, "Per-label threshold overriding model.json, probability units", item=float),
        "smoothing_windows": Key(1, "Scores averaged over this many consecutive windows (1 = off)", min=1, max=100),
        "confirm_k": Key(1, "An event needs k of the last n windows above the threshold", min=1, max=100),
        "confirm_n": Key(1, "n of k-of-n confirmation", min=1, max=100),
        "hysteresis": Key(0.1, "An event ends when the score falls below threshold minus this", min=0, max=1),
        "merge_gap_s": Key(0.0, "Events separated by at most this many seconds of windows below the threshold are merged into one; 0 = off", min=0, max=600),
        "refractory_s": Key(0.0, "After an event, no new event for this long, seconds", min=0, max=3600),
        "max_event_s": Key(60.0, "An event longer than this is closed and a new one started", min=0.5, max=86400),
        "delegate": Key("cpu", "Inference on 'cpu' or 'edgetpu' (falls back to the CPU with a warning)", choices=("cpu", "edgetpu")),
        "num_threads": Key(1, "Interpreter threads", min=1, max=64),
    },
    "mqtt": {
        "enabled": Key(False, "Publish events and health to an MQTT broker"),
        "host": Key("localhost", "Broker host name or address", min=1),
        "port": Key(1883, "Broker port", min=1, max=65535),
        "keepalive_s": Key(60, "MQTT keepalive, seconds", min=5, max=3600),
        "topic_prefix": Key("callwatch", "Topics are <topic_prefix>/<device_id>/...", min=1),
        "username": Key(None, "Broker user name; the password comes from password_file or a credential", types=(str,), nullable=True),
        "password_file": Key(None, "File holding the broker password (never the password itself)", types=(str,), nullable=True),
        "password_credential": Key("mqtt_password", "Name of the systemd credential ($CREDENTIALS_DIRECTORY/<name>) holding the password"),
        "tls": {
            "enabled": Key(False, "Connect with TLS"),
            "ca_file": Key(None, "CA certificate file (null = system CAs)", types=(str,), nullable=True),
            "cert_file": Key(None, "Client certificate file (optional)", types=(str,), nullable=True),
            "key_file": Key(None, "Client key file (with cert_file)", types=(str,), nullable=True),
        },
        "state_interval_s": Key(60.0, "Seconds between retained health messages", min=1, max=86400),
        "reconnect_s": Key([1.0, 120.0], "First and longest wait between reconnects, seconds (with jitter)", item=float),
        "outbox": {
            "max_rows": Key(100000, "Events kept while the broker is away; oldest dropped beyond", min=10),
            "max_mb": Key(50.0, "Event bytes the outbox may hold, MiB (the file is a little larger); oldest dropped beyond", min=0.1),
        },
        "discovery": {
            "enabled": Key(True, "Publish Home Assistant MQTT discovery messages"),
            "prefix": Key("homeassistant", "Home Assistant discovery prefix", min=1),
            "entity": Key("event", "Entity per label: 'event' or 'binary_sensor'", choices=("event", "binary_sensor")),
            "off_delay_s": Key(10.0, "Unused since event schema 3 (the binary_sensor turns off when its event closes); kept so older configs load", min=1, max=86400),
        },
    },
    "outputs": {
        "events_jsonl": Key(None, "Append events as JSON lines to this file; '-' = stdout", types=(str,), nullable=True),
        "scores_csv": Key(None, "Write every window's score to this CSV", types=(str,), nullable=True),
        "raven_dir": Key(None, "Write one Raven selection table per source into this folder", types=(str,), nullable=True),
        "counts_csv": Key(None, "Replay: events per label per file, as CSV", types=(str,), nullable=True),
        "log_events": Key(True, "One log line per event"),
        "queue_size": Key(1000, "Events and scores waiting for the sinks, at most", min=10, max=1000000),
        "clips": {
            "enabled": Key(False, "Save a WAV clip of each event"),
            "dir": Key(None, "Clip folder; null = <state_dir>/clips", types=(str,), nullable=True),
            "pre_s": Key(2.0, "Audio kept before the event, seconds", min=0, max=60),
            "post_s": Key(2.0, "Audio kept after the event, seconds", min=0, max=60),
            "max_mb": Key(500.0, "Disk budget for clips, MiB; oldest deleted beyond", min=1),
            "max_age_days": Key(30.0, "Clips older than this are deleted", min=0.01),
        },
    },
    "replay": {
        "site_pattern": Key(None, "Regex searched in each replayed file's path (relative to the replay "
                            "root); its first group (or the whole match) is the site, e.g. "
                            "'^([^/]+)/'; null = the file's folder (--site-pattern overrides)",
                            types=(str,), nullable=True),
        "time_format": Key(None, "Recording start written in file names, strftime codes %Y %y %m %d "
                           "%j %H %M %S (e.g. '%Y-%m-%d_%H-%M-%S'), tried before the built-in "
                           "YYYYMMDD_HHMMSS (AudioMoth, Song Meter); --time-format overrides",
                           types=(str,), nullable=True),
        "timezone": Key("UTC", "Time zone of recording times written without one (file names, "
                        "GUANO without an offset): UTC, an IANA name or +HH:MM; --timezone overrides", min=1),
        "progress_interval_s": Key(60.0, "Replay progress in the log at most this often, seconds "
                                   "(a terminal gets a live line instead)", min=1, max=86400),
    },
    "service": {
        "device_id": Key(None, "Name of this recorder in events and topics; null = host name", types=(str,), nullable=True),
        "state_dir": Key(None, "Outbox and clips; null = $STATE_DIRECTORY (systemd) or ~/.local/state/callwatch", types=(str,), nullable=True),
        "log_level": Key("info", "Log level", choices=("debug", "info", "warning", "error")),
        "warning_interval_s": Key(60.0, "Repeats of one warning are logged at most this often", min=0, max=86400),
        "min_free_mb": Key(200.0, "Below this much free disk, clips stop (events still flow)", min=0),
    },
}


class Section(Mapping):
    """A validated, read-only config section; keys read as attributes (``cfg.mqtt.port``)."""

    def __init__(self, values: dict, path: str = "") -> None:
        self._values = values
        self._path = path

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"{self._path + '.' if self._path else ''}{name}") from None

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Section({self.to_dict()!r})"

    def to_dict(self) -> dict:
        return {k: v.to_dict() if isinstance(v, Section) else _plain(v) for k, v in self._values.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, Section):
        return value.to_dict()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _type_name(types: tuple) -> str:
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "a mapping"}
    if float in types:
        types = tuple(t for t in types if t is not int)
    return " or ".join(names.get(t, t.__name__) for t in types)


def _check_value(key: Key, value: Any, path: str) -> Any:
    if value is None:
        if key.nullable:
            return None
        raise ConfigError(f"{path}: must be {_type_name(key.accepted())}, got null")
    accepted = key.accepted()
    # bool is an int in Python; YAML's `yes` must not pass as a port number.
    if isinstance(value, bool) and bool not in accepted:
        raise ConfigError(f"{path}: must be {_type_name(accepted)}, got {value!r}")
    if not isinstance(value, accepted):
        raise ConfigError(f"{path}: must be {_type_name(accepted)}, got {value!r}")
    if isinstance(key.default, float) and isinstance(value, int):
        value = float(value)
    if key.choices and value not in key.choices:
        raise ConfigError(f"{path}: must be one of {', '.join(map(str, key.choices))}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        # NaN compares false with every bound, so it would pass any range check; an infinite
        # size, wait or timeout is never what a recorder can honour.
        raise ConfigError(f"{path}: must be a finite number, got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        low, high = key.min, key.max
        if (low is not None and value < low) or (high is not None and value > high):
            if low is not None and high is not None:
                raise ConfigError(f"{path}: must be {_num(low)}..{_num(high)}, got {value!r}")
            if low is not None:
                raise ConfigError(f"{path}: must be >= {_num(low)}, got {value!r}")
            raise ConfigError(f"{path}: must be <= {_num(high)}, got {value!r}")
    if isinstance(value, str) and key.min is not None and len(value) < key.min:
        raise ConfigError(f"{path}: must not be empty")
    if isinstance(value, list):
        return [_check_item(key.item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {str(k): _check_item(key.item, v, f"{path}.{k}") for k, v in value.items()}
    return value


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _check_item(item: Any, value: Any, path: str) -> Any:
    if item is None:
        return value
    if isinstance(item, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: must be a mapping, got {value!r}")
        return _validate(item, value, path)
    return _check_value(Key(item(), "", types=(float, int) if item is float else (item,)), value, path)


def _validate(schema: dict, values: dict, path: str) -> Section:
    unknown = [k for k in values if k not in schema]
    if unknown:
        known = ", ".join(schema)
        raise ConfigError(f"{_join(path, unknown[0])}: unknown key (known here: {known})")
    out = {}
    for name, spec in schema.items():
        key_path = _join(path, name)
        if isinstance(spec, dict):
            given = values.get(name, {})
            if given is None:
                given = {}
            if not isinstance(given, dict):
                raise ConfigError(f"{key_path}: must be a mapping, got {given!r}")
            out[name] = _validate(spec, given, key_path)
        elif name in values:
            out[name] = _check_value(spec, values[name], key_path)
        else:
            out[name] = _check_value(spec, _copy(spec.default), key_path) if spec.default is not None else None
    return Section(out, path)


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict) else value


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


TOPIC_NAME_MAX = 64
"""Longest service.device_id, mqtt.topic_prefix and discovery prefix, characters."""


def check_topic_name(value: str, path: str, *, levels: bool) -> None:
    """An MQTT topic part that a broker accepts and a subscriber can filter on: no wildcards
    (+ #), no control characters, no leading $ (broker-internal topics), at most
    TOPIC_NAME_MAX characters; ``levels``: slashes allowed between non-empty levels (a
    prefix), else none at all (a device id, one level). Raises ConfigError."""
    bad = next((c for c in value if c in "+#" or ord(c) < 32 or 0x7f <= ord(c) < 0xa0), None)
    if bad is not None:
        raise ConfigError(f"{path}: must not contain {bad!r} (MQTT wildcards and control "
                          f"characters break the topics), got {value!r}")
    if value.startswith("$"):
        raise ConfigError(f"{path}: must not start with '$' (broker-internal topics), got {value!r}")
    if len(value) > TOPIC_NAME_MAX:
        raise ConfigError(f"{path}: at most {TOPIC_NAME_MAX} characters, got {len(value)}")
    if not levels and "/" in value:
        raise ConfigError(f"{path}: must not contain '/' (one topic level), got {value!r}")
    if levels and any(part == "" for part in value.split("/")):
        raise ConfigError(f"{path}: no empty topic levels (leading, trailing or double '/'), "
                          f"got {value!r}")
    if value != value.strip():
        raise ConfigError(f"{path}: no leading or trailing spaces, got {value!r}")


def _cross_checks(cfg: Section) -> None:
    """Rules that involve more than one key."""
    if cfg.service.device_id is not None:
        if not cfg.service.device_id:
            raise ConfigError("service.device_id: must not be empty (null = host name)")
        check_topic_name(cfg.service.device_id, "service.device_id", levels=False)
    check_topic_name(cfg.mqtt.topic_prefix, "mqtt.topic_prefix", levels=True)
    check_topic_name(cfg.mqtt.discovery.prefix, "mqtt.discovery.prefix", levels=True)
    silence = cfg.audio.silence_timeout_s
    if silence and silence < cfg.detection.hop_s + cfg.audio.liveness_timeout_s:
        raise ConfigError(
            f"audio.silence_timeout_s: must be 0 (off) or at least detection.hop_s + "
            f"audio.liveness_timeout_s ({cfg.detection.hop_s + cfg.audio.liveness_timeout_s:g} s), "
            f"got {silence:g}")
    for name in ("reopen_backoff_s",):
        low, high = (cfg.audio[name] + [0, 0])[:2]
        if len(cfg.audio[name]) != 2 or not 0 < low <= high:
            raise ConfigError(f"audio.{name}: must be [first, longest] with 0 < first <= longest, got {cfg.audio[name]}")
    low, high = (cfg.mqtt.reconnect_s + [0, 0])[:2]
    if len(cfg.mqtt.reconnect_s) != 2 or not 0 < low <= high:
        raise ConfigError(f"mqtt.reconnect_s: must be [first, longest] with 0 < first <= longest, got {cfg.mqtt.reconnect_s}")
    for name in ("snr_db", "gain_db"):
        pair = cfg.train.augment[name]
        if len(pair) != 2 or pair[0] > pair[1]:
            raise ConfigError(f"train.augment.{name}: must be [low, high] with low <= high, got {pair}")
    rt60 = cfg.train.augment.reverb_rt60_s
    if len(rt60) != 2 or not 0.01 <= rt60[0] <= rt60[1] <= 10:
        raise ConfigError(f"train.augment.reverb_rt60_s: must be [low, high] seconds with 0.01 <= low <= high "
                          f"<= 10, got {rt60}")
    drr = cfg.train.augment.reverb_drr_db
    if len(drr) != 2 or not -20 <= drr[0] <= drr[1] <= 60:
        raise ConfigError(f"train.augment.reverb_drr_db: must be [low, high] dB with -20 <= low <= high <= 60, "
                          f"got {drr}")
    if cfg.detection.confirm_k > cfg.detection.confirm_n:
        raise ConfigError(f"detection.confirm_k: must be <= confirm_n ({cfg.detection.confirm_n}), got {cfg.detection.confirm_k}")
    for label, value in cfg.detection.thresholds.items():
        if not 0 < value < 1:
            raise ConfigError(f"detection.thresholds.{label}: must be between 0 and 1, got {value}")
    tls = cfg.mqtt.tls
    if tls.cert_file and not tls.key_file:
        raise ConfigError("mqtt.tls.key_file: required when mqtt.tls.cert_file is set")
    if cfg.mqtt.password_file and not cfg.mqtt.username:
        raise ConfigError("mqtt.username: required when mqtt.password_file is set")
    split = cfg.train.split
    if split.validation + split.test >= 1:
        raise ConfigError(f"train.split: validation + test must be < 1, got {split.validation + split.test}")
    if split.folds == 1:
        raise ConfigError("train.split.folds: must be 0 (off) or at least 2, got 1")
    if split.folds and split.leave_one_group_out:
        raise ConfigError("train.split.folds: set either folds or leave_one_group_out, not both")
    if not cfg.train.labels or len(set(cfg.train.labels)) != len(cfg.train.labels):
        raise ConfigError(f"train.labels: must be distinct names, got {cfg.train.labels}")
    for i, ds in enumerate(cfg.train.datasets):
        for source, target in ds.classes.items():
            if target != "negative" and target not in cfg.train.labels:
                raise ConfigError(
                    f"train.datasets[{i}].classes.{source}: must be one of train.labels "
                    f"{cfg.train.labels} or 'negative', got {target!r}"
                )
    check_replay(cfg.replay)
    try:
        from device.features import FeatureParams, FeatureParamsError

        FeatureParams.from_dict(cfg.train.features.to_dict())
    except FeatureParamsError as exc:
        raise ConfigError(f"train.features: {exc}") from None


def check_replay(replay: Any) -> None:
    """replay.site_pattern compiles, replay.time_format names a date and time, replay.timezone
    is known."""
    import re

    from device.recording import TimeError, check_time_format, parse_timezone

    if replay.site_pattern is not None:
        try:
            re.compile(replay.site_pattern)
        except re.error as exc:
            raise ConfigError(f"replay.site_pattern: not a regular expression ({exc})") from None
    try:
        check_time_format(replay.time_format)
        parse_timezone(replay.timezone)
    except TimeError as exc:
        raise ConfigError(str(exc).replace("--timezone", "replay.timezone")) from None


def validate(values: dict | None, *, source: str = "config") -> Section:
    """Validate a parsed config mapping and fill in defaults."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: must be a mapping of sections, got {type(values).__name__}")
    cfg = _validate(SCHEMA, values, "")
    _cross_checks(cfg)
    return cfg


def default_config_path() -> Path | None:
    env = os.environ.get("CALLWATCH_CONFIG")
    if env:
        return Path(env)
    return next((p for p in DEFAULT_CONFIG_PATHS if p.is_file()), None)


def load_config(path: str | Path | None = None) -> Section:
    """Read and validate a config file; ``None`` looks in the default places, else defaults."""
    path = Path(path) if path is not None else default_config_path()
    if path is None:
        return validate({})
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (expected UTF-8 YAML)") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}:{where}: {problem}") from None
    try:
        return validate(values, source="top level")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def resolved_yaml(cfg: Section) -> str:
    """The full config with every default, as YAML (written next to every output)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def schema_reference() -> str:
    """Markdown table of every key, its default and meaning (for the README)."""
    rows = ["| key | default | meaning |", "|---|---|---|"]

    def walk(schema: dict, path: str) -> None:
        for name, spec in schema.items():
            key_path = _join(path, name)
            if isinstance(spec, dict):
                walk(spec, key_path)
            else:
                default = yaml.safe_dump(spec.default, default_flow_style=True).strip().removesuffix("...").strip()
                rows.append(f"| `{key_path}` | `{default}` | {spec.doc} |")
                if isinstance(spec.item, dict):
                    walk(spec.item, key_path + "[]")

    walk(SCHEMA, "")
    return "\n".join(rows)


def commented_yaml(overrides: dict | None = None) -> str:
    """Every key with its default (or an override) and its meaning as a comment above it."""
    lines: list[str] = []

    def dump(value: Any) -> str:
        return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...").strip()

    def walk(schema: dict, given: dict, indent: str) -> None:
        for name, spec in schema.items():
            if isinstance(spec, dict):
                lines.append(f"{indent}{name}:")
                walk(spec, given.get(name, {}), indent + "  ")
                continue
            value = given.get(name, spec.default)
            lines.append(f"{indent}# {spec.doc}")
            if isinstance(value, list) and value and isinstance(value[0], dict):
                lines.append(f"{indent}{name}:")
                for entry in value:
                    body = yaml.safe_dump(entry, sort_keys=False, width=1000).splitlines()
                    lines.append(f"{indent}  - {body[0]}")
                    lines.extend(f"{indent}    {line}" for line in body[1:])
            else:
                lines.append(f"{indent}{name}: {dump(value)}")

    for section, spec in SCHEMA.items():
        lines.append(f"{section}:")
        walk(spec, (overrides or {}).get(section, {}), "  ")
        lines.append("")
    return "\n".join(lines)
