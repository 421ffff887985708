"""The ``convert`` section of config.yaml.

A frozen dataclass whose fields carry default, bounds, choices and description
(device.config.fields); ``convert.core.ConvertSettings`` is this section.
"""

from dataclasses import dataclass

from device.config.fields import Section, setting


@dataclass(frozen=True, eq=False, repr=False)
class ConvertSection(Section):
    """The ``convert`` section."""

    auc_tolerance: float = setting(
        0.01,
        minimum=0,
        maximum=1,
        doc="Largest ROC-AUC that int8 may lose against float before convert fails",
    )
    size_budget_kb: float = setting(
        100.0,
        minimum=1,
        doc="Warn when the int8 model is larger than this, KiB",
    )
    representative_windows: int = setting(
        300,
        minimum=10,
        maximum=100000,
        doc="Calibration windows used for int8 quantization",
    )
