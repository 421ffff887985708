"""The model bundle: ``model.json`` beside ``model.tflite``, the one contract between training and the field.

``convert`` writes it with :func:`write_bundle`; the device reads it with :func:`load_bundle`,
which refuses a bundle whose manifest is missing, whose sha256 does not match the model file,
whose feature settings this code cannot reproduce, or whose shapes disagree with each other.

model.json (format_version 1)::

    {
      "format": "callwatch-model", "format_version": 1,
      "model_file": "model.tflite", "sha256": "<hex of model_file>",
      "labels": ["capuchinbird"],                      # output order
      "features": {FeatureParams fields},               # device.features.FeatureParams
      "window_s": 3.0,                                  # model input span, seconds
      "input_shape": [1, frames, n_mels, 1],
      "input_dtype": "int8", "output_dtype": "int8",
      "input_quantization": {"scale": s, "zero_point": z},   # null for float models
      "output_quantization": {"scale": s, "zero_point": z},
      "output_kind": "logits",                          # sigmoid applied after dequantizing
      "thresholds": {"capuchinbird": 0.62},             # probability units, per label
      "recommended_hop_s": 0.5,
      "events": {                                       # the event rule it was calibrated for
        "detection": {"hop_s": 0.5, "smoothing_windows": 1, "confirm_k": 1, "confirm_n": 1,
                      "hysteresis": 0.1, "merge_gap_s": 0.0, "refractory_s": 0.0, "max_event_s": 60.0},
        "extent": {"capuchinbird": {"rule": "trim", "trim_s": [1.2, 1.3], "calls": 40}}
      },                                                # or {"rule": "frames", "threshold": 0.4}
      "frames": {"shape": [1, 9, 1, 1], "step_frames": 16, "step_s": 0.32,   # optional second
                 "dtype": "int8", "quantization": {"scale": s, "zero_point": z}},  # output
      "metrics": {...},                                 # test metrics of float and int8
      "variants": {"edgetpu": {"file": "model_edgetpu.tflite", "sha256": "..."}},
      "callwatch_version": "0.1.0", "created_utc": "2026-11-22T23:00:00Z",
      "manifest_sha256": "<hex>"                        # see seal_manifest
    }

Integrity: ``sha256`` covers the model file and ``manifest_sha256`` covers every other key of
the manifest (and so the model's hash too): an edit to a feature setting that keeps the input
shape (fmin, fmax, log_floor) would silently change what the model hears, so it is refused.
Tools that change a bundle on purpose (recalibration) reseal it with :func:`seal_manifest`.
A bundle made before this key existed still loads, with a warning to re-run convert. Files
named in the manifest must lie inside the bundle folder.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from device import __version__
from device.config import DetectionSection
from device.features import FeatureParams
from device.fileio import write_atomic
from device.integrity import manifest_digest, seal_manifest, sha256_of
from device.modelcheck import ModelCheckError, check_model

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "callwatch-model"
BUNDLE_VERSION = 1
MANIFEST_NAME = "model.json"
MODEL_NAME = "model.tflite"
OUTPUT_KINDS = ("logits", "probabilities")
EVENT_SETTINGS = ("hop_s", "smoothing_windows", "confirm_k", "confirm_n", "hysteresis", "merge_gap_s",
                  "refractory_s", "max_event_s")
"""The detection settings (config ``detection:``) that thresholds and trims were calibrated with."""


def event_settings(detection: DetectionSection) -> dict:
    """The ``events.detection`` record of model.json from a config's ``detection`` section."""
    return {key: getattr(detection, key) for key in EVENT_SETTINGS}


class BundleError(Exception):
    """A model bundle that the device must not run; the message is one line naming the file."""


@dataclass(frozen=True)
class Quantization:
    """Affine quantization of a tensor: real = scale * (q - zero_point)."""

    scale: float
    zero_point: int

    def to_dict(self) -> dict:
        return {"scale": self.scale, "zero_point": self.zero_point}


