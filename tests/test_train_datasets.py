"""train.datasets: clip folders, Raven and Audacity tables, ignore sets, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile

from device.config import validate
from train.datasets import NEGATIVE, DatasetError, load_datasets, read_table

SR = 16000
RAVEN_HEADER = "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\tSpecies"


def wav(path: Path, seconds: float = 1.0, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = 0.01 * np.random.default_rng(seed).standard_normal(int(seconds * SR))
    soundfile.write(path, noise.astype(np.float32), SR)
    return path


def datasets(*entries: dict, labels=("call",)):
    return validate({"train": {"labels": list(labels), "datasets": list(entries)}}).train.datasets


def test_clip_folders_map_classes_and_groups(tmp_path):
    for site in ("siteA", "siteB"):
        wav(tmp_path / f"clips/yes/{site}_1.wav", 2.0)
        wav(tmp_path / f"clips/no/{site}_1.wav", 2.0)
    inv = load_datasets(datasets({"path": "clips", "kind": "clips", "classes": {"yes": "call", "no": "negative"},
                                  "group_pattern": r"(site\w)_"}), data_root=tmp_path, labels=["call"])
    assert len(inv.recordings) == 4
    assert {r.group for r in inv.recordings} == {"siteA", "siteB"}
    yes = [r for r in inv.recordings if "/yes/" in r.name]
    assert all(r.annotations[0].label == "call" and r.annotations[0].end_s == pytest.approx(2.0) for r in yes)
    no = [r for r in inv.recordings if "/no/" in r.name]
    assert all(r.annotations[0].label == NEGATIVE for r in no)


def test_missing_dataset_folder_names_it(tmp_path):
    with pytest.raises(DatasetError, match=r"nowhere.*dataset folder missing"):
        load_datasets(datasets({"path": "nowhere", "kind": "background"}), data_root=tmp_path, labels=["call"])


def test_empty_class_folder_is_an_error_naming_it(tmp_path):
    wav(tmp_path / "clips/yes/a.wav")
    (tmp_path / "clips/no").mkdir()
    with pytest.raises(DatasetError, match=r"clips/no: no audio files"):
        load_datasets(datasets({"path": "clips", "kind": "clips", "classes": {"yes": "call", "no": "negative"}}),
                      data_root=tmp_path, labels=["call"])


def test_missing_class_folder_is_an_error(tmp_path):
    wav(tmp_path / "clips/yes/a.wav")
    with pytest.raises(DatasetError, match=r"clips/absent: class folder missing"):
        load_datasets(datasets({"path": "clips", "kind": "clips", "classes": {"yes": "call", "absent": "negative"}}),
                      data_root=tmp_path, labels=["call"])


def test_unreadable_audio_is_skipped_with_a_warning_naming_it(tmp_path):
    wav(tmp_path / "clips/yes/good.wav")
    wav(tmp_path / "clips/no/good.wav")
    (tmp_path / "clips/no/broken.wav").write_bytes(b"RIFF garbage, not audio")
    inv = load_datasets(datasets({"path": "clips", "kind": "clips", "classes": {"yes": "call", "no": "negative"}}),
                        data_root=tmp_path, labels=["call"])
    assert len(inv.recordings) == 2
    assert inv.skipped_files == 1
    assert any("broken.wav" in w for w in inv.warnings)


def test_raven_table_dedupes_views_and_reads_the_label_column(tmp_path):
    table = tmp_path / "rec.Table.1.selections.txt"
    table.write_text("\n".join([
        RAVEN_HEADER,
        "1\tWaveform 1\t1\t1.0\t2.5\t0\t8000\tcall",
        "1\tSpectrogram 1\t1\t1.0\t2.5\t0\t8000\tcall",
        "2\tSpectrogram 1\t1\t4.0\t5.0\t0\t8000\tuncertain",
    ]) + "\n")
    assert read_table(table, label_column="Species") == [(1.0, 2.5, "call"), (4.0, 5.0, "uncertain")]


def test_table_without_the_columns_names_them(tmp_path):
    table = tmp_path / "rec.Table.1.selections.txt"
    table.write_text("Selection\tBegin Time (s)\tEnd Time (s)\tAnnotation\n1\t1.0\t2.0\tcall\n")
    with pytest.raises(DatasetError, match=r"rec.Table.1.selections.txt: selection table lacks column\(s\) 'Species'"):
        read_table(table, label_column="Species")


def test_audacity_labels_skip_spectral_lines(tmp_path):
    table = tmp_path / "rec.txt"
    table.write_text("1.5\t2.0\tcall\n\\\t500.0\t3000.0\n3.25\t4.0\tnoise\n")
    assert read_table(table, label_column="Species") == [(1.5, 2.0, "call"), (3.25, 4.0, "noise")]


def test_audacity_garbage_line_is_an_error_with_line_number(tmp_path):
    table = tmp_path / "rec.txt"
    table.write_text("1.5\t2.0\tcall\n1.0\tnot-a-time\tcall\n")
    with pytest.raises(DatasetError, match="rec.txt: line 2"):
        read_table(table, label_column="Species")


def _recording_with_table(tmp_path: Path, rows: list[str], seconds: float = 10.0) -> None:
    wav(tmp_path / "long/rec.wav", seconds)
    (tmp_path / "long/rec.Table.1.selections.txt").write_text("\n".join([RAVEN_HEADER, *rows]) + "\n")


def test_selections_map_ignore_and_clip_annotations_past_the_end(tmp_path):
    _recording_with_table(tmp_path, [
        "1\tSpectrogram 1\t1\t1.0\t2.0\t0\t8000\tBird",
        "2\tSpectrogram 1\t1\t3.0\t4.0\t0\t8000\tuncertain",
        "3\tSpectrogram 1\t1\t9.0\t12.0\t0\t8000\tBird",   # runs past the end: cut
        "4\tSpectrogram 1\t1\t11.0\t12.0\t0\t8000\tBird",  # starts past the end: skipped
        "5\tSpectrogram 1\t1\t6.0\t7.0\t0\t8000\tFrog",    # unknown label: left out
    ])
    inv = load_datasets(datasets({"path": "long", "kind": "selections", "classes": {"Bird": "call"},
                                  "ignore": ["uncertain"]}), data_root=tmp_path, labels=["call"])
    (r,) = inv.recordings
    assert [(a.start_s, a.end_s) for a in r.positives("call")] == [(1.0, 2.0), (9.0, pytest.approx(10.0))]
    assert (3.0, 4.0) in r.ignored and (6.0, 7.0) in r.ignored
    assert r.unannotated_negative
    assert any("runs past the end" in w for w in inv.warnings)
    assert any("starts past the end" in w for w in inv.warnings)
    assert any("'Frog'" in w for w in inv.warnings)


def test_recording_without_table_is_skipped_and_counted(tmp_path):
    _recording_with_table(tmp_path, ["1\tSpectrogram 1\t1\t1.0\t2.0\t0\t8000\tcall"])
    wav(tmp_path / "long/other.wav", 5.0)
    inv = load_datasets(datasets({"path": "long", "kind": "selections"}), data_root=tmp_path, labels=["call"])
    assert [r.name for r in inv.recordings] == ["long/rec.wav"]
    assert inv.skipped_files == 1 and "other.wav" in inv.warnings[0]


def test_tables_in_a_separate_folder(tmp_path):
    wav(tmp_path / "audio/rec.wav", 5.0)
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables/rec.Table.1.selections.txt").write_text(RAVEN_HEADER + "\n1\tS\t1\t1\t2\t0\t1\tcall\n")
    inv = load_datasets(datasets({"path": "audio", "kind": "selections", "tables": "tables"}),
                        data_root=tmp_path, labels=["call"])
    assert len(inv.recordings[0].positives()) == 1


def test_a_label_without_examples_is_an_error(tmp_path):
    wav(tmp_path / "bg/noise.wav")
    with pytest.raises(DatasetError, match="no examples of 'call'"):
        load_datasets(datasets({"path": "bg", "kind": "background"}), data_root=tmp_path, labels=["call"])


def test_example_configs_and_config_yaml_validate():
    from device.config import load_config

    root = Path(__file__).resolve().parents[1]
    for path in ("config.yaml", "examples/bobwhite.yaml", "examples/capuchin.yaml"):
        cfg = load_config(root / path)
        assert cfg.train.datasets, path
