"""The run record: ``run.json`` in a run folder, what ``python -m train`` tells
``python -m convert`` about the model it trained (as model.json tells the device).

Written by train with :meth:`RunRecord.write`, read by convert with :meth:`RunRecord.load`
(like :func:`device.bundle.write_bundle` / :func:`device.bundle.load_bundle`); the model's
description is checked by the same code as the bundle's (device.modelcheck). It lives in
device/ only because train and convert both import device and neither imports the other; the
daemon never loads it. Pure data; thread-safe.

run.json::

    {
      "labels": ["capuchinbird"], "features": {FeatureParams fields}, "window_s": 3.0,
      "thresholds": {"capuchinbird": 0.62}, "recommended_hop_s": 0.5,
      "events": {"detection": {...}, "extent": {...}},   # the event rule, as in model.json
      "calibration": {"method": ..., "target": ..., "labels": {...}},
      "metrics": {"float": {...}}, "evaluation": {...}, "model": {...}, "title": "...",
      "final": {...},                                     # --final runs only
      "adaptation": {...}                                 # python -m train.adapt runs only
    }
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from device.fileio import write_atomic
from device.modelcheck import ModelCheckError, ModelDescription, check_model

RUN_JSON = "run.json"
RETRAIN = "re-run 'python -m train' to make a complete run folder"
"""What to do about a run folder that is incomplete or damaged."""


class RunRecordError(Exception):
    """A run.json that convert cannot use; one line naming the file (and what to do)."""


@dataclass(frozen=True)
class RunRecord(ModelDescription):
    """A trained model, as its run folder's run.json describes it: the model's description
    (labels, features, window_s, thresholds, recommended_hop_s) and what training adds."""

    events: dict[str, Any] = field(default_factory=dict)
    """The event rule thresholds and extents were calibrated for (model.json's ``events``)."""
    calibration: dict[str, Any] = field(default_factory=dict)
    """How the thresholds were chosen: method, target, per-label details."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """Test metrics; ``float`` per label (cross-validated for a final model)."""
    evaluation: dict[str, Any] = field(default_factory=dict)
    """How the metrics were computed (clip hop, clip score, chunks)."""
    model: dict[str, Any] = field(default_factory=dict)
    """The network: parameters, input shape, output kind."""
    title: str = ""
    """The run's name, for reports."""
    final: dict[str, Any] | None = None
    """For a model trained on every group (``--final``): its epochs, folds and verification."""
    adaptation: dict[str, Any] | None = None
    """For a model adapted to a site (``python -m train.adapt``): from which run, on what audio,
    with how many pseudo-labels."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Keys this version does not know (kept, written back)."""

    def to_dict(self) -> dict[str, Any]:
        """The run.json object."""
        out: dict[str, Any] = {
            "labels": list(self.labels),
            "features": self.features.to_dict(),
            "window_s": float(self.window_s),
            "thresholds": {label: float(self.thresholds[label]) for label in self.labels},
            "recommended_hop_s": float(self.recommended_hop_s),
            "events": self.events,
            "calibration": self.calibration,
            "metrics": self.metrics,
            "evaluation": self.evaluation,
            "model": self.model,
            "title": self.title,
        }
        if self.final is not None:
            out["final"] = self.final
        if self.adaptation is not None:
            out["adaptation"] = self.adaptation
        return {**out, **self.extra}

    def write(self, folder: str | Path) -> Path:
        """Write ``folder/run.json`` atomically; returns its path."""
        path = Path(folder) / RUN_JSON
        write_atomic(path, json.dumps(self.to_dict(), indent=2, default=float) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> RunRecord:
        """Read and check ``folder/run.json``; :class:`RunRecordError` (one line) when it is
        missing, not JSON, or its model description does not hold together."""
        path = Path(folder) / RUN_JSON
        try:
            info = json.loads(path.read_text())
        except FileNotFoundError:
            raise RunRecordError(f"{path}: missing (run description); {RETRAIN}") from None
        except (OSError, UnicodeDecodeError, RecursionError, ValueError) as exc:
            raise RunRecordError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(info, dict):
            raise RunRecordError(f"{path}: must be a JSON object")
        try:
            model = check_model(info)
        except ModelCheckError as exc:
            hint = f"; {RETRAIN}" if str(exc).startswith("missing key") else ""
            raise RunRecordError(f"{path}: {exc}{hint}") from None
        known = {f.name for f in fields(cls) if f.name != "extra"}
        title = info.get("title", "")
        final, adaptation = info.get("final"), info.get("adaptation")
        return cls(
            **{f.name: getattr(model, f.name) for f in fields(ModelDescription)},
            events=_mapping(info, "events", path),
            calibration=_mapping(info, "calibration", path),
            metrics=_mapping(info, "metrics", path),
            evaluation=_mapping(info, "evaluation", path),
            model=_mapping(info, "model", path),
            title=title if isinstance(title, str) else str(title),
            final=_mapping(info, "final", path) if final is not None else None,
            adaptation=_mapping(info, "adaptation", path) if adaptation is not None else None,
            extra={k: v for k, v in info.items() if k not in known},
        )


def _mapping(info: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = info.get(key) or {}
    if not isinstance(value, dict):
        raise RunRecordError(f"{path}: {key} must be a JSON object, got {value!r}")
    return value