@dataclass(frozen=True)
class Bundle:
    """A validated model bundle, as the device uses it."""

    model_path: Path
    """Absolute path of the .tflite file (its sha256 matched the manifest)."""
    labels: tuple[str, ...]
    """Output labels, in the order of the model's output vector."""
    features: FeatureParams
    """Front-end settings the model was trained with."""
    window_s: float
    """Seconds of audio in one model input."""
    input_shape: tuple[int, ...]
    """Model input shape, (1, frames, n_mels, 1)."""
    input_dtype: str
    output_dtype: str
    input_quantization: Quantization | None
    output_quantization: Quantization | None
    output_kind: str
    """"logits" (apply a sigmoid after dequantizing) or "probabilities"."""
    thresholds: dict[str, float]
    """Calibrated decision threshold per label, probability units."""
    recommended_hop_s: float
    metrics: dict = field(default_factory=dict)
    events: dict = field(default_factory=dict)
    """The event rule: {"detection": settings calibrated with, "extent": {label: {"rule",
    "trim_s"}}}; empty for a bundle made before it was recorded (the centre rule)."""
    frames: dict = field(default_factory=dict)
    """The frame output, when the model has one: {"shape": [1, steps, 1, n_labels],
    "step_frames", "step_s", "dtype", "quantization"}; empty otherwise."""
    variants: dict = field(default_factory=dict)
    """Other files of the same model, e.g. {"edgetpu": {"file": ..., "sha256": ...}}."""
    manifest: dict = field(default_factory=dict)
    """The raw model.json, for reporting."""

    @property
    def window_frames(self) -> int:
        return self.input_shape[1]

    def extent_trims(self, hop_s: float) -> dict[str, tuple[float, float]]:
        """Per label, seconds cut off the start and the end of an event's run of windows, for
        windows every ``hop_s`` (see device.modelcheck.EXTENT_RULES)."""
        extent = self.events.get("extent", {})
        out = {}
        for label in self.labels:
            rule = extent.get(label, {"rule": "centre"})
            if rule["rule"] == "trim":
                out[label] = (float(rule["trim_s"][0]), float(rule["trim_s"][1]))
            elif rule["rule"] == "windows":
                out[label] = (0.0, 0.0)
            else:
                centre = max(0.0, (self.window_s - hop_s) / 2)
                out[label] = (centre, centre)
        return out

    @property
    def frame_rule(self) -> bool:
        """True when events come from the frame output (every label's extent rule is "frames")."""
        extent = self.events.get("extent", {})
        return bool(self.frames) and all(extent.get(label, {}).get("rule") == "frames" for label in self.labels)

    def event_thresholds(self) -> dict[str, float]:
        """Per label, the score an event needs: the frame threshold under the frame rule, else
        the window threshold."""
        if not self.frame_rule:
            return dict(self.thresholds)
        return {label: float(self.events["extent"][label]["threshold"]) for label in self.labels}

    def frame_layout(self, hop_s: float):
        """The :class:`device.frames.FrameLayout` for windows every ``hop_s`` under the frame
        rule; None otherwise."""
        from device.frames import FrameLayout

        if not self.frame_rule:
            return None
        return FrameLayout.at_hop(
            steps=int(self.frames["shape"][1]),
            step_frames=int(self.frames["step_frames"]),
            frame_rate=self.features.frame_rate,
            hop_s=hop_s,
        )

    def variant_path(self, name: str) -> Path | None:
        """Path of a verified variant (e.g. "edgetpu"), or None when the bundle has none."""
        entry = self.variants.get(name)
        if not entry:
            return None
        path = self.model_path.parent / entry["file"]
        _check_sha(path, entry.get("sha256", ""))
        return path


def _check_sha(path: Path, expected: str) -> None:
    if not path.is_file():
        raise BundleError(f"{path}: model file named in {MANIFEST_NAME} is missing")
    actual = sha256_of(path)
    if actual != expected:
        raise BundleError(
            f"{path}: sha256 {actual[:12]}… does not match {MANIFEST_NAME} ({expected[:12]}…); "
            "the model was replaced or damaged, re-run convert or copy the whole bundle again"
        )


def resolve_manifest(path: str | Path) -> Path:
    """model.json for a run folder, a .tflite file or the manifest itself."""
    path = Path(path)
    if path.is_dir():
        return path / MANIFEST_NAME
    if path.suffix == ".tflite":
        return path.with_name(MANIFEST_NAME)
    return path


def _quantization(value, where: str) -> Quantization | None:
    if value is None:
        return None
    try:
        return Quantization(float(value["scale"]), int(value["zero_point"]))
    except (KeyError, TypeError, ValueError):
        raise BundleError(f"{where}: expected {{scale, zero_point}}, got {value!r}") from None


