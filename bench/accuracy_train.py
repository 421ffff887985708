"""Training accuracy on the shared data sets, on groups the model never saw.

Reads ``runs/bobwhite`` and ``runs/capuchin`` when ``python -m train`` has made them from the
example configs (their metrics.json names the exact command); otherwise trains them here with
``python -m train --config examples/<name>.yaml --data-root ../shared/data`` (a subprocess
using every core: training is the workstation's job, not the device's). Targets (issue #3):

- Bobwhite, clip ROC-AUC on a site group never trained on >= 0.93 (both directions reported);
- Capuchinbird, on recordings held out of training: 3 s chunk F1 >= 0.95 and per-recording
  count correlation >= 0.99.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench import preamble

NAME = "accuracy_train"
REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RUNS = ("bobwhite", "capuchin")
_THREAD_LIMITS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                  "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "TF_NUM_INTRAOP_THREADS",
                  "TF_NUM_INTEROP_THREADS")


def _summary(name: str) -> dict:
    """metrics.json of runs/<name>, training the run first when it is missing."""
    run_dir = REPO / "runs" / name
    if not (run_dir / "metrics.json").is_file():
        env = {k: v for k, v in os.environ.items() if k not in _THREAD_LIMITS}
        subprocess.run([sys.executable, "-m", "train", "--config", f"examples/{name}.yaml", "--data-root",
                        str(DATA), "--out", str(run_dir)], cwd=REPO, env=env, check=True,
                       stdout=subprocess.DEVNULL)
    return json.loads((run_dir / "metrics.json").read_text())


def _f(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _met(value, target) -> str:
    return "met" if value is not None and value >= target else "NOT met"


def _train_seconds(summary: dict) -> float:
    """The whole command's time (folds included) when recorded, else the main model's training."""
    return summary.get("wall_seconds") or summary["training"]["seconds"]


def _pooled_rows(summary: dict, label: str) -> list[str]:
    """Rows of a k-fold cross-validation (every recording held out once), when the run made one."""
    folds = summary.get("folds", {})
    pooled, spread = folds.get("pooled", {}), folds.get("spread", {})
    chunk, count = pooled.get(f"{label} chunk"), pooled.get(f"{label} count")
    if not chunk or not count:
        return []
    what = f"{folds.get('kind', 'k-fold')} cross-validation, {count['recordings']} recordings each held out once"
    f1, r = spread.get(f"{label} chunk F1", {}), spread.get(f"{label} count r", {})
    return [f"| capuchin | {label} | 3 s chunk F1, pooled over a {what} | {_f(chunk['f1'])} "
            f"| >= 0.95: {_met(chunk['f1'], 0.95)} |",
            f"| capuchin | {label} | per-recording count Pearson r, pooled over the same folds | "
            f"{_f(count['pearson_r'])} | >= 0.99: {_met(count['pearson_r'], 0.99)} |",
            f"| capuchin | {label} | pooled precision / recall (tp, fp, fn) | {_f(chunk['precision'])} / "
            f"{_f(chunk['recall'])} ({chunk['tp']}, {chunk['fp']}, {chunk['fn']}) | |",
            f"| capuchin | {label} | per fold: chunk F1 / count r, mean ± sd | {_f(f1.get('mean'))} ± "
            f"{_f(f1.get('std'))} / {_f(r.get('mean'))} ± {_f(r.get('std'))} | |"]


def run() -> str:
    lines = ["## Training: accuracy on held-out groups (float model)", "", preamble(NAME),
             "Each run: `python -m train --config examples/<name>.yaml --data-root ../shared/data` "
             "(the command actually used is listed below). Splits are by group, written to the "
             "run's split.csv; no test recording or site is trained on, validation picks the epoch "
             "and the threshold. int8 figures are in the conversion section.", ""]
    if not DATA.is_dir():
        return "\n".join(lines + ["Skipped: ../shared/data is not present."]) + "\n"
    rows, commands = [], []
    for name in RUNS:
        try:
            summary = _summary(name)
        except (subprocess.CalledProcessError, OSError, ValueError) as exc:
            rows.append(f"| {name} | - | - | - | failed: {exc} |")
            continue
        took = f"{_train_seconds(summary) / 60:.1f} min wall on this machine"
        commands.append(f"- `runs/{name}`: `{summary.get('command') or 'python -m train'}` ({took})")
        metrics = summary["metrics"]
        for label in summary["labels"]:
            if name == "bobwhite":
                folds = summary.get("folds", {}).get("folds", [])
                for row in folds or [{"test_group": ", ".join(summary["split_counts"]["test"]["groups"]),
                                      f"{label} clip ROC-AUC": metrics["clip"][label]["roc_auc"]}]:
                    value = row.get(f"{label} clip ROC-AUC")
                    rows.append(f"| bobwhite | {label} | clip ROC-AUC, site {row['test_group']} never trained on "
                                f"| {_f(value)} | >= 0.93: {_met(value, 0.93)} |")
                spread = summary.get("folds", {}).get("spread", {}).get(f"{label} clip ROC-AUC")
                if spread:
                    rows.append(f"| bobwhite | {label} | clip ROC-AUC, mean ± sd over the sites | "
                                f"{_f(spread['mean'])} ± {_f(spread['std'])} | |")
            else:
                chunk = metrics.get("chunk", {}).get(label, {})
                count = metrics.get("count", {}).get(label, {})
                n_test = summary["split_counts"]["test"]["recordings"]
                rows.append(f"| capuchin | {label} | 3 s chunk F1, {n_test} held-out recordings | {_f(chunk.get('f1'))} "
                            f"| >= 0.95: {_met(chunk.get('f1'), 0.95)} |")
                rows.append(f"| capuchin | {label} | per-recording count Pearson r | {_f(count.get('pearson_r'))} "
                            f"| >= 0.99: {_met(count.get('pearson_r'), 0.99)} |")
                rows.append(f"| capuchin | {label} | 3 s chunk ROC-AUC / precision / recall | "
                            f"{_f(chunk.get('roc_auc'))} / {_f(chunk.get('precision'))} / {_f(chunk.get('recall'))} | |")
                rows += _pooled_rows(summary, label)
    lines += ["| data set | label | metric (test split) | value | target |", "|---|---|---|---|---|", *rows, "",
              *commands]
    return "\n".join(lines) + "\n"
