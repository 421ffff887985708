"""The ensemble (``train.model.ensemble: 3``) on the Capuchinbird folds, three seeds (issue 17).

``examples/capuchin.yaml`` with ``train.seed`` set (1234, 7, 42) and ``train.model.ensemble: 3``
(three models at different seeds, their logits averaged, shipped as one int8 model), everything
else the example's (its 5-fold cross-validation; no ``final`` model), against the same config
with one model at the same seeds. Each run pools the decisions of its 5 folds (every one of the
50 recordings held out once, each fold at its own calibrated threshold): pooled 3 s chunk F1 and
per-recording count Pearson r, and the chunk F1 of every fold. The ensembles' runs live in
``runs/ensembles/capuchin-ens3-<seed>``, the one-model runs in ``runs/ensembles/capuchin-ens1-<seed>``
unless an existing run (``runs/capuchin``, ``runs/exp/*``) was trained with exactly that config,
which is reused. Runs are made when missing, one ``python -m train`` at a time (an ensemble's
5 folds take 40-80 minutes on the shared 2-core machine, one model's about a third), and reused
when present; with ``ENSEMBLES_NO_TRAIN=1`` nothing is trained and a missing run reads "-". A
difference beats the noise only if it is larger than the spread between seeds.
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

from bench import adapt_sites, preamble

NAME = "ensembles"
REPO = adapt_sites.REPO
RUNS = REPO / "runs" / "ensembles"
SEEDS = adapt_sites.SEEDS
LABEL = "capuchinbird"
SIZES = (3, 1)
"""Training order: the ensembles first (the brief's priority), then the missing one-model runs."""
IGNORED = ("name", "data_root", "cache_dir")
"""Keys of ``train`` that do not change what a run learns (where it is written and cached)."""


def capuchin_config(seed: int, ensemble: int, *, folder: Path = RUNS) -> Path:
    """Write ``folder/capuchin-ens<ensemble>-<seed>.yaml``: examples/capuchin.yaml with
    ``train.seed`` and ``train.model.ensemble`` set, ``split.final`` off and the shared feature
    cache (``runs/.cache``)."""
    import yaml  # PyYAML: a train/device dependency, imported only by benches that train

    name = f"capuchin-ens{ensemble}-{seed}"
    config = yaml.safe_load((REPO / "examples" / "capuchin.yaml").read_text())
    train = config["train"]
    if not train.get("split", {}).get("folds"):
        raise ValueError("examples/capuchin.yaml no longer has train.split.folds")
    if train["split"].get("final"):
        train["split"]["final"] = False
    train.update(name=name, seed=seed, cache_dir=str(REPO / "runs" / ".cache"))
    train.setdefault("model", {})["ensemble"] = ensemble
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _learned(config: Path) -> dict:
    """What of a config decides what a run learns and how it is scored: the ``train`` and
    ``detection`` sections as the loader resolves them (current defaults filled in), less
    :data:`IGNORED`."""
    from device.config import load_config

    values = load_config(config).to_dict()
    train = {k: v for k, v in values["train"].items() if k not in IGNORED}
    return {"train": train, "detection": values.get("detection")}


def same_config(config: Path, run: Path) -> bool:
    """Whether ``run`` (its config.resolved.yaml) was trained with exactly ``config``."""
    resolved = run / "config.resolved.yaml"
    if not (run / "metrics.json").is_file() or not resolved.is_file():
        return False
    try:
        return _learned(resolved) == _learned(config)
    except Exception:  # a run from an older config format: not the same config
        return False


def candidates() -> list[Path]:
    """Existing one-model runs that may have been trained with a bench config."""
    return [REPO / "runs" / "capuchin", *sorted((REPO / "runs" / "exp").glob("*"))]


def run_for(seed: int, ensemble: int) -> Path:
    """The run folder of the configuration: an identical existing one-model run when there is
    one, else runs/ensembles/capuchin-ens<ensemble>-<seed>."""
    own = RUNS / f"capuchin-ens{ensemble}-{seed}"
    if ensemble == 1 and not (own / "metrics.json").is_file():
        config = capuchin_config(seed, ensemble)
        for run in candidates():
            if same_config(config, run):
                return run
    return own


@dataclass(frozen=True)
class Figures:
    """One run's pooled figures over its folds."""

    f1: float
    r: float
    tp: int
    fp: int
    fn: int
    folds: tuple[float, ...]


def figures(run: Path) -> Figures | None:
    """The run's pooled chunk F1, count r and per-fold chunk F1 (None when it is not done)."""
    metrics = run / "metrics.json"
    if not metrics.is_file():
        return None
    folds = json.loads(metrics.read_text()).get("folds", {})
    chunk = folds.get("pooled", {}).get(f"{LABEL} chunk")
    count = folds.get("pooled", {}).get(f"{LABEL} count")
    if not chunk or not count:
        return None
    per_fold = tuple(float(f[f"{LABEL} chunk F1"]) for f in folds.get("folds", []))
    return Figures(
        float(chunk["f1"]), float(count["pearson_r"]), chunk["tp"], chunk["fp"], chunk["fn"], per_fold
    )


def _train(seed: int, ensemble: int) -> None:
    run = run_for(seed, ensemble)
    if figures(run) is not None or os.environ.get("ENSEMBLES_NO_TRAIN") == "1":
        return
    adapt_sites.train_run(capuchin_config(seed, ensemble), run)


def _stats(values: list[float | None]) -> str:
    done = [v for v in values if v is not None]
    if len(done) > 1:
        return f"{statistics.mean(done):.3f} ± {statistics.stdev(done):.3f}"
    return f"{done[0]:.3f} (1 seed)" if done else "-"


def _delta(values: list[float | None], base: list[float | None]) -> str:
    """Mean over the seeds both have of ensemble minus one model, and the per-seed differences."""
    pairs = [(v, b) for v, b in zip(values, base) if v is not None and b is not None]
    if not pairs:
        return "-"
    each = ", ".join(f"{v - b:+.3f}" for v, b in pairs)
    return f"{statistics.mean(v - b for v, b in pairs):+.3f} ({each})"


def _title(ensemble: int) -> str:
    return "one model (the example)" if ensemble == 1 else f"ensemble of {ensemble}"


def table(runs: dict[tuple[int, int], Path]) -> list[str]:
    """The figures of ``runs`` ({(ensemble, seed): run folder}): one row per metric and
    configuration (mean ± sd over the seeds, each seed, the ensemble's difference), then the
    per-fold chunk F1 of every run."""
    found = {key: figures(run) for key, run in runs.items()}
    metrics = (
        ("pooled chunk F1", lambda f: f.f1),
        ("pooled count r", lambda f: f.r),
    )
    seeds = " | ".join(f"seed {s}" for s in SEEDS)
    rows = [
        f"| metric | configuration | {seeds} | mean ± sd | ensemble minus one model: mean (per seed) |",
        "|---|---|" + "---:|" * len(SEEDS) + "---:|---|",
    ]
    for metric, pick in metrics:
        base = [None if found.get((1, s)) is None else pick(found[(1, s)]) for s in SEEDS]
        for size in SIZES[::-1]:
            values = [None if found.get((size, s)) is None else pick(found[(size, s)]) for s in SEEDS]
            cells = " | ".join("-" if v is None else f"{v:.3f}" for v in values)
            delta = "" if size == 1 else _delta(values, base)
            rows.append(f"| {metric} | {_title(size)} | {cells} | {_stats(values)} | {delta} |")
    rows += [
        "",
        "| configuration | seed | run | fold1 (main) | fold2 | fold3 | fold4 | fold5 | pooled (tp, fp, fn) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for size in SIZES[::-1]:
        for seed in SEEDS:
            f = found.get((size, seed))
            run = runs.get((size, seed))
            where = "-" if run is None else f"`{run.relative_to(REPO) if run.is_relative_to(REPO) else run}`"
            if f is None:
                rows.append(f"| {_title(size)} | {seed} | {where} | - | - | - | - | - | not run |")
                continue
            folds = " | ".join(f"{v:.3f}" for v in f.folds)
            rows.append(
                f"| {_title(size)} | {seed} | {where} | {folds} | {f.f1:.3f} ({f.tp}, {f.fp}, {f.fn}) |"
            )
    return rows


def run() -> str:
    lines = [
        "## The ensemble on the Capuchinbird folds, three seeds (issue 17)",
        "",
        preamble(NAME),
        __doc__.split("\n\n")[1],
        "",
    ]
    if not adapt_sites.DATA.is_dir():
        return "\n".join(lines + ["Skipped: ../shared/data is not present."]) + "\n"
    RUNS.mkdir(parents=True, exist_ok=True)
    for size in SIZES:
        for seed in SEEDS:
            _train(seed, size)
    runs = {(size, seed): run_for(seed, size) for size in SIZES for seed in SEEDS}
    commands = [
        "Commands (per seed; `bench.ensembles.capuchin_config` writes the configs):",
        "",
        "```",
        "python -m train --config runs/ensembles/capuchin-ens<3|1>-<seed>.yaml --data-root ../shared/data "
        "--out runs/ensembles/capuchin-ens<3|1>-<seed>",
        "ENSEMBLES_NO_TRAIN=1 python -m bench --only ensembles --write   # the table from existing runs only",
        "```",
    ]
    return "\n".join(lines + table(runs) + [""] + commands) + "\n"
