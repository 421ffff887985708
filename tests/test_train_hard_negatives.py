"""train.hard_negatives: replay false positives (events JSONL, reviewed Raven tables) -> negatives."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile

from device.config import validate
from train.datasets import NEGATIVE, DatasetError, load_datasets
from train.hard_negatives import apply_hard_negatives, read_hard_negatives

SR = 16000
HEADER = "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\tSpecies"


@pytest.fixture
def inventory(tmp_path):
    (tmp_path / "long").mkdir()
    for name in ("a", "b"):
        soundfile.write(tmp_path / f"long/{name}.wav", np.zeros(20 * SR, np.float32), SR)
        (tmp_path / f"long/{name}.Table.1.selections.txt").write_text(HEADER + "\n1\tS\t1\t5.0\t6.0\t0\t1\tcall\n")
    datasets = validate({"train": {"datasets": [{"path": "long", "kind": "selections"}]}}).train.datasets
    return load_datasets(datasets, data_root=tmp_path, labels=["call"])


def event(source, start, end):
    return json.dumps({"schema": 1, "event_id": "x", "seq": 1, "device_id": "d", "label": "call",
                       "start_s": start, "end_s": end, "peak_score": 0.9, "source": source})


def test_events_jsonl_become_negative_annotations_in_training_only(tmp_path, inventory):
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_text("\n".join([event("a.wav", 10.0, 13.0), event("b.wav", 12.0, 15.0),
                                event("a.wav", 5.5, 8.0), event("elsewhere.wav", 1.0, 2.0)]) + "\n")
    split = {"long/a.wav": "train", "long/b.wav": "test"}
    added = apply_hard_negatives([jsonl], inventory=inventory, split=split, data_root=tmp_path)
    assert added == 1
    a = next(r for r in inventory.recordings if r.name == "long/a.wav")
    assert [(n.start_s, n.end_s) for n in a.annotations if n.label == NEGATIVE] == [(10.0, 13.0)]
    text = "\n".join(inventory.warnings)
    assert "test split" in text            # b.wav: never train on test audio
    assert "overlaps an annotated call" in text
    assert "'elsewhere.wav' not found" in text


def test_reviewed_raven_table_takes_rows_marked_negative(tmp_path, inventory):
    table = tmp_path / "a.Table.1.selections.txt"
    table.write_text("\n".join([HEADER, "1\tS\t1\t10.0\t13.0\t0\t1\tnegative", "2\tS\t1\t14.0\t17.0\t0\t1\tcall"]) + "\n")
    assert read_hard_negatives(table) == [("a", 10.0, 13.0)]
    added = apply_hard_negatives([table], inventory=inventory, split={"long/a.wav": "train", "long/b.wav": "train"},
                                 data_root=tmp_path)
    assert added == 1


def test_bad_hard_negative_files_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match="missing.jsonl: hard-negative file missing"):
        read_hard_negatives(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"source": "a.wav"}\n')
    with pytest.raises(DatasetError, match="bad.jsonl: line 1"):
        read_hard_negatives(bad)


def test_hard_negatives_are_drawn_as_negative_windows(tmp_path, inventory):
    from device.features import FeatureParams
    from train.windows import WindowSampler

    jsonl = tmp_path / "events.jsonl"
    jsonl.write_text(event("a.wav", 10.0, 13.0) + "\n")
    split = {"long/a.wav": "train", "long/b.wav": "train"}
    apply_hard_negatives([jsonl], inventory=inventory, split=split, data_root=tmp_path)
    params = FeatureParams()
    features = {r.name: np.zeros((params.n_frames(20 * SR), params.n_mels), np.float32) for r in inventory.recordings}
    with_hn = WindowSampler(recordings=inventory.recordings, features=features, labels=["call"], params=params,
                            window_s=3.0, shift_s=0.5, negatives_per_minute=[0.0, 0.0], max_positive_ratio=1.0)
    assert len(with_hn.negatives) == 1 and with_hn.negatives[0][0] == 0


def test_tables_of_a_replay_batch_find_their_audio_outside_the_datasets(tmp_path, inventory):
    """The batch table (Begin Path, File Offset (s)), the detections CSV (a source relative to
    the replay root, found through train.hard_negatives_audio) and the console line."""
    season = tmp_path / "season" / "SiteA"
    season.mkdir(parents=True)
    for name in ("20240501_050000.WAV", "20240501_060000.WAV"):
        soundfile.write(season / name, np.zeros(30 * SR, np.float32), SR)
    table = tmp_path / "batch.selections.txt"
    table.write_text("\n".join([
        "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\t"
        "Begin Path\tFile Offset (s)\tSpecies",
        f"1\tS\t1\t34.0\t36.0\t0\t1\t{season / '20240501_060000.WAV'}\t4.0\tfp",
        f"2\tS\t1\t40.0\t41.0\t0\t1\t{season / '20240501_060000.WAV'}\t10.0\tcall",
    ]) + "\n")
    assert read_hard_negatives(table) == [(str(season / "20240501_060000.WAV"), 4.0, 6.0)]
    detections = tmp_path / "detections.csv"
    detections.write_text("source,site,start_s,end_s,start_utc,end_utc,label,score\n"
                          "SiteA/20240501_050000.WAV,SiteA,3.000,5.000,,,call,0.9\n"
                          "SiteB/gone.WAV,SiteB,3.000,5.000,,,call,0.9\n")
    lines: list[str] = []
    split = {"long/a.wav": "train", "long/b.wav": "train"}
    added = apply_hard_negatives([table, detections], inventory=inventory, split=split,
                                 data_root=tmp_path / "elsewhere", audio_dirs=[str(tmp_path / "season")],
                                 log=lines.append)
    assert added == 2
    negatives = {r.path.name: [(a.start_s, a.end_s) for a in r.annotations if a.label == NEGATIVE]
                 for r in inventory.recordings}
    assert negatives["20240501_060000.WAV"] == [(4.0, 6.0)]
    assert negatives["20240501_050000.WAV"] == [(3.0, 5.0)]
    assert len(lines) == 1 and lines[0].startswith("hard negatives: 2 used, 1 skipped")
    assert "SiteB/gone.WAV" in lines[0]
