"""Rules that involve more than one key: one function per section, each raising ConfigError
with one line naming the key (``detection.confirm_k: must be <= confirm_n (1), got 3``).

Single settings (type, bounds, choices) are checked by device.config.fields from the sections'
field metadata; what is here cannot be said of one field alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from device.config.fields import ConfigError

if TYPE_CHECKING:
    from device.config.loader import Config
    from device.config.sections_device import (
        AudioSection,
        DetectionSection,
        MqttSection,
        ReplaySection,
        ServiceSection,
    )
    from device.config.sections_features import FeatureSection
    from device.config.sections_train import AugmentSection, TrainSection

TOPIC_NAME_MAX = 64
"""Longest service.device_id, mqtt.topic_prefix and discovery prefix, characters."""


def check_all(cfg: Config) -> None:
    """Every section's rules, in the order of the sections' dependencies."""
    check_service(cfg.service)
    check_mqtt(cfg.mqtt)
    check_audio(cfg.audio, detection=cfg.detection)
    check_augment(cfg.train.augment)
    check_detection(cfg.detection)
    check_train(cfg.train)
    check_replay(cfg.replay)
    problems = feature_problems(cfg.train.features)
    if problems:
        raise ConfigError(f"train.features: {'; '.join(problems)}")


def check_topic_name(value: str, path: str, *, levels: bool) -> None:
    """An MQTT topic part that a broker accepts and a subscriber can filter on: no wildcards
    (+ #), no control characters, no leading $ (broker-internal topics), at most
    TOPIC_NAME_MAX characters; ``levels``: slashes allowed between non-empty levels (a
    prefix), else none at all (a device id, one level). Raises ConfigError."""
    bad = next((c for c in value if c in "+#" or ord(c) < 32 or 0x7F <= ord(c) < 0xA0), None)
    if bad is not None:
        raise ConfigError(
            f"{path}: must not contain {bad!r} (MQTT wildcards and control "
            f"characters break the topics), got {value!r}"
        )
    if value.startswith("$"):
        raise ConfigError(
            f"{path}: must not start with '$' (broker-internal topics), got {value!r}"
        )
    if len(value) > TOPIC_NAME_MAX:
        raise ConfigError(f"{path}: at most {TOPIC_NAME_MAX} characters, got {len(value)}")
    if not levels and "/" in value:
        raise ConfigError(f"{path}: must not contain '/' (one topic level), got {value!r}")
    if levels and any(part == "" for part in value.split("/")):
        raise ConfigError(
            f"{path}: no empty topic levels (leading, trailing or double '/'), got {value!r}"
        )
    if value != value.strip():
        raise ConfigError(f"{path}: no leading or trailing spaces, got {value!r}")


def _check_wait_range(pair: list[float], path: str) -> None:
    low, high = (pair + [0, 0])[:2]
    if len(pair) != 2 or not 0 < low <= high:
        raise ConfigError(f"{path}: must be [first, longest] with 0 < first <= longest, got {pair}")


def check_service(service: ServiceSection) -> None:
    if service.device_id is not None:
        if not service.device_id:
            raise ConfigError("service.device_id: must not be empty (null = host name)")
        check_topic_name(service.device_id, "service.device_id", levels=False)


def check_mqtt(mqtt: MqttSection) -> None:
    check_topic_name(mqtt.topic_prefix, "mqtt.topic_prefix", levels=True)
    check_topic_name(mqtt.discovery.prefix, "mqtt.discovery.prefix", levels=True)
    _check_wait_range(mqtt.reconnect_s, "mqtt.reconnect_s")
    if mqtt.tls.cert_file and not mqtt.tls.key_file:
        raise ConfigError("mqtt.tls.key_file: required when mqtt.tls.cert_file is set")
    if mqtt.password_file and not mqtt.username:
        raise ConfigError("mqtt.username: required when mqtt.password_file is set")


def check_audio(audio: AudioSection, *, detection: DetectionSection) -> None:
    silence = audio.silence_timeout_s
    least = detection.hop_s + audio.liveness_timeout_s
    if silence and silence < least:
        raise ConfigError(
            f"audio.silence_timeout_s: must be 0 (off) or at least detection.hop_s + "
            f"audio.liveness_timeout_s ({least:g} s), got {silence:g}"
        )
    _check_wait_range(audio.reopen_backoff_s, "audio.reopen_backoff_s")


def check_augment(augment: AugmentSection) -> None:
    for name, pair in (("snr_db", augment.snr_db), ("gain_db", augment.gain_db)):
        if len(pair) != 2 or pair[0] > pair[1]:
            raise ConfigError(
                f"train.augment.{name}: must be [low, high] with low <= high, got {pair}"
            )
    rt60 = augment.reverb_rt60_s
    if len(rt60) != 2 or not 0.01 <= rt60[0] <= rt60[1] <= 10:
        raise ConfigError(
            f"train.augment.reverb_rt60_s: must be [low, high] seconds with 0.01 <= low <= high "
            f"<= 10, got {rt60}"
        )
    drr = augment.reverb_drr_db
    if len(drr) != 2 or not -20 <= drr[0] <= drr[1] <= 60:
        raise ConfigError(
            f"train.augment.reverb_drr_db: must be [low, high] dB with -20 <= low <= high <= 60, "
            f"got {drr}"
        )


def check_detection(detection: DetectionSection) -> None:
    if detection.confirm_k > detection.confirm_n:
        raise ConfigError(
            f"detection.confirm_k: must be <= confirm_n ({detection.confirm_n}), "
            f"got {detection.confirm_k}"
        )
    for label, value in detection.thresholds.items():
        if not 0 < value < 1:
            raise ConfigError(f"detection.thresholds.{label}: must be between 0 and 1, got {value}")


def check_train(train: TrainSection) -> None:
    split = train.split
    if split.validation + split.test >= 1:
        raise ConfigError(
            f"train.split: validation + test must be < 1, got {split.validation + split.test}"
        )
    if split.folds == 1:
        raise ConfigError("train.split.folds: must be 0 (off) or at least 2, got 1")
    if split.folds and split.leave_one_group_out:
        raise ConfigError("train.split.folds: set either folds or leave_one_group_out, not both")
    if not train.labels or len(set(train.labels)) != len(train.labels):
        raise ConfigError(f"train.labels: must be distinct names, got {train.labels}")
    for i, ds in enumerate(train.datasets):
        for source, target in ds.classes.items():
            if target != "negative" and target not in train.labels:
                raise ConfigError(
                    f"train.datasets[{i}].classes.{source}: must be one of train.labels "
                    f"{train.labels} or 'negative', got {target!r}"
                )


def feature_problems(features: FeatureSection) -> list[str]:
    """What is wrong between the feature settings (each alone is checked by its field's
    bounds): the config's ``train.features`` and every ``FeatureParams`` (model.json) alike."""
    problems = []
    n_fft = features.n_fft
    if n_fft & (n_fft - 1):
        problems.append(f"n_fft: must be a power of two, got {n_fft}")
    if features.win_length > n_fft:
        problems.append(f"win_length: must be 1..n_fft ({n_fft}), got {features.win_length}")
    if features.hop_length > n_fft:
        problems.append(f"hop_length: must be 1..n_fft ({n_fft}), got {features.hop_length}")
    if features.n_mels > n_fft // 2:
        problems.append(f"n_mels: must be 1..n_fft/2, got {features.n_mels}")
    if not features.fmin < features.fmax <= features.sample_rate / 2:
        problems.append(
            f"fmin/fmax: need 0 <= fmin < fmax <= sample_rate/2, got {features.fmin}, {features.fmax}"
        )
    return problems


def check_replay(replay: ReplaySection) -> None:
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
