"""The Bobwhite per-site benches write valid configs with one change, and tabulate existing runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import adapt_sites, site_levers
from device.config.loader import load_config


def test_bobwhite_config_holds_out_one_site_and_applies_the_change(tmp_path: Path) -> None:
    path = adapt_sites.bobwhite_config(
        "DiLane",
        7,
        name="eq-DiLane-7",
        folder=tmp_path,
        changes={"train.augment.eq_db": 6.0, "train.model.pooling": "time"},
    )
    train = load_config(path).train
    assert path == tmp_path / "eq-DiLane-7.yaml"
    assert train.split.test_groups == ["DiLane"]
    assert not train.split.leave_one_group_out and not train.split.final
    assert (train.name, train.seed) == ("eq-DiLane-7", 7)
    assert train.augment.eq_db == 6.0 and train.model.pooling == "time"
    assert train.model.filters == [16, 48, 64, 96]  # the rest is the example's


def test_bobwhite_config_without_changes_is_the_example_held_out(tmp_path: Path) -> None:
    train = load_config(adapt_sites.bobwhite_config("WLFW_AL", 42, name="b", folder=tmp_path)).train
    example = load_config(adapt_sites.REPO / "examples" / "bobwhite.yaml").train
    assert train.split.test_groups == ["WLFW_AL"] and train.seed == 42
    assert train.augment == example.augment
    assert train.model.filters == example.model.filters and train.model.pooling == example.model.pooling


def test_bobwhite_config_pins_one_model_and_a_half_second_hop(tmp_path: Path) -> None:
    """Every bench run was made with one model scored every 0.5 s; the example's ensemble and
    hop do not leak into the levers' baseline, and a lever can still change them."""
    config = load_config(adapt_sites.bobwhite_config("DiLane", 7, name="b", folder=tmp_path))
    assert config.train.model.ensemble == 1 and config.detection.hop_s == 0.5
    lever = adapt_sites.bobwhite_config(
        "DiLane", 7, name="e", folder=tmp_path, changes={"train.model.ensemble": 3}
    )
    assert load_config(lever).train.model.ensemble == 3


def _metrics(run: Path, roc_auc: float) -> None:
    run.mkdir(parents=True)
    clip = {"bobwhite": {"roc_auc": roc_auc}}
    (run / "metrics.json").write_text(json.dumps({"metrics": {"clip": clip}}))


def test_table_reads_existing_runs_and_trains_nothing_when_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(adapt_sites, "RUNS", tmp_path / "adapt")
    monkeypatch.setattr(site_levers, "RUNS", tmp_path / "levers")
    monkeypatch.setenv("SITE_LEVERS_NO_TRAIN", "1")
    for seed, value in zip(site_levers.SEEDS, (0.90, 0.92, 0.94)):
        _metrics(tmp_path / "adapt" / f"base-DiLane-{seed}", value)
    _metrics(tmp_path / "levers" / "time-DiLane-1234", 0.95)
    _metrics(tmp_path / "levers" / "time-DiLane-42", 0.93)
    rows = site_levers.table()
    example = next(r for r in rows if r.startswith("| the example") and "| DiLane |" in r)
    assert "| 0.900 | 0.920 | 0.940 | 0.920 ± 0.020 |" in example
    time = next(r for r in rows if "pooling: time" in r and "| DiLane |" in r)
    assert "| 0.950 | - | 0.930 | 0.940 ± 0.014 | +0.020 (+0.050, -0.010) |" in time
    eq = next(r for r in rows if "eq_db" in r and "| WLFW_AL |" in r)
    assert "| - | - | - | - |" in eq
    assert not list((tmp_path / "levers").glob("*.yaml"))  # nothing was trained


def test_a_number_in_a_dotted_key_picks_a_dataset(tmp_path: Path) -> None:
    path = adapt_sites.bobwhite_config(
        "DiLane", 7, name="neg", folder=tmp_path, changes={site_levers.RAINFOREST_RATE: 6.0}
    )
    datasets = load_config(path).train.datasets
    rainforest = [d for d in datasets if d.path == "capuchin/recordings"]
    assert [d.negatives_per_minute for d in rainforest] == [6.0]
    assert [d.negatives_per_minute for d in datasets if d.path == "noise"] == [None]


def test_the_distillation_variant_learns_from_the_sites_other_base_runs() -> None:
    arguments = adapt_sites._arguments(adapt_sites.DISTILL, "DiLane")
    assert arguments[0] == "--distill-from"
    assert arguments[1:] == [str(adapt_sites.RUNS / f"base-DiLane-{s}") for s in adapt_sites.TEACHER_SEEDS]
    assert not set(adapt_sites.TEACHER_SEEDS) & set(adapt_sites.SEEDS)  # never the student's own run
    assert adapt_sites._arguments("r2", "DiLane") == ["--rounds", "2"]


def test_the_ensemble_rows_adapt_the_site_levers_ensemble_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(adapt_sites, "RUNS", tmp_path / "adapt")
    monkeypatch.setattr(adapt_sites, "DATA", tmp_path / "data")  # no clips: an empty site folder
    monkeypatch.setattr(site_levers, "RUNS", tmp_path / "levers")
    monkeypatch.setenv("SITE_LEVERS_NO_TRAIN", "1")
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(adapt_sites, "_python", lambda *args, log: calls.append(args))
    _metrics(tmp_path / "levers" / "ensemble3-DiLane-7", 0.959)

    assert adapt_sites.ensemble_base("DiLane", 7) == tmp_path / "levers" / "ensemble3-DiLane-7"
    assert adapt_sites._ensemble_roc_auc_at("DiLane", 7) == 0.959
    assert adapt_sites._ensemble_roc_auc_at("DiLane", 42) is None  # missing, and told not to train
    assert not list((tmp_path / "levers").glob("*.yaml"))
    value, note = adapt_sites._adapted("ens3-r2", "DiLane", 7, base=adapt_sites.ensemble_base("DiLane", 7),
                                       arguments=adapt_sites.ENSEMBLE_VARIANTS["ens3-r2"])
    (args,) = calls
    assert args[args.index("--run") + 1] == str(tmp_path / "levers" / "ensemble3-DiLane-7")
    assert args[args.index("--out") + 1] == str(tmp_path / "adapt" / "ens3-r2-DiLane-7")
    assert args[-2:] == ("--rounds", "2") and "--distill-from" not in args
    assert value is None and note.startswith("seed 7: no adapted model")
    # The single model's variants still adapt the base runs.
    adapt_sites._adapted("r2", "DiLane", 7)
    assert calls[-1][calls[-1].index("--run") + 1] == str(tmp_path / "adapt" / "base-DiLane-7")
    assert set(adapt_sites.ENSEMBLE_VARIANTS) == {"ens3-adapt", "ens3-r2", "ens3-teacher-r2"}
