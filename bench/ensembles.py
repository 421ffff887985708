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

The synthetic set: ``config.yaml`` (the demo's model, trained on ``demo/data`` from
``python -m train.synth --out demo/data``) the same way, one model and the ensemble at the
three seeds (``runs/ensembles/demo-ens<1|3>-<seed>``; ``runs/demo`` reused when its config is
identical), each converted (``python -m convert --int8``) and replayed through
``python -m device --replay`` over the ``events`` bench's synthetic soundscapes: its events
against the calls, scored as that bench scores them (F1 at IoU >= 0.3, uncertain calls neither
missed nor false alarms). A demo model trains in about a minute, an ensemble in three.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench import adapt_sites, events, preamble, seed_delta, seed_stats

NAME = "ensembles"
REPO = adapt_sites.REPO
RUNS = REPO / "runs" / "ensembles"
SEEDS = adapt_sites.SEEDS
SIZES = (3, 1)
"""Training order: the ensembles first (the brief's priority), then the missing one-model runs."""
CAPUCHIN, DEMO = "capuchin", "demo"
SOURCES = {CAPUCHIN: REPO / "examples" / "capuchin.yaml", DEMO: REPO / "config.yaml"}
DEMO_DATA = REPO / "demo" / "data"
LABEL = "capuchinbird"
IGNORED = ("name", "data_root", "cache_dir")
"""Keys of ``train`` that do not change what a run learns (where it is written and cached)."""


def write_config(kind: str, seed: int, ensemble: int, *, folder: Path = RUNS) -> Path:
    """Write ``folder/<kind>-ens<ensemble>-<seed>.yaml``: the example's config (kind
    :data:`CAPUCHIN`: examples/capuchin.yaml, :data:`DEMO`: config.yaml) with ``train.seed`` and
    ``train.model.ensemble`` set, ``split.final`` off and the shared feature cache (``runs/.cache``)."""
    import yaml  # PyYAML: a train/device dependency, imported only by benches that train

    name = f"{kind}-ens{ensemble}-{seed}"
    config = yaml.safe_load(SOURCES[kind].read_text())
    train = config["train"]
    if kind == CAPUCHIN and not train.get("split", {}).get("folds"):
        raise ValueError("examples/capuchin.yaml no longer has train.split.folds")
    if train.get("split", {}).get("final"):
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
    from device.config.loader import load_config

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


def candidates(kind: str) -> list[Path]:
    """Existing one-model runs of ``kind`` that may have been trained with a bench config."""
    runs = REPO / "runs"
    found = [
        runs / kind,
        *runs.glob(f"{kind}-*"),
        *runs.glob(f"{kind}_*"),
        *(runs / "exp").glob("*"),
    ]
    return sorted(r for r in found if r.is_dir())


def run_for(kind: str, seed: int, ensemble: int) -> Path:
    """The run folder of the configuration: an identical existing one-model run when there is
    one, else runs/ensembles/<kind>-ens<ensemble>-<seed>."""
    own = RUNS / f"{kind}-ens{ensemble}-{seed}"
    if ensemble == 1 and not (own / "metrics.json").is_file():
        with tempfile.TemporaryDirectory(prefix="bench_ensembles_") as tmp:
            config = write_config(kind, seed, ensemble, folder=Path(tmp))
            for run in candidates(kind):
                if same_config(config, run):
                    return run
    return own


@dataclass(frozen=True)
class Figures:
    """One Capuchin run's pooled figures over its folds."""

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
        float(chunk["f1"]),
        float(count["pearson_r"]),
        chunk["tp"],
        chunk["fp"],
        chunk["fn"],
        per_fold,
    )


def _no_train() -> bool:
    return os.environ.get("ENSEMBLES_NO_TRAIN") == "1"


