"""The model bundle: model.json written by convert, validated by the device before it runs.

Uses the real int8 tone model of tests/tinymodel.py (the ``tone_bundle`` fixture, built once
per session). Every test that changes something works on its own copy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from device.bundle import (
    MANIFEST_NAME,
    BundleError,
    Quantization,
    load_bundle,
    seal_manifest,
    sha256_of,
    write_bundle,
)
from device.features import FeatureParams


@pytest.fixture
def bundle_dir(tone_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the tone bundle's folder."""
    folder = tmp_path / "bundle"
    shutil.copytree(tone_bundle.parent, folder)
    return folder


def edit_manifest(folder: Path, change) -> Path:
    """Apply ``change(manifest_dict)`` to folder/model.json; returns the manifest path."""
    path = folder / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    change(manifest)
    # Resealed, so each test sees the check it is about (the hash has tests of its own).
    path.write_text(json.dumps(seal_manifest(manifest)))
    return path


def refused(path: Path, *words: str) -> str:
    """load_bundle must raise a one-line BundleError naming the file and containing ``words``."""
    with pytest.raises(BundleError) as exc:
        load_bundle(path)
    message = str(exc.value)
    assert "\n" not in message, message
    assert str(path) in message or str(path.parent) in message, message
    for word in words:
        assert word in message, message
    return message


# --- round trip -----------------------------------------------------------------------------


def test_written_bundle_loads_with_what_was_written(tone_bundle):
    bundle = load_bundle(tone_bundle)
    params = FeatureParams()
    assert bundle.model_path == tone_bundle.resolve()
    assert bundle.labels == ("tone",)
    assert bundle.features == params
    assert bundle.window_s == 1.0
    assert bundle.input_shape == (1, params.window_frames(1.0), params.n_mels, 1) == (1, 49, 40, 1)
    assert bundle.window_frames == 49
    assert (bundle.input_dtype, bundle.output_dtype) == ("int8", "int8")
    assert bundle.output_kind == "logits"
    assert bundle.thresholds == {"tone": 0.5}
    assert bundle.recommended_hop_s == 0.5
    assert bundle.metrics == {"note": "hand-set tone detector for tests"}
    assert bundle.manifest["sha256"] == sha256_of(tone_bundle)


def test_manifest_agrees_with_the_real_model(tone_bundle):
    """Shape and quantization in model.json are those LiteRT reads from the model itself."""
    from ai_edge_litert.interpreter import Interpreter

    bundle = load_bundle(tone_bundle)
    interpreter = Interpreter(model_path=str(bundle.model_path))
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert tuple(inp["shape"]) == bundle.input_shape
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int8
    assert Quantization(*inp["quantization"]) == bundle.input_quantization
    assert Quantization(*out["quantization"]) == bundle.output_quantization


def test_folder_tflite_and_manifest_paths_load_the_same_bundle(tone_bundle):
    by_file = load_bundle(tone_bundle)
    assert load_bundle(tone_bundle.parent) == by_file
    assert load_bundle(tone_bundle.parent / MANIFEST_NAME) == by_file


def test_write_bundle_round_trips_every_field(bundle_dir):
    params = FeatureParams(n_mels=32, hop_length=160)
    edgetpu = bundle_dir / "model_edgetpu.tflite"
    edgetpu.write_bytes(b"compiled for the edge tpu")
    variants = {"edgetpu": {"file": edgetpu.name, "sha256": sha256_of(edgetpu)}}
    write_bundle(
        bundle_dir,
        labels=["a", "b"],
        features=params,
        window_s=2.0,
        input_dtype="int8",
        output_dtype="int8",
        input_quantization=Quantization(0.25, -3),
        output_quantization=None,
        thresholds={"b": 0.7, "a": 0.3},
        output_kind="probabilities",
        recommended_hop_s=0.25,
        metrics={"float": {"auc": 0.9}, "int8": {"auc": 0.89}},
        variants=variants,
    )
    bundle = load_bundle(bundle_dir)
    assert bundle.labels == ("a", "b")
    assert bundle.features == params
    assert bundle.input_shape == (1, params.window_frames(2.0), 32, 1)
    assert bundle.input_quantization == Quantization(0.25, -3)
    assert bundle.output_quantization is None
    assert bundle.thresholds == {"a": 0.3, "b": 0.7}
    assert bundle.output_kind == "probabilities"
    assert bundle.recommended_hop_s == 0.25
    assert bundle.metrics["int8"]["auc"] == 0.89
    assert bundle.variant_path("edgetpu") == edgetpu
    assert bundle.variant_path("gpu") is None
    # --model may name the variant: it is verified against its own sha256.
    assert load_bundle(edgetpu).model_path == edgetpu.resolve()
    edgetpu.write_bytes(b"another file")
    refused(edgetpu, "sha256", "does not match")


def test_write_bundle_refuses_a_missing_model_file(tmp_path):
    with pytest.raises(BundleError, match="model file missing"):
        write_bundle(
            tmp_path,
            labels=["a"],
            features=FeatureParams(),
            window_s=3.0,
            input_dtype="int8",
            output_dtype="int8",
            input_quantization=None,
            output_quantization=None,
            thresholds={"a": 0.5},
        )


