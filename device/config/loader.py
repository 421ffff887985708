"""Reading config.yaml: the root :class:`Config`, :func:`load_config` and :func:`validate`.

:func:`load_config` reads a YAML file, refuses unknown keys, wrong types and out-of-range values
with one line naming the key path (``mqtt.port: must be 1..65535, got 70000``), and returns a
:class:`Config` with every default filled in: typed sections (``cfg.detection`` is a
:class:`DetectionSection`). Secrets (the MQTT password) are never read from this file: only the
name of a file or systemd credential that holds them.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from device.config.fields import ConfigError, Section, build, section, set_paths
from device.config.rules import check_all
from device.config.sections_convert import ConvertSection
from device.config.sections_device import (
    AudioSection,
    DetectionSection,
    MqttSection,
    OutputsSection,
    ReplaySection,
    ServiceSection,
)
from device.config.sections_train import TrainSection

DEFAULT_CONFIG_PATHS = (Path("config.yaml"), Path("/etc/callwatch/config.yaml"))
"""Where the tools look when --config is not given (first that exists); $CALLWATCH_CONFIG first."""


@dataclass(frozen=True, eq=False, repr=False)
class Config(Section):
    """The whole of config.yaml, one section per tool or stage (in the file's order)."""

    audio: AudioSection = section(AudioSection)
    train: TrainSection = section(TrainSection)
    convert: ConvertSection = section(ConvertSection)
    detection: DetectionSection = section(DetectionSection)
    mqtt: MqttSection = section(MqttSection)
    outputs: OutputsSection = section(OutputsSection)
    replay: ReplaySection = section(ReplaySection)
    service: ServiceSection = section(ServiceSection)


set_paths(Config)


def validate(values: Any, *, source: str = "config") -> Config:
    """Validate a parsed config mapping and fill in defaults."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: must be a mapping of sections, got {type(values).__name__}")
    cfg = build(Config, values, "")
    check_all(cfg)
    return cfg


def default_config_path() -> Path | None:
    env = os.environ.get("CALLWATCH_CONFIG")
    if env:
        return Path(env)
    return next((p for p in DEFAULT_CONFIG_PATHS if p.is_file()), None)


def load_config(path: str | Path | None = None) -> Config:
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


def resolved_yaml(cfg: Config) -> str:
    """The full config with every default, as YAML (written next to every output)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