def train(kind: str, seed: int, ensemble: int) -> None:
    """Train (and for the demo, convert) the configuration unless its run is there."""
    run = run_for(kind, seed, ensemble)
    if _no_train():
        return
    if kind == CAPUCHIN:
        if figures(run) is None:
            adapt_sites.train_run(write_config(kind, seed, ensemble), run)
        return
    if not (DEMO_DATA / "clips").is_dir():
        adapt_sites._python(
            "-m", "train.synth", "--out", str(DEMO_DATA), log=RUNS / "demo-data.log"
        )
    if not (run / "metrics.json").is_file():
        config = write_config(kind, seed, ensemble)
        adapt_sites._python(
            "-m",
            "train",
            "--config",
            str(config),
            "--data-root",
            str(DEMO_DATA),
            "--out",
            str(run),
            log=run.with_suffix(".log"),
        )
    if (run / "metrics.json").is_file() and not (run / "model.tflite").is_file():
        adapt_sites._python(
            "-m", "convert", "--int8", str(run), log=run.with_suffix(".convert.log")
        )


@dataclass(frozen=True)
class Events:
    """One demo bundle's events against the synthetic set's calls, pooled over its files."""

    f1: float
    precision: float
    recall: float
    onset_s: float
    offset_s: float
    separate: int
    apart: int


def events_figures(runs: list[Path]) -> dict[Path, Events]:
    """Each converted run's events on the ``events`` bench's synthetic soundscapes (made once)."""
    done = [
        run for run in runs if (run / "model.tflite").is_file() and (run / "model.json").is_file()
    ]
    found = {}
    with tempfile.TemporaryDirectory(prefix="bench_ensembles_") as tmp:
        files = events.synth_set(Path(tmp) / "synth") if done else []
        calls = {f.name: events.calls_of(f) for f in files}
        for k, run in enumerate(done):
            folder = Path(tmp) / f"replay{k}"
            folder.mkdir()
            made, _ = events.replay(files, run, folder)
            parts = [
                events.score(
                    [(e["start_s"], e["end_s"]) for e in made if Path(e["source"]).name == f.name],
                    calls[f.name],
                )
                for f in files
            ]
            p = events.pooled(parts)
            found[run] = Events(
                p["f1"],
                p["precision"],
                p["recall"],
                p["onset_s"],
                p["offset_s"],
                p["separate"],
                p["apart"],
            )
    return found


def _title(ensemble: int) -> str:
    return "one model (the example)" if ensemble == 1 else f"ensemble of {ensemble}"


def _where(run: Path | None) -> str:
    if run is None:
        return "-"
    return f"`{run.relative_to(REPO) if run.is_relative_to(REPO) else run}`"


def metric_rows(metrics: list[tuple[str, dict[tuple[int, int], float | None]]]) -> list[str]:
    """A table: per metric (name, {(ensemble, seed): value}) one row per configuration with each
    seed, mean ± sd, and for the ensemble its difference from one model."""
    seeds = " | ".join(f"seed {s}" for s in SEEDS)
    rows = [
        f"| metric | configuration | {seeds} | mean ± sd | ensemble minus one model: mean (per seed) |",
        "|---|---|" + "---:|" * len(SEEDS) + "---:|---|",
    ]
    for metric, value in metrics:
        base = [value.get((1, s)) for s in SEEDS]
        for size in SIZES[::-1]:
            values = [value.get((size, s)) for s in SEEDS]
            cells = " | ".join("-" if v is None else f"{v:.3f}" for v in values)
            delta = "" if size == 1 else seed_delta(values, base)
            rows.append(f"| {metric} | {_title(size)} | {cells} | {seed_stats(values)} | {delta} |")
    return rows


