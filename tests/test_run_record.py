"""run.json, the run record train writes and convert reads: a round trip, and one line naming
the file and the key for a record convert cannot use."""

from __future__ import annotations

import json

import pytest

from device.features import FeatureParams
from device.runrecord import RETRAIN, RunRecord, RunRecordError


def record(**changes) -> RunRecord:
    values = dict(
        labels=("bird", "frog"),
        features=FeatureParams(n_mels=32),
        window_s=2.0,
        thresholds={"frog": 0.4, "bird": 0.6},
        recommended_hop_s=0.25,
        events={"detection": {"hop_s": 0.25}},
        metrics={"float": {"bird": {"roc_auc": 0.9}}},
        title="two species",
    )
    return RunRecord(**{**values, **changes})


def test_write_then_load_gives_the_same_record(tmp_path):
    path = record().write(tmp_path)
    assert path == tmp_path / "run.json"
    assert RunRecord.load(tmp_path) == record()
    written = json.loads(path.read_text())
    assert list(written)[:5] == [
        "labels",
        "features",
        "window_s",
        "thresholds",
        "recommended_hop_s",
    ]
    assert list(written["thresholds"]) == ["bird", "frog"]  # in the order of the outputs
    assert "final" not in written
    final = record(final={"epochs": 12}, adaptation={"from_run": "runs/a", "pseudo_labels": 40})
    final.write(tmp_path)
    assert RunRecord.load(tmp_path) == final


def test_keys_it_does_not_know_are_kept(tmp_path):
    record().write(tmp_path)
    path = tmp_path / "run.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "notes": ["kept"]}))
    loaded = RunRecord.load(tmp_path)
    assert loaded.extra == {"notes": ["kept"]}
    loaded.write(tmp_path)
    assert json.loads(path.read_text())["notes"] == ["kept"]


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda m: m.pop("labels"), ["missing key(s) labels", RETRAIN]),
        (lambda m: m.update(labels=["bird", "bird"]), ["labels must be distinct"]),
        (lambda m: m.update(thresholds={"bird": 0.5}), ["thresholds must name exactly the labels"]),
        (
            lambda m: m.update(thresholds={"bird": 0.5, "frog": 1.5}),
            ["thresholds must be in (0, 1)"],
        ),
        (lambda m: m.update(window_s=0), ["window_s must be a number of seconds > 0"]),
        (lambda m: m.update(features={"n_fft": 3}), ["features"]),
        (lambda m: m.update(recommended_hop_s=-1), ["recommended_hop_s"]),
        (lambda m: m.update(metrics=[1]), ["metrics must be a JSON object"]),
        (lambda m: m.update(events={"extent": {"bird": {"rule": "guess"}}}), ["events must be"]),
    ],
)
def test_a_bad_record_is_one_line_naming_the_file_and_key(tmp_path, change, words):
    path = record().write(tmp_path)
    m = json.loads(path.read_text())
    change(m)
    path.write_text(json.dumps(m))
    with pytest.raises(RunRecordError) as exc:
        RunRecord.load(tmp_path)
    message = str(exc.value)
    assert "\n" not in message and message.startswith(str(path)), message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_not_a_json_object(tmp_path, text):
    (tmp_path / "run.json").write_text(text)
    with pytest.raises(RunRecordError, match="run.json"):
        RunRecord.load(tmp_path)
    (tmp_path / "run.json").unlink()
    with pytest.raises(RunRecordError, match="missing"):
        RunRecord.load(tmp_path)
