"""Levers for a new site (issue 17), one at a time, on the two Bobwhite sites at three seeds.

Each lever is ``examples/bobwhite.yaml`` with ONE change, trained once per seed (1234, 7, 42)
and per direction (test split WLFW_AL, then DiLane; ``train.split.test_groups``, so each model is
that direction's leave-one-site-out fold, cross-validation and ``final`` off), and scored as the
run scores its test split: clip ROC-AUC, a clip's score the max over its windows (every 0.5 s).
Every configuration pins ``train.model.pooling`` (``max`` unless the lever is the pooling), one
model and a 0.5 s hop (``adapt_sites.PINNED``, unless the lever is the ensemble), so the figures do
not move when the example's own settings do. The example's row reuses the base runs
of the ``adapt_sites`` bench (``runs/adapt-bench/base-<site>-<seed>``: the same model, pooling
max, made when missing); the levers' runs live in ``runs/site-levers/<lever>-<site>-<seed>``. Runs are made when
missing (one ``python -m train`` at a time, 4-9 minutes each on the shared 2-core machine) and
reused when present; with ``SITE_LEVERS_NO_TRAIN=1`` nothing is trained and a missing run reads
"-". A lever beats the noise only if its mean moves by more than the spread between seeds.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from bench import adapt_sites, preamble, seed_delta, seed_stats

NAME = "site_levers"
RUNS = adapt_sites.REPO / "runs" / "site-levers"
SEEDS = adapt_sites.SEEDS
SITES = ("WLFW_AL", "DiLane")
POOLING = {"train.model.pooling": "max"}
"""What every lever's config pins unless the lever changes it."""
RAINFOREST_RATE = "train.datasets.2.negatives_per_minute"
"""The example's third dataset, the Capuchinbird soundscapes: negatives (other birds, insects,
rain) drawn per minute of audio."""


@dataclass(frozen=True)
class Lever:
    """One configuration: the example with ``changes`` (dotted keys) applied."""

    key: str
    """Run-name prefix: runs/site-levers/<key>-<site>-<seed>."""
    title: str
    """How the table names it."""
    changes: dict[str, object] = field(default_factory=dict)


EXAMPLE = Lever("example", "the example (log-mel, band mean, pooling max)")
LEVERS = (
    Lever(
        "time", "`train.model.pooling: time` (frame-level head)", {"train.model.pooling": "time"}
    ),
    Lever("eq6", "colouring `train.augment.eq_db: 6`", {"train.augment.eq_db": 6.0}),
    Lever(
        "snr-5",
        "wider SNR `train.augment.snr_db: [-5, 20]`",
        {"train.augment.snr_db": [-5.0, 20.0]},
    ),
    Lever(
        "reverb-snr",
        "reverberation `reverb_p: 0.5` + wider SNR `snr_db: [-5, 20]` (the two best on DiLane)",
        {"train.augment.reverb_p": 0.5, "train.augment.snr_db": [-5.0, 20.0]},
    ),
    Lever(
        "neg6",
        "three times the rainforest negatives (`negatives_per_minute: 6` on capuchin/recordings)",
        {RAINFOREST_RATE: 6.0},
    ),
    Lever("mixup", "mixup `train.augment.mixup_alpha: 0.4`", {"train.augment.mixup_alpha": 0.4}),
    Lever(
        "fshift2",
        "pitch shift `train.augment.freq_shift_bands: 2`",
        {"train.augment.freq_shift_bands": 2},
    ),
    Lever(
        "ensemble3",
        "an ensemble of 3 `train.model.ensemble: 3` (3 models on the device)",
        {"train.model.ensemble": 3},
    ),
)
ORDER = (
    ("time", SEEDS),
    ("eq6", (1234, 42)),
    ("snr-5", (1234, 42)),
    ("eq6", (7,)),
    ("snr-5", (7,)),
    ("reverb-snr", SEEDS),
    ("neg6", SEEDS),
    ("mixup", SEEDS),
    ("fshift2", SEEDS),
    ("ensemble3", SEEDS),
)
"""Training order when runs are missing: the brief's priorities (most wanted first)."""


def _roc_auc(run: Path) -> float | None:
    metrics = run / "metrics.json"
    if not metrics.is_file():
        return None
    value = json.loads(metrics.read_text())["metrics"]["clip"]["bobwhite"]["roc_auc"]
    return float(value)


def _train(lever: Lever, site: str, seed: int) -> None:
    run = RUNS / f"{lever.key}-{site}-{seed}"
    if _roc_auc(run) is not None or os.environ.get("SITE_LEVERS_NO_TRAIN") == "1":
        return
    name = run.name
    config = adapt_sites.bobwhite_config(
        site, seed, name=name, folder=RUNS, changes={**POOLING, **lever.changes}
    )
    adapt_sites.train_run(config, run)


def _example(site: str, seed: int) -> float | None:
    if os.environ.get("SITE_LEVERS_NO_TRAIN") == "1":
        return _roc_auc(adapt_sites.RUNS / f"base-{site}-{seed}")
    return adapt_sites.base_roc_auc(site, seed)


def table() -> list[str]:
    """The figures, training whatever is missing first (in :data:`ORDER`)."""
    levers = {lever.key: lever for lever in LEVERS}
    for key, seeds in ORDER:
        for seed in seeds:
            for site in SITES:
                if _example(site, seed) is not None:
                    _train(levers[key], site, seed)
    example = {site: [_example(site, s) for s in SEEDS] for site in SITES}
    rows = [
        "| configuration | held out | seed 1234 | seed 7 | seed 42 | mean ± sd | minus the example: mean (per seed) |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for lever in (EXAMPLE, *LEVERS):
        for site in SITES:
            if lever is EXAMPLE:
                values = example[site]
            else:
                values = [_roc_auc(RUNS / f"{lever.key}-{site}-{s}") for s in SEEDS]
            cells = " | ".join("-" if v is None else f"{v:.3f}" for v in values)
            delta = "" if lever is EXAMPLE else seed_delta(values, example[site])
            rows.append(f"| {lever.title} | {site} | {cells} | {seed_stats(values)} | {delta} |")
    return rows


def run() -> str:
    lines = [
        "## Levers for a new site, one at a time, three seeds (issue 17)",
        "",
        preamble(NAME),
        __doc__.split("\n\n")[1],
        "",
    ]
    if not adapt_sites.DATA.is_dir():
        return "\n".join(lines + ["Skipped: ../shared/data is not present."]) + "\n"
    RUNS.mkdir(parents=True, exist_ok=True)
    commands = [
        "Commands (per lever, site and seed; `bench.adapt_sites.bobwhite_config` writes the configs):",
        "",
        "```",
        "python -m train --config runs/site-levers/<lever>-<site>-<seed>.yaml --data-root ../shared/data "
        "--out runs/site-levers/<lever>-<site>-<seed>",
        "SITE_LEVERS_NO_TRAIN=1 python -m bench --only site_levers --write   # the table from existing runs only",
        "```",
    ]
    return "\n".join(lines + table() + [""] + commands) + "\n"
