"""What a user receives at a site the model never heard (issue 17): the Bobwhite models of the
``adapt_sites`` and ``site_levers`` benches converted to int8 bundles and run through
``python -m device --replay`` on the held-out site's 60 clips, a clip's score its highest window
score in the scores CSV; at the 0.5 s hop the runs were trained and scored with and at the 1 s
hop the example ships since the ensemble. One model (the example as it was, ``adapt_sites``'s base
runs) against the ensemble of three (``train.model.ensemble: 3``, ``site_levers``'s lever
``ensemble3``), seeds 1234, 7, 42, both directions. Then the device cost of one bundle of each at
each hop (``bench.daemon``'s in-process worker, the bundles taking turns).

The bundles are converted from copies of the runs (``runs/site-replay/<kind>-<site>-<seed>``),
so the runs stay as the other benches made them; runs that are missing are not trained here.
"""

from __future__ import annotations

import csv
import shutil
import tempfile
from pathlib import Path

from bench import adapt_sites, preamble, seed_stats, site_levers

NAME = "site_replay"
RUNS = adapt_sites.REPO / "runs" / "site-replay"
HOPS = (0.5, 1.0)
KINDS = {
    "one": ("one model (the example before session 9)", adapt_sites.RUNS, "base"),
    "ensemble3": ("an ensemble of three (the example since session 9)", site_levers.RUNS, "ensemble3"),
}
"""Bundle kind -> (title, folder of its runs, run-name prefix)."""
COST_ROUNDS = 3


def clips(site: str) -> list[tuple[Path, int]]:
    """The site's clips and their labels (1 presence, 0 absence), in a fixed order."""
    root = adapt_sites.DATA / "bobwhite"
    return [(f, label) for folder, label in (("presence", 1), ("absence", 0))
            for f in sorted((root / folder).glob(f"{site}_*.wav"))]


def bundle(kind: str, site: str, seed: int) -> Path | None:
    """The int8 bundle of that run (converted once, from a copy), None when the run is missing."""
    _, folder, prefix = KINDS[kind]
    run = folder / f"{prefix}-{site}-{seed}"
    out = RUNS / f"{kind}-{site}-{seed}"
    if (out / "model.json").is_file():
        return out
    if not (run / "model.keras").is_file():
        return None
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(run, out, ignore=shutil.ignore_patterns("model.tflite", "model.json", "plots"))
    adapt_sites._python("-m", "convert", "--int8", str(out), log=out.with_suffix(".convert.log"))
    return out if (out / "model.json").is_file() else None


def clip_scores(scores_csv: Path) -> dict[str, float]:
    """Each source's highest window score in a ``--scores-csv`` file (one label)."""
    best: dict[str, float] = {}
    with open(scores_csv, newline="") as f:
        for row in csv.DictReader(f):
            best[row["source"]] = max(best.get(row["source"], 0.0), float(row["score"]))
    return best


def replay_roc_auc(model: Path, site: str, hop_s: float) -> float:
    """Clip ROC-AUC of ``python -m device --replay`` of the site's clips at ``hop_s``."""
    from sklearn.metrics import roc_auc_score

    files = clips(site)
    with tempfile.TemporaryDirectory() as tmp:
        scores = Path(tmp) / "scores.csv"
        config = Path(tmp) / "config.yaml"
        config.write_text(f"detection: {{hop_s: {hop_s}}}\n")
        adapt_sites._python("-m", "device", "--config", str(config), "--replay", *(str(f) for f, _ in files),
                            "--model", str(model), "--scores-csv", str(scores), log=Path(tmp) / "replay.log")
        best = clip_scores(scores)
    missing = [f.name for f, _ in files if str(f) not in best]
    if missing:
        raise RuntimeError(f"replay of {model} scored no window of {missing[0]} (and {len(missing) - 1} more)")
    return float(roc_auc_score([label for _, label in files], [best[str(f)] for f, _ in files]))


def accuracy_rows() -> list[str]:
    rows = [
        "| model | held out | hop | seed 1234 | seed 7 | seed 42 | mean ± sd |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for kind, (title, _, _) in KINDS.items():
        for site in site_levers.SITES:
            bundles = [bundle(kind, site, seed) for seed in adapt_sites.SEEDS]
            for hop in HOPS:
                values = [None if b is None else replay_roc_auc(b / "model.tflite", site, hop) for b in bundles]
                cells = " | ".join("-" if v is None else f"{v:.3f}" for v in values)
                rows.append(f"| {title} | {site} | {hop:g} s | {cells} | {seed_stats(values)} |")
    return rows


def cost_rows(site: str = "DiLane", seed: int = 1234) -> list[str]:
    """Front end, inference and whole worker per audio hour of one bundle of each kind at each hop."""
    from bench.daemon import pipeline_cpu

    models = {kind: b for kind in KINDS if (b := bundle(kind, site, seed)) is not None}
    if not models:
        return ["(not measured: no bundle)"]
    best: dict[tuple[str, float], dict] = {}
    for _ in range(COST_ROUNDS):
        for hop in HOPS:
            for kind, b in models.items():
                cpu = pipeline_cpu(b / "model.tflite", hop_s=hop)
                kept = best.setdefault((kind, hop), cpu)
                for key in ("front end", "inference", "worker", "invoke_ms"):
                    kept[key] = min(kept[key], cpu[key])
    rows = [
        f"Device cost (bundles `runs/site-replay/<kind>-{site}-{seed}`; CPU seconds per audio hour, "
        f"one core, best of 7 runs in each of {COST_ROUNDS} rounds in which they take turns):",
        "",
        "| model | hop | front end | inference (ms per window) | front end + inference, target <= 2 | whole worker |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for (kind, hop), cpu in best.items():
        both = cpu["front end"] + cpu["inference"]
        rows.append(
            f"| {KINDS[kind][0]} | {hop:g} s | {cpu['front end']:.2f} | {cpu['inference']:.2f} "
            f"({cpu['invoke_ms']:.3f}) | {both:.2f} ({'met' if both <= 2.0 else 'not met'}) | {cpu['worker']:.2f} |"
        )
    return rows


def run() -> str:
    lines = [
        "## What a user receives at a new site: replayed int8 bundles, one model and the ensemble (issue 17)",
        "",
        preamble(NAME),
        __doc__.split("\n\n")[0].replace("\n", " "),
        "",
    ]
    if not adapt_sites.DATA.is_dir():
        return "\n".join(lines + ["Skipped: ../shared/data is not present."]) + "\n"
    RUNS.mkdir(parents=True, exist_ok=True)
    commands = [
        "Commands (per bundle, site and hop):",
        "",
        "```",
        "python -m convert --int8 runs/site-replay/<kind>-<site>-<seed>",
        "python -m device --config <detection: {hop_s: H}> --replay <the site's 60 clips> "
        "--model runs/site-replay/<kind>-<site>-<seed>/model.tflite --scores-csv scores.csv",
        "```",
    ]
    return "\n".join(lines + accuracy_rows() + [""] + cost_rows() + [""] + commands) + "\n"
