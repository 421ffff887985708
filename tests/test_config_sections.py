"""The typed sections are the schema: loading gives typed, frozen sections, and the classes
that use the settings (FeatureParams, DetectorParams, AugmentParams, ConvertSettings) hold
the sections' defaults and bounds, not copies of their own."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from convert.core import ConvertSettings
from device.config import (
    SCHEMA,
    AudioSection,
    AugmentSection,
    Config,
    ConfigError,
    ConvertSection,
    DatasetSection,
    DetectionSection,
    FeatureSection,
    Key,
    MqttSection,
    TlsSection,
    validate,
)
from device.config.fields import check_value, schema_of
from device.detector import DetectorParams
from device.features import FeatureParams, FeatureParamsError
from train.augment import AugmentParams

REPO = Path(__file__).resolve().parents[1]


def leaves(schema: dict = SCHEMA, prefix: str = ""):
    for name, spec in schema.items():
        path = f"{prefix}.{name}" if prefix else name
        if isinstance(spec, dict):
            yield from leaves(spec, path)
        else:
            yield path, spec


def test_loading_gives_typed_frozen_sections():
    cfg = validate({"detection": {"hop_s": 1}, "train": {"datasets": [{"path": "x"}]}})
    assert isinstance(cfg, Config)
    assert isinstance(cfg.audio, AudioSection) and isinstance(cfg.detection, DetectionSection)
    assert isinstance(cfg.mqtt, MqttSection) and isinstance(cfg.mqtt.tls, TlsSection)
    assert isinstance(cfg.train.features, FeatureSection)
    assert isinstance(cfg.train.datasets[0], DatasetSection)
    assert cfg.detection.hop_s == 1.0 and type(cfg.detection.hop_s) is float  # a number setting
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.detection.hop_s = 2.0  # type: ignore[misc]
    assert "port" in cfg.mqtt and "mqtt" in cfg and "mqtt" not in cfg.mqtt
    assert cfg.mqtt.tls["ca_file"] is None and cfg.mqtt["port"] == 1883
    with pytest.raises(KeyError):
        cfg.mqtt["colour"]


def test_every_default_passes_its_own_checks():
    """A default outside its bounds or of another type than its annotation is a schema typo."""
    for path, key in leaves():
        assert isinstance(key, Key)
        assert key.types, path
        if key.default is not None:
            assert check_value(key, key.default, path) == key.default, path


def test_unknown_or_misspelt_settings_name_their_path():
    cfg = validate({})
    with pytest.raises(AttributeError, match=r"train\.features\.n_mel$"):
        cfg.train.features.n_mel  # noqa: B018
    with pytest.raises(ConfigError, match=r"train\.datasets\[0\]\.pth: unknown key"):
        validate({"train": {"datasets": [{"pth": "x"}]}})


def test_feature_params_are_the_feature_section():
    """One set of defaults: FeatureParams() is the config's default front end."""
    section = FeatureSection()
    params = FeatureParams()
    assert isinstance(params, FeatureSection)
    for name in schema_of(FeatureSection):
        assert getattr(params, name) == getattr(section, name), name
    assert validate({}).train.features == section


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        # The bounds of the config apply to a model.json too (the front end accepted these before).
        ({"log_floor": 0.7}, "log_floor: must be 1e-20..0.5, got 0.7"),
        ({"pcen_bias": 0.0}, "pcen_bias: must be 1e-06..100, got 0.0"),
        ({"n_fft": 32768}, "n_fft: must be 16..16384, got 32768"),
    ],
)
def test_feature_params_and_config_refuse_the_same_values(changes, message):
    with pytest.raises(FeatureParamsError, match=message):
        FeatureParams(**changes)
    with pytest.raises(ConfigError, match=f"train.features.{message}"):
        validate({"train": {"features": changes}})


def test_feature_rules_across_keys_are_shared_with_the_config():
    with pytest.raises(FeatureParamsError, match="win_length: must be 1..n_fft"):
        FeatureParams(win_length=600)
    with pytest.raises(ConfigError, match="train.features: win_length: must be 1..n_fft"):
        validate({"train": {"features": {"win_length": 600}}})


def test_detector_params_take_the_detection_sections_defaults_and_bounds():
    params = DetectorParams(threshold=0.5)
    detection = DetectionSection()
    for name in ("smoothing_windows", "confirm_k", "confirm_n", "hysteresis", "merge_gap_s",
                 "refractory_s", "max_event_s"):
        assert getattr(params, name) == getattr(detection, name), name
    assert params.hysteresis == 0.1  # what every user got through the config (it was 0.0 here)
    with pytest.raises(ValueError, match="max_event_s: must be 0.5..86400, got 0.1"):
        DetectorParams(threshold=0.5, max_event_s=0.1)
    with pytest.raises(ValueError, match="confirm_n: must be 1..100, got 101"):
        DetectorParams(threshold=0.5, confirm_k=1, confirm_n=101)
    with pytest.raises(ValueError, match="confirm_k <= confirm_n"):
        DetectorParams(threshold=0.5, confirm_k=3, confirm_n=2)


def test_augment_and_convert_settings_are_the_sections():
    assert AugmentParams is AugmentSection
    assert ConvertSettings is ConvertSection
    assert validate({}).train.augment == AugmentParams()
    assert validate({"convert": {"auc_tolerance": 0.05}}).convert == ConvertSettings(0.05, 100.0, 300)