def capuchin_table(runs: dict[tuple[int, int], Path]) -> list[str]:
    """The Capuchin figures of ``runs`` ({(ensemble, seed): run folder}): pooled chunk F1 and
    count r per configuration and seed, then every run's per-fold chunk F1."""
    found = {key: figures(run) for key, run in runs.items()}
    rows = metric_rows(
        [
            ("pooled chunk F1", {k: None if f is None else f.f1 for k, f in found.items()}),
            ("pooled count r", {k: None if f is None else f.r for k, f in found.items()}),
        ]
    )
    rows += [
        "",
        "| configuration | seed | run | fold1 (main) | fold2 | fold3 | fold4 | fold5 | pooled (tp, fp, fn) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for size in SIZES[::-1]:
        for seed in SEEDS:
            f, where = found.get((size, seed)), _where(runs.get((size, seed)))
            if f is None:
                rows.append(f"| {_title(size)} | {seed} | {where} | - | - | - | - | - | not done |")
                continue
            folds = " | ".join(f"{v:.3f}" for v in f.folds)
            rows.append(
                f"| {_title(size)} | {seed} | {where} | {folds} | {f.f1:.3f} ({f.tp}, {f.fp}, {f.fn}) |"
            )
    return rows


def events_table(found: dict[tuple[int, int], Events | None]) -> list[str]:
    """The synthetic set's figures ({(ensemble, seed): events or None})."""

    def pick(attribute: str) -> dict[tuple[int, int], float | None]:
        return {k: None if e is None else getattr(e, attribute) for k, e in found.items()}

    rows = metric_rows(
        [
            (f"event F1 @ IoU {events.MIN_IOU}", pick("f1")),
            ("event precision", pick("precision")),
            ("event recall", pick("recall")),
            ("median onset error s", pick("onset_s")),
            ("median offset error s", pick("offset_s")),
        ]
    )
    separate = []
    for size in SIZES:
        done = [(seed, found.get((size, seed))) for seed in SEEDS]
        each = ", ".join(
            f"{e.separate} of {e.apart} (seed {seed})" for seed, e in done if e is not None
        )
        if each:
            separate.append(f"{_title(size)}: {each}")
    if separate:
        rows += ["", "Calls 1 s or more apart reported separately: " + "; ".join(separate) + "."]
    return rows


def run() -> str:
    docs = __doc__.split("\n\n")
    lines = [
        "## The ensemble on the Capuchinbird folds and the synthetic set, three seeds (issue 17)",
        "",
        preamble(NAME),
        docs[1],
        "",
    ]
    if not adapt_sites.DATA.is_dir():
        return "\n".join(lines + ["Skipped: ../shared/data is not present."]) + "\n"
    RUNS.mkdir(parents=True, exist_ok=True)
    for size in SIZES:
        for seed in SEEDS:
            train(CAPUCHIN, seed, size)
    for size in SIZES:
        for seed in SEEDS:
            train(DEMO, seed, size)
    keys = [(size, seed) for size in SIZES for seed in SEEDS]
    capuchin = {key: run_for(CAPUCHIN, key[1], key[0]) for key in keys}
    demo = {key: run_for(DEMO, key[1], key[0]) for key in keys}
    measured = events_figures(list(demo.values()))
    commands = [
        "Commands (per kind, ensemble size and seed; `bench.ensembles.write_config` writes the configs):",
        "",
        "```",
        "python -m train --config runs/ensembles/capuchin-ens<3|1>-<seed>.yaml --data-root ../shared/data "
        "--out runs/ensembles/capuchin-ens<3|1>-<seed>",
        "python -m train.synth --out demo/data",
        "python -m train --config runs/ensembles/demo-ens<3|1>-<seed>.yaml --data-root demo/data "
        "--out runs/ensembles/demo-ens<3|1>-<seed>",
        "python -m convert --int8 runs/ensembles/demo-ens<3|1>-<seed>",
        "ENSEMBLES_NO_TRAIN=1 python -m bench --only ensembles --write   # the tables from existing runs only",
        "```",
    ]
    return (
        "\n".join(
            lines
            + ["Capuchinbird, 5 folds pooled (50 recordings):", ""]
            + capuchin_table(capuchin)
            + ["", docs[2].strip(), ""]
            + events_table({key: measured.get(run) for key, run in demo.items()})
            + [
                "",
                "Runs: "
                + ", ".join(f"{_title(k[0])} seed {k[1]} {_where(r)}" for k, r in demo.items()),
                "",
            ]
            + commands
        )
        + "\n"
    )
