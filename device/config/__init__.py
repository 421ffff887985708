"""config.yaml: one schema, one set of defaults, for train, convert and the device.

The typed sections are the schema: each section of config.yaml is a frozen dataclass
(``sections_device.py``, ``sections_train.py``, ``sections_features.py``,
``sections_convert.py``) whose fields carry default, bounds, choices and
description (the engine in ``fields.py``). :func:`load_config` returns a :class:`Config` of
those sections; the rules across keys are in ``rules.py``, the README table and the commented
config.yaml are generated in ``docs.py``. Nothing else states a default: ``FeatureParams``,
``DetectorParams``, ``AugmentParams`` and ``ConvertSettings`` are these sections or take their
defaults from them.
"""

from device.config.docs import commented_yaml, schema_reference
from device.config.fields import ConfigError, Key, Section, schema_of
from device.config.loader import (
    DEFAULT_CONFIG_PATHS,
    Config,
    default_config_path,
    load_config,
    resolved_yaml,
    validate,
)
from device.config.rules import TOPIC_NAME_MAX, check_replay, check_topic_name
from device.config.sections_convert import ConvertSection
from device.config.sections_device import (
    AudioSection,
    ClipsSection,
    DetectionSection,
    DiscoverySection,
    MqttSection,
    OutboxSection,
    OutputsSection,
    ReplaySection,
    ServiceSection,
    TlsSection,
)
from device.config.sections_features import FeatureSection
from device.config.sections_train import (
    AugmentSection,
    CalibrationSection,
    DatasetSection,
    ModelSection,
    SplitSection,
    TrainSection,
)


def _as_dict(cls: type[Section]) -> dict:
    return {
        name: _as_dict(spec) if isinstance(spec, type) else spec
        for name, spec in schema_of(cls).items()
    }


SCHEMA: dict = _as_dict(Config)
"""The schema as nested mappings of :class:`Key` (read-only view of the sections, for tools
and tests that walk every key)."""

DATASET: dict = _as_dict(DatasetSection)
"""The keys of one ``train.datasets`` entry."""

__all__ = [
    "DATASET",
    "DEFAULT_CONFIG_PATHS",
    "SCHEMA",
    "TOPIC_NAME_MAX",
    "AudioSection",
    "AugmentSection",
    "CalibrationSection",
    "ClipsSection",
    "Config",
    "ConfigError",
    "ConvertSection",
    "DatasetSection",
    "DetectionSection",
    "DiscoverySection",
    "FeatureSection",
    "Key",
    "ModelSection",
    "MqttSection",
    "OutboxSection",
    "OutputsSection",
    "ReplaySection",
    "Section",
    "ServiceSection",
    "SplitSection",
    "TlsSection",
    "TrainSection",
    "check_replay",
    "check_topic_name",
    "commented_yaml",
    "default_config_path",
    "load_config",
    "resolved_yaml",
    "schema_reference",
    "validate",
]
