"""int8 conversion on the real data sets: float vs int8 ROC-AUC, model size and parameters.

Takes the run folders ``runs/bobwhite`` and ``runs/capuchin`` when they exist (``python -m
train`` makes them; their metrics.json names the command). Each run's inputs (model.keras,
run.json, calibration.npy, test_windows.npz, config.resolved.yaml) are copied to a temporary
folder and converted there with :func:`convert.core.convert_run`, exactly what
``python -m convert --int8 runs/<name>`` does, so the bench leaves the runs untouched. The
int8 scores come from the device's own classifier (LiteRT, one window at a time).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from bench import preamble

NAME = "convert"
REPO = Path(__file__).resolve().parents[1]
RUNS = ("bobwhite", "capuchin")
INPUTS = ("model.keras", "run.json", "calibration.npy", "test_windows.npz", "config.resolved.yaml")
TARGET_AUC_LOSS = 0.005
"""Issue #4: int8 ROC-AUC within 0.005 of float on the shared data sets..."""
TARGET_KB = 100.0
"""...and a model of at most 100 KB."""


def _train_command(run_dir: Path) -> str:
    try:
        return str(json.loads((run_dir / "metrics.json").read_text()).get("command") or "python -m train")
    except (OSError, ValueError):
        return "python -m train"


def _convert_copy(run_dir: Path) -> tuple[object, float]:
    """Convert a temporary copy of ``run_dir``; returns (ConvertResult, wall seconds)."""
    from convert.core import convert_run, load_settings

    with tempfile.TemporaryDirectory(prefix="bench_convert_") as tmp:
        copy = Path(tmp) / run_dir.name
        copy.mkdir()
        for name in INPUTS:
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, copy / name)
        settings, _ = load_settings(run_dir=copy)
        start = time.perf_counter()
        result = convert_run(run_dir=copy, settings=settings, log=lambda line: None, warn=lambda line: None)
        return result, time.perf_counter() - start


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def run() -> str:
    lines = [
        "## int8 conversion: float vs int8 on the shared data sets",
        "",
        preamble(NAME),
        f"Per run: `python -m convert --int8 runs/<name>` on a copy of the run folder; targets "
        f"(issue #4): int8 ROC-AUC within {TARGET_AUC_LOSS} of float, model <= {TARGET_KB:g} KB. "
        "ROC-AUC on the run's held-out test windows (`test_windows.npz`), int8 scored by the "
        "device's classifier under ai_edge_litert.",
        "",
    ]
    found = [REPO / "runs" / name for name in RUNS if (REPO / "runs" / name / "model.keras").is_file()]
    if not found:
        lines.append(f"Skipped: none of {', '.join(f'runs/{n}' for n in RUNS)} holds a trained model; "
                     "train them first (see the training section), then re-run this benchmark.")
        return "\n".join(lines) + "\n"
    lines += [
        "| run | label | test windows | ROC-AUC float | ROC-AUC int8 | loss | largest score diff "
        "| agreement at threshold | model.tflite KiB | parameters | convert wall s | targets |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    commands = []
    for run_dir in found:
        commands.append(f"- `runs/{run_dir.name}`: trained with `{_train_command(run_dir)}`")
        try:
            result, seconds = _convert_copy(run_dir)
        except Exception as exc:  # a bench reports a broken run instead of stopping the others
            lines.append(f"| {run_dir.name} | - | - | - | - | - | - | - | - | - | - | failed: {exc} |")
            continue
        m = result.metrics
        if "cross_validated" in m:  # a final model: its test windows are the folds', trained on
            commands.append(f"- `runs/{run_dir.name}` is a final model (`--final`): its test windows are the "
                            "folds' pooled held-out windows, which it trained on, so its float ROC-AUC there "
                            "is no estimate; int8 against float is the check")
        for label, d in m["int8_vs_float"].items():
            loss = d["roc_auc_loss"]
            met = (loss is not None and loss <= TARGET_AUC_LOSS) and result.size_kb <= TARGET_KB
            lines.append(
                f"| {run_dir.name} | {label} | {m['test_windows']} | {_fmt(m['float'][label]['roc_auc'])} "
                f"| {_fmt(m['int8'][label]['roc_auc'])} | {_fmt(loss)} | {d['max_score_diff']:.4f} "
                f"| {d['agreement_at_threshold']:.4f} | {result.size_kb:.1f} | {result.params:,} "
                f"| {seconds:.1f} | {'met' if met else 'NOT met'} |"
            )
    lines += ["", "Loss = float ROC-AUC minus int8 ROC-AUC (negative: int8 scored higher).", "", *commands]
    return "\n".join(lines) + "\n"
