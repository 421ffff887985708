"""The ensembles bench writes the example's config with only the seed and the ensemble changed,
reuses an identical existing run, and tabulates existing runs without training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench import ensembles
from device.config.loader import load_config


def test_the_capuchin_config_is_the_example_with_seed_and_ensemble(tmp_path: Path) -> None:
    path = ensembles.write_config(ensembles.CAPUCHIN, 7, 3, folder=tmp_path)
    train = load_config(path).train
    example = load_config(ensembles.REPO / "examples" / "capuchin.yaml").train
    assert path == tmp_path / "capuchin-ens3-7.yaml"
    assert (train.name, train.seed, train.model.ensemble) == ("capuchin-ens3-7", 7, 3)
    assert train.split.folds == 5 and not train.split.final
    assert train.augment == example.augment and train.datasets == example.datasets
    assert (
        train.model.filters == example.model.filters
        and train.model.pooling == example.model.pooling
    )


def test_the_demo_config_is_config_yaml_with_seed_and_ensemble(tmp_path: Path) -> None:
    train = load_config(ensembles.write_config(ensembles.DEMO, 42, 1, folder=tmp_path)).train
    shipped = load_config(ensembles.REPO / "config.yaml").train
    assert (train.seed, train.model.ensemble, train.name) == (42, 1, "demo-ens1-42")
    assert train.model == shipped.model and train.split == shipped.split


def _resolved(run: Path, config: Path, **train: object) -> None:
    """A finished run folder trained with ``config`` (plus ``train`` changes), as train writes it."""
    import yaml

    values = yaml.safe_load(config.read_text())
    values["train"].update(name=run.name, data_root="/elsewhere", cache_dir=None, **train)
    run.mkdir(parents=True)
    (run / "config.resolved.yaml").write_text(yaml.safe_dump(values))
    (run / "metrics.json").write_text("{}")


def test_an_existing_run_is_reused_only_when_its_config_is_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ensembles, "REPO", tmp_path)
    monkeypatch.setattr(ensembles, "RUNS", tmp_path / "runs" / "ensembles")
    config = ensembles.write_config(ensembles.CAPUCHIN, 42, 1, folder=tmp_path / "cfg")
    _resolved(tmp_path / "runs" / "capuchin", config, seed=7)  # another seed
    _resolved(tmp_path / "runs" / "exp" / "s42", config)  # the same config, another name and root
    assert ensembles.same_config(config, tmp_path / "runs" / "exp" / "s42")
    assert not ensembles.same_config(config, tmp_path / "runs" / "capuchin")
    assert ensembles.run_for(ensembles.CAPUCHIN, 42, 1) == tmp_path / "runs" / "exp" / "s42"
    assert (
        ensembles.run_for(ensembles.CAPUCHIN, 1234, 1)
        == tmp_path / "runs" / "ensembles" / "capuchin-ens1-1234"
    )
    # an ensemble is never a one-model run, whatever exists
    assert (
        ensembles.run_for(ensembles.CAPUCHIN, 42, 3)
        == tmp_path / "runs" / "ensembles" / "capuchin-ens3-42"
    )
    shutil.rmtree(tmp_path / "runs" / "exp" / "s42")
    assert (
        ensembles.run_for(ensembles.CAPUCHIN, 42, 1)
        == tmp_path / "runs" / "ensembles" / "capuchin-ens1-42"
    )


def _folds(run: Path, pooled_f1: float, r: float, folds: list[float], tp: int = 200) -> None:
    run.mkdir(parents=True)
    label = ensembles.LABEL
    pooled = {
        f"{label} chunk": {"tp": tp, "fp": 7, "fn": 8, "f1": pooled_f1},
        f"{label} count": {"pearson_r": r, "recordings": 50},
    }
    rows = [{"test_group": f"fold{i + 1}", f"{label} chunk F1": f} for i, f in enumerate(folds)]
    (run / "metrics.json").write_text(json.dumps({"folds": {"pooled": pooled, "folds": rows}}))


def test_the_capuchin_table_reads_run_folders(tmp_path: Path) -> None:
    runs = {
        (size, seed): tmp_path / f"capuchin-ens{size}-{seed}"
        for size in (1, 3)
        for seed in ensembles.SEEDS
    }
    _folds(runs[(1, 1234)], 0.96, 0.997, [0.93, 0.94, 0.96, 0.99, 0.98])
    _folds(runs[(1, 7)], 0.97, 0.998, [0.96, 1.0, 0.97, 0.93, 0.97])
    _folds(runs[(1, 42)], 0.95, 0.996, [0.92, 0.97, 0.98, 0.97, 0.97])
    _folds(runs[(3, 1234)], 0.98, 0.999, [0.95, 0.96, 0.97, 1.0, 0.99], tp=205)
    _folds(runs[(3, 42)], 0.94, 0.995, [0.9, 0.95, 0.96, 0.95, 0.94])
    (runs[(3, 7)]).mkdir()  # still training: no metrics.json
    rows = ensembles.capuchin_table(runs)
    one = next(r for r in rows if r.startswith("| pooled chunk F1 | one model"))
    assert "| 0.960 | 0.970 | 0.950 | 0.960 ± 0.010 |" in one
    ens = next(r for r in rows if r.startswith("| pooled chunk F1 | ensemble of 3"))
    assert "| 0.980 | - | 0.940 | 0.960 ± 0.028 | +0.005 (+0.020, -0.010) |" in ens
    r = next(r for r in rows if r.startswith("| pooled count r | ensemble of 3"))
    assert "| 0.999 | - | 0.995 |" in r and "(+0.002, -0.001)" in r
    fold_row = next(r for r in rows if r.startswith("| ensemble of 3 | 1234 |"))
    assert "| 0.950 | 0.960 | 0.970 | 1.000 | 0.990 | 0.980 (205, 7, 8) |" in fold_row
    assert next(r for r in rows if r.startswith("| ensemble of 3 | 7 |")).endswith("| not done |")


def test_the_events_table_says_what_is_missing() -> None:
    def events(f1: float) -> ensembles.Events:
        return ensembles.Events(f1, 0.9, 0.95, 0.1, 0.2, 40, 41)

    found = {(1, 1234): events(0.9), (1, 7): events(0.94), (1, 42): None, (3, 1234): events(0.95)}
    rows = ensembles.events_table({**found, (3, 7): None, (3, 42): None})
    f1 = next(r for r in rows if r.startswith("| event F1") and "ensemble" in r)
    assert "| 0.950 | - | - | 0.950 (1 seed) | +0.050 (+0.050) |" in f1
    one = next(r for r in rows if r.startswith("| event F1") and "one model" in r)
    assert "| 0.900 | 0.940 | - | 0.920 ± 0.028 |" in one
    assert "ensemble of 3: 40 of 41 (seed 1234);" in rows[-1]


def test_nothing_is_trained_when_told(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ensembles, "REPO", tmp_path)
    monkeypatch.setattr(ensembles, "RUNS", tmp_path / "runs" / "ensembles")
    monkeypatch.setattr(ensembles, "DEMO_DATA", tmp_path / "demo" / "data")
    monkeypatch.setenv("ENSEMBLES_NO_TRAIN", "1")
    for kind in (ensembles.CAPUCHIN, ensembles.DEMO):
        ensembles.train(kind, 7, 3)
    assert not (tmp_path / "runs" / "ensembles").exists() and not (tmp_path / "demo").exists()