def _check_types(m: dict, where: str) -> None:
    """Refuse a hand-edited or damaged manifest with one line, before any value is used."""

    def is_variant(entry) -> bool:
        return isinstance(entry, dict) and all(
            isinstance(entry.get(k), str) for k in ("file", "sha256")
        )

    checks = {
        "model_file": (lambda v: isinstance(v, str) and v != "", "a file name"),
        "sha256": (lambda v: isinstance(v, str), "a hex string"),
        "input_shape": (
            lambda v: isinstance(v, list) and all(type(x) is int for x in v),
            "a list of integers",
        ),
        "variants": (
            lambda v: isinstance(v, dict) and all(map(is_variant, v.values())),
            "a mapping name -> {file, sha256}",
        ),
        "frames": (
            lambda v: isinstance(v, dict) and isinstance(v.get("shape"), list) and len(v["shape"]) == 4
            and all(type(x) is int and x > 0 for x in v["shape"]) and type(v.get("step_frames")) is int
            and v["step_frames"] > 0 and isinstance(v.get("dtype"), str),
            "a mapping {shape: [1, steps, 1, n_labels], step_frames > 0, step_s, dtype, quantization}",
        ),
    }
    for key, (ok, expected) in checks.items():
        if key in m and not ok(m[key]):
            raise BundleError(f"{where}: {key} must be {expected}, got {m[key]!r}")


def _inside(folder: Path, name: str, where: str, key: str) -> Path:
    """``folder/name`` resolved; BundleError when it leads outside ``folder``."""
    target = (folder / name).resolve()
    if not target.is_relative_to(folder.resolve()):
        raise BundleError(f"{where}: {key} {name!r} points outside the bundle folder")
    return target


def load_bundle(path: str | Path) -> Bundle:
    """Load and validate a bundle from a run folder, a .tflite file or a model.json."""
    manifest_path = resolve_manifest(path)
    if not Path(path).exists():
        raise BundleError(f"{path}: no such model file or folder; pass --model or set detection.model")
    if not manifest_path.is_file():
        raise BundleError(
            f"{manifest_path}: model manifest missing; a model needs the model.json that "
            "'python -m convert' writes beside it"
        )
    try:
        m = json.loads(manifest_path.read_text())
    except RecursionError:
        raise BundleError(f"{manifest_path}: not a model manifest (nested too deeply)") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"{manifest_path}: not valid JSON ({exc})") from None
    where = str(manifest_path)
    if not isinstance(m, dict) or m.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{where}: not a callwatch model manifest (format != {BUNDLE_FORMAT!r})")
    if m.get("format_version") != BUNDLE_VERSION:
        raise BundleError(
            f"{where}: format_version {m.get('format_version')!r}, this device reads "
            f"{BUNDLE_VERSION}; upgrade callwatch or re-run convert"
        )
    missing = [
        k
        for k in ("model_file", "sha256", "labels", "features", "window_s", "input_shape", "thresholds")
        if k not in m
    ]
    if missing:
        raise BundleError(f"{where}: missing key(s) {', '.join(missing)}")
    try:
        model = check_model(m)
    except ModelCheckError as exc:
        raise BundleError(f"{where}: {exc}") from None
    _check_types(m, where)
    labels, features, window_s = model.labels, model.features, model.window_s
    frames = features.window_frames(window_s)
    shape = tuple(int(x) for x in m["input_shape"])
    if shape != (1, frames, features.n_mels, 1):
        raise BundleError(
            f"{where}: input_shape {list(shape)} does not match window_s={window_s} with these "
            f"features, which give [1, {frames}, {features.n_mels}, 1]"
        )
    output_kind = m.get("output_kind", "logits")
    if output_kind not in OUTPUT_KINDS:
        raise BundleError(f"{where}: output_kind must be one of {OUTPUT_KINDS}, got {output_kind!r}")
    frame_output = dict(m.get("frames") or {})
    shape_ok = frame_output.get("shape", [1, 1, 1, len(labels)])
    if shape_ok[0] != 1 or shape_ok[2] != 1 or shape_ok[3] != len(labels):
        raise BundleError(f"{where}: frames.shape must be [1, steps, 1, {len(labels)}], got {shape_ok}")
    if frame_output:
        _quantization(frame_output.get("quantization"), f"{where}: frames.quantization")
    if any(e.get("rule") == "frames" for e in m.get("events", {}).get("extent", {}).values()) and not frame_output:
        raise BundleError(f"{where}: events.extent names the frames rule but the model has no frames output")
    folder = manifest_path.parent
    model_path = _inside(folder, m["model_file"], where, "model_file")
    for name, entry in m.get("variants", {}).items():
        _inside(folder, entry["file"], where, f"variants.{name}.file")
    if "manifest_sha256" in m:
        if m["manifest_sha256"] != manifest_digest(m):
            raise BundleError(
                f"{where}: changed after convert wrote it (manifest_sha256 does not match its "
                "content); re-run convert, or recalibrate, rather than editing model.json")
    else:
        log.warning("%s has no manifest_sha256 (made before model.json was hashed): its "
                    "settings are not covered by the integrity check; re-run convert", where)
    if Path(path).suffix == ".tflite" and Path(path).resolve() != model_path:
        # --model pointed at another .tflite in the folder (e.g. model_edgetpu.tflite): it
        # must be a variant the manifest knows.
        for entry in m.get("variants", {}).values():
            if (manifest_path.parent / entry["file"]).resolve() == Path(path).resolve():
                _check_sha(Path(path).resolve(), entry.get("sha256", ""))
                model_path = Path(path).resolve()
                break
        else:
            raise BundleError(f"{path}: not the model named in {where} ({m['model_file']})")
    else:
        _check_sha(model_path, m["sha256"])
    return Bundle(
        model_path=model_path,
        labels=labels,
        features=features,
        window_s=window_s,
        input_shape=shape,
        input_dtype=str(m.get("input_dtype", "int8")),
        output_dtype=str(m.get("output_dtype", "int8")),
        input_quantization=_quantization(m.get("input_quantization"), f"{where}: input_quantization"),
        output_quantization=_quantization(m.get("output_quantization"), f"{where}: output_quantization"),
        output_kind=output_kind,
        thresholds=model.thresholds,
        recommended_hop_s=model.recommended_hop_s,
        metrics=dict(m.get("metrics", {})),
        events=dict(m.get("events", {})),
        frames=frame_output,
        variants=dict(m.get("variants", {})),
        manifest=m,
    )


