"""Helper: the one check of a model's description, shared by the bundle (``model.json``, read
by the device) and the run record (``run.json``, read by convert).

Contract: :func:`check_model` takes the decoded JSON object and returns a
:class:`ModelDescription` whose labels, features, window and thresholds agree with each other,
or raises :class:`ModelCheckError` with one line naming the key (the caller puts the file name
in front). Pure, thread-safe.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from device.features import FeatureParams, FeatureParamsError

MODEL_KEYS = ("labels", "features", "window_s", "thresholds")
"""Keys every model description has (``recommended_hop_s`` is optional: 0.5 s; ``events``
too: without it, the centre rule)."""

EXTENT_RULES = ("trim", "centre", "windows", "frames")
"""How an event's extent comes from its run of windows (device.detector): "trim" cuts the
calibrated seconds (``trim_s``: [start, end]) off the run's span; "centre" lets each window stand
for the hop at its centre ((window_s - hop_s) / 2 off each side); "windows" is the whole span of
the windows that fired; "frames" makes events from the model's frame output stitched across
windows (``threshold``: the frame score an event needs, probability units; device.frames). A
bundle without ``events`` (made before the rule was written down) gets
"centre": which windows fire, and so thresholds and counts, do not depend on the rule."""


class ModelCheckError(ValueError):
    """A model description that does not hold together; one line naming the key."""


@dataclass(frozen=True)
class ModelDescription:
    """What a model needs to be run: its outputs, its front end and its decision rule."""

    labels: tuple[str, ...]
    """Output labels, in the order of the model's output vector."""
    features: FeatureParams
    """Front-end settings the model was trained with."""
    window_s: float
    """Seconds of audio in one model input (at least one spectrogram frame)."""
    thresholds: dict[str, float]
    """Decision threshold per label, probability units in (0, 1), in the order of labels."""
    recommended_hop_s: float = 0.5
    """Seconds between windows the thresholds were calibrated with."""


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool (JSON's true is no number of seconds)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_extent(entry: Any) -> bool:
    if not isinstance(entry, dict) or entry.get("rule") not in EXTENT_RULES:
        return False
    trim = entry.get("trim_s")
    if entry["rule"] == "frames":
        return is_number(entry.get("threshold")) and 0 < entry["threshold"] < 1
    return entry["rule"] != "trim" or (
        isinstance(trim, list) and len(trim) == 2 and all(is_number(x) and x >= 0 for x in trim)
    )


def check_model(m: Mapping[str, Any]) -> ModelDescription:
    """The checked description in ``m`` (a decoded model.json or run.json)."""
    missing = [k for k in MODEL_KEYS if k not in m]
    if missing:
        raise ModelCheckError(f"missing key(s) {', '.join(missing)}")
    labels = m["labels"]
    if not isinstance(labels, list):
        raise ModelCheckError(f"labels must be a list of names, got {labels!r}")
    if (
        not labels
        or not all(isinstance(x, str) and x for x in labels)
        or len(set(labels)) != len(labels)
    ):
        raise ModelCheckError(f"labels must be distinct non-empty strings, got {labels!r}")
    try:
        features = FeatureParams.from_dict(m["features"])
    except (FeatureParamsError, TypeError, AttributeError) as exc:
        raise ModelCheckError(f"features: {exc}") from None
    window_s = m["window_s"]
    if not (is_number(window_s) and window_s > 0 and features.window_frames(window_s) >= 1):
        raise ModelCheckError(f"window_s must be a number of seconds > 0, got {window_s!r}")
    thresholds = m["thresholds"]
    if not isinstance(thresholds, dict) or not all(map(is_number, thresholds.values())):
        raise ModelCheckError(f"thresholds must be a mapping label -> number, got {thresholds!r}")
    if set(thresholds) != set(labels):
        raise ModelCheckError(f"thresholds must name exactly the labels {labels}")
    bad = {k: v for k, v in thresholds.items() if not 0.0 < v < 1.0}
    if bad:
        raise ModelCheckError(f"thresholds must be in (0, 1) (probabilities), got {bad}")
    events = m.get("events", {})
    extent = events.get("extent", {}) if isinstance(events, dict) else None
    if not isinstance(extent, dict) or not all(map(_is_extent, extent.values())):
        raise ModelCheckError(
            f"events must be a mapping with extent: label -> {{rule: one of {EXTENT_RULES}, "
            f"trim_s: [start, end] >= 0, threshold (frames) in (0, 1)}}, got {events!r}"
        )
    hop = m.get("recommended_hop_s", 0.5)
    if not (is_number(hop) and hop > 0):
        raise ModelCheckError(f"recommended_hop_s must be a number of seconds > 0, got {hop!r}")
    return ModelDescription(
        labels=tuple(labels),
        features=features,
        window_s=float(window_s),
        thresholds={label: float(thresholds[label]) for label in labels},
        recommended_hop_s=float(hop),
    )
