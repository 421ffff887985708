"""train.split: whole groups per split, seeded, written to split.csv."""

from __future__ import annotations

import csv

import pytest

from train.datasets import NEGATIVE, Annotation, DatasetError, Recording
from train.split import (
    check_disjoint,
    fold_groups,
    kfold_test_groups,
    split_recordings,
    write_split_csv,
)


def recordings(n_groups=12, per_group=4, forced=None):
    out = []
    for g in range(n_groups):
        for k in range(per_group):
            label = "call" if k % 2 == 0 else NEGATIVE
            out.append(Recording(path=None, name=f"site{g:02d}/clip{k}.wav", dataset=0, kind="clips",
                                 group=f"site{g:02d}", duration_s=4.0, annotations=(Annotation(0, 4.0, label),)))
    if forced:
        out.append(Recording(path=None, name="noise/rain.wav", dataset=1, kind="background", group="noise/rain.wav",
                             duration_s=10.0, unannotated_negative=True, forced_split=forced))
    return out


def split(recs, seed=1, **kw):
    args = dict(labels=["call"], validation=0.2, test=0.2, test_groups=[], validation_groups=[],
                validation_by="group", seed=seed)
    return split_recordings(recs, **(args | kw))


@pytest.mark.parametrize("seed", range(20))
def test_no_group_lands_in_two_splits(seed):
    recs = recordings()
    parts = split(recs, seed=seed)
    by_group = {}
    for r in recs:
        by_group.setdefault(r.group, set()).add(parts[r.name])
    assert all(len(s) == 1 for s in by_group.values())
    assert {"train", "validation", "test"} == set(parts.values())
    check_disjoint(recs, parts)


def test_split_is_seeded():
    recs = recordings()
    assert split(recs, seed=3) == split(recs, seed=3)
    assert any(split(recs, seed=3) != split(recs, seed=s) for s in range(4, 10))


def test_named_groups_and_forced_datasets():
    recs = recordings(forced="train")
    parts = split(recs, test_groups=["site03"], validation_groups=["site05"])
    assert {parts[r.name] for r in recs if r.group == "site03"} == {"test"}
    assert {parts[r.name] for r in recs if r.group == "site05"} == {"validation"}
    assert sum(1 for r in recs if parts[r.name] == "test") == 4  # the named group replaces the share
    assert parts["noise/rain.wav"] == "train"
    assert fold_groups(recs) == [f"site{g:02d}" for g in range(12)]


def test_unknown_group_is_an_error():
    with pytest.raises(DatasetError, match="test_groups: no recordings in group"):
        split(recordings(), test_groups=["mars"])


def test_validation_by_file_takes_training_files_stratified():
    recs = recordings(n_groups=2, per_group=10)
    parts = split(recs, test_groups=["site01"], validation_by="file", validation=0.2)
    val = [r for r in recs if parts[r.name] == "validation"]
    assert {r.group for r in val} == {"site00"}
    assert len(val) == 2 and {r.annotations[0].label for r in val} == {"call", NEGATIVE}
    assert {parts[r.name] for r in recs if r.group == "site01"} == {"test"}
    check_disjoint(recs, parts)


def test_kfold_holds_out_every_group_once_with_positives_in_each_fold():
    recs = recordings(n_groups=11, forced="train")
    silent = [Recording(path=None, name=f"quiet{g}/a.wav", dataset=0, kind="clips", group=f"quiet{g}",
                        duration_s=4.0, annotations=(Annotation(0, 4.0, NEGATIVE),)) for g in range(4)]
    recs += silent
    first = ["site00", "site07"]
    folds = kfold_test_groups(recs, labels=["call"], first=first, k=4, seed=5)
    assert folds[0] == first and len(folds) == 4
    held = [g for fold in folds for g in fold]
    assert sorted(held) == fold_groups(recs) and len(held) == len(set(held))  # each group once, noise never
    for fold in folds:
        assert any(r.group in fold and r.positives("call") for r in recs)
        parts = split(recs, test_groups=fold)
        check_disjoint(recs, parts)
        assert {r.group for r in recs if parts[r.name] == "test"} == set(fold)
    # positives dealt evenly: 9 groups with calls over 3 folds, the 4 quiet ones spread after them
    assert sorted(sum(g.startswith("site") for g in fold) for fold in folds[1:]) == [3, 3, 3]
    assert kfold_test_groups(recs, labels=["call"], first=first, k=4, seed=5) == folds
    assert kfold_test_groups(recs, labels=["call"], first=first, k=4, seed=6) != folds


def test_kfold_with_more_folds_than_groups_is_an_error():
    with pytest.raises(DatasetError, match=r"folds: 5 folds need at least 5 groups"):
        kfold_test_groups(recordings(n_groups=3), labels=["call"], first=["site00"], k=5, seed=1)


def test_split_csv_lists_every_recording(tmp_path):
    recs = recordings()
    parts = split(recs)
    write_split_csv(tmp_path / "split.csv", recs, parts)
    rows = list(csv.DictReader(open(tmp_path / "split.csv")))
    assert len(rows) == len(recs)
    assert {r["recording"]: r["split"] for r in rows} == parts