def test_the_extent_rule_comes_from_the_bundle_and_old_bundles_get_the_centre_rule(bundle_dir):
    old = load_bundle(bundle_dir)  # made without an events record
    assert old.events == {}
    centre = (old.window_s - 0.5) / 2
    assert old.extent_trims(0.5) == {"tone": (centre, centre)}
    events = {"detection": {"hop_s": 0.5, "hysteresis": 0.1},
              "extent": {"tone": {"rule": "trim", "trim_s": [0.3, 0.2], "calls": 12}}}
    edit_manifest(bundle_dir, lambda m: m.update(events=events))
    assert load_bundle(bundle_dir).extent_trims(0.5) == {"tone": (0.3, 0.2)}
    edit_manifest(bundle_dir, lambda m: m.update(events={"extent": {"tone": {"rule": "windows"}}}))
    assert load_bundle(bundle_dir).extent_trims(0.5) == {"tone": (0.0, 0.0)}


# --- refusals -------------------------------------------------------------------------------


def test_missing_manifest(bundle_dir):
    (bundle_dir / MANIFEST_NAME).unlink()
    refused(bundle_dir / "model.tflite", "manifest missing", "python -m convert")


def test_missing_model_path(tmp_path):
    refused(tmp_path / "nowhere" / "model.tflite", "no such model")


def test_model_file_changed_after_convert(bundle_dir):
    model = bundle_dir / "model.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    refused(model, "sha256", "does not match", "re-run convert")


def test_model_file_missing_beside_manifest(bundle_dir):
    (bundle_dir / "model.tflite").unlink()
    refused(bundle_dir, "missing")


def test_another_tflite_that_is_not_in_the_manifest(bundle_dir):
    other = bundle_dir / "other.tflite"
    shutil.copy(bundle_dir / "model.tflite", other)
    refused(other, "not the model named in")


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda m: m["features"].update(pcen=True), ["features", "pcen", "cannot reproduce"]),
        (lambda m: m["features"].update(kind="mfcc-v2"), ["features", "kind", "'mfcc-v2'"]),
        (lambda m: m["features"].update(n_fft=500), ["features", "n_fft"]),
        (lambda m: m["features"].update(sample_rate="16000"), ["sample_rate", "an integer"]),
        (lambda m: m.update(input_shape=[1, 50, 40, 1]), ["input_shape [1, 50, 40, 1]", "[1, 49"]),
        (lambda m: m.update(window_s=3.0), ["input_shape", "window_s=3.0"]),
        (lambda m: m.update(labels=["tone", "bird"]), ["thresholds must name exactly the labels"]),
        (lambda m: m.update(thresholds={}), ["thresholds must name exactly the labels"]),
        (lambda m: m.update(thresholds={"tone": 1.0}), ["thresholds must be in (0, 1)"]),
        (lambda m: m.update(thresholds={"tone": 0.0}), ["thresholds must be in (0, 1)"]),
        (lambda m: m.update(thresholds={"tone": "high"}), ["thresholds must be a mapping"]),
        (lambda m: m.update(labels="tone"), ["labels must be a list"]),
        (lambda m: m.update(labels=["tone", "tone"]), ["labels must be distinct"]),
        (lambda m: m.update(window_s="3 s"), ["window_s must be a number"]),
        (lambda m: m.update(input_shape=49), ["input_shape must be a list of integers"]),
        (lambda m: m.update(output_kind="softmax"), ["output_kind must be one of"]),
        (lambda m: m.update(input_quantization={"scale": 0.1}), ["input_quantization"]),
        (lambda m: m.update(variants={"edgetpu": {"file": "x.tflite"}}), ["variants must be"]),
        (lambda m: m.update(events={"extent": {"tone": {"rule": "guess"}}}), ["events must be"]),
        (lambda m: m.update(events={"extent": {"tone": {"rule": "trim", "trim_s": [0.2]}}}), ["events must be"]),
        (lambda m: m.update(events={"extent": {"tone": {"rule": "trim", "trim_s": [-1, 0]}}}), ["events must be"]),
        (lambda m: m.update(format_version=2), ["format_version 2", "upgrade callwatch"]),
        (lambda m: m.update(format="something-else"), ["not a callwatch model manifest"]),
        (lambda m: m.pop("sha256"), ["missing key(s) sha256"]),
        (lambda m: m.pop("features"), ["missing key(s) features"]),
    ],
)
def test_bad_manifest_is_refused_naming_the_key(bundle_dir, change, words):
    refused(edit_manifest(bundle_dir, change), *words)


@pytest.mark.parametrize("text", ["{not json", "", "[1, 2]", "\udcff"])
def test_manifest_that_is_not_json(bundle_dir, text):
    manifest = bundle_dir / MANIFEST_NAME
    manifest.write_bytes(text.encode("utf-8", "surrogateescape"))
    refused(manifest)