def write_bundle(
    folder: str | Path,
    *,
    labels: list[str],
    features: FeatureParams,
    window_s: float,
    input_dtype: str,
    output_dtype: str,
    input_quantization: Quantization | None,
    output_quantization: Quantization | None,
    thresholds: dict[str, float],
    output_kind: str = "logits",
    model_file: str = MODEL_NAME,
    recommended_hop_s: float = 0.5,
    metrics: dict | None = None,
    variants: dict | None = None,
    events: dict | None = None,
    frames: dict | None = None,
) -> Path:
    """Write model.json for ``folder/model_file`` (which must exist); returns the manifest path.

    Re-reads what it wrote with :func:`load_bundle`, so a bundle that the device would refuse
    is never left behind silently.
    """
    folder = Path(folder)
    model_path = folder / model_file
    if not model_path.is_file():
        raise BundleError(f"{model_path}: model file missing, cannot write its manifest")
    n_frames = features.window_frames(window_s)
    manifest = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "model_file": model_file,
        "sha256": sha256_of(model_path),
        "labels": list(labels),
        "features": features.to_dict(),
        "window_s": float(window_s),
        "input_shape": [1, n_frames, features.n_mels, 1],
        "input_dtype": input_dtype,
        "output_dtype": output_dtype,
        "input_quantization": input_quantization.to_dict() if input_quantization else None,
        "output_quantization": output_quantization.to_dict() if output_quantization else None,
        "output_kind": output_kind,
        "thresholds": {label: float(thresholds[label]) for label in labels},
        "recommended_hop_s": float(recommended_hop_s),
        **({"events": events} if events else {}),
        **({"frames": frames} if frames else {}),
        "metrics": metrics or {},
        "variants": variants or {},
        "callwatch_version": __version__,
        "created_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    manifest = seal_manifest(manifest)
    manifest_path = folder / MANIFEST_NAME
    write_atomic(manifest_path, json.dumps(manifest, indent=2) + "\n")
    load_bundle(manifest_path)
    return manifest_path
