"""The example configs read the real recordings in ../shared/data as the README describes them.

Reading tables and file headers only (no training): fast. Skipped when ../shared/data is absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from device.config import load_config
from train.datasets import load_datasets
from train.split import check_disjoint

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

pytestmark = [pytest.mark.realdata,
              pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data (real recordings) not present")]


def inventory(name: str):
    cfg = load_config(ROOT / "examples" / f"{name}.yaml").train
    return cfg, load_datasets(cfg.datasets, data_root=DATA, labels=list(cfg.labels))


def test_capuchin_tables_give_212_positive_chunks_in_29_recordings():
    cfg, inv = inventory("capuchin")
    recordings = [r for r in inv.recordings if r.kind == "selections"]
    assert len(recordings) == 50
    chunks = sum(round((a.end_s - a.start_s) / 3.0) for r in recordings for a in r.positives())
    assert chunks == 212
    assert sum(1 for r in recordings if r.positives()) == 29
    assert any(r.ignored for r in recordings)  # 'uncertain' chunks are left out, not negatives
    assert not [w for w in inv.warnings if "past the end" in w and "cut" not in w]


def test_bobwhite_splits_by_site_and_never_mixes_sites():
    from train.core import split_for

    cfg, inv = inventory("bobwhite")
    clips = [r for r in inv.recordings if r.kind == "clips"]
    assert len(clips) == 120
    assert {r.group for r in clips} == {"DiLane", "WLFW_AL"}
    split = split_for(cfg, inv.recordings)
    assert {split[r.name] for r in clips if r.group == "WLFW_AL"} == {"test"}
    assert {split[r.name] for r in clips if r.group == "DiLane"} == {"train", "validation"}
    assert {split[r.name] for r in inv.recordings if r.kind == "background"} == {"train"}
    check_disjoint(inv.recordings, split)


def test_capuchin_folds_test_every_recording_once_the_main_split_first():
    from train.core import _fold_plan, split_for

    cfg, inv = inventory("capuchin")
    split = split_for(cfg, inv.recordings)
    plan = _fold_plan(cfg, inv.recordings, split, logo=False, k=cfg.split.folds)
    assert cfg.split.folds == 5 and [name for name, _ in plan] == ["fold1", "fold2", "fold3", "fold4", "fold5"]
    assert plan[0][1] == sorted(r.group for r in inv.recordings if split[r.name] == "test")
    held = [g for _, groups in plan for g in groups]
    assert len(held) == len(set(held)) == 50 and all(len(groups) == 10 for _, groups in plan)
    with_calls = {r.group for r in inv.recordings if r.positives()}
    # 29 recordings have calls: the main split drew its share at random, the others are dealt evenly
    per_fold = [len(with_calls & set(groups)) for _, groups in plan]
    assert sum(per_fold) == 29 and max(per_fold[1:]) - min(per_fold[1:]) <= 1
    for _, groups in plan:
        check_disjoint(inv.recordings, split_for(cfg, inv.recordings, test_groups=groups))
