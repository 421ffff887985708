"""report.md, plots/*.png and errors.csv: what a biologist reads after a run.

Plots (matplotlib, Agg backend, no display needed): precision-recall and ROC curves, confusion
matrices at the calibrated thresholds, training curves, and score histograms per label.
``errors.csv`` lists every misclassified test window (file, start, end, label, score, truth),
false alarms by falling score and missed calls by rising score, so the worst come first.
"""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

from train.evaluate import count_summary, rates  # noqa: E402
from train.windows import WindowSet  # noqa: E402


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def _curves(out: Path, labels: list[str], y: np.ndarray, scores: np.ndarray, clip) -> list[str]:
    names = []
    fig_pr, ax_pr = plt.subplots(figsize=(5, 4))
    fig_roc, ax_roc = plt.subplots(figsize=(5, 4))
    sets = [("window", y, scores, "-")]
    if clip[0]:
        sets.append(("clip", clip[1], clip[2], "--"))
    for level, yy, ss, style in sets:
        for i, label in enumerate(labels):
            if not 0 < yy[:, i].sum() < len(yy):
                continue
            precision, recall, _ = precision_recall_curve(yy[:, i], ss[:, i])
            ax_pr.plot(recall, precision, style, label=f"{label} ({level})")
            fpr, tpr, _ = roc_curve(yy[:, i], ss[:, i])
            ax_roc.plot(fpr, tpr, style, label=f"{label} ({level})")
    ax_pr.set(xlabel="recall", ylabel="precision", title="Precision-recall (test)", xlim=(0, 1), ylim=(0, 1.02))
    ax_roc.plot([0, 1], [0, 1], ":", color="grey")
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test)")
    for fig, ax, name in ((fig_pr, ax_pr, "pr_curve.png"), (fig_roc, ax_roc, "roc.png")):
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        names.append(name)
    return names


def _confusion(out: Path, summary: dict) -> str:
    levels = [level for level in ("float", "clip", "chunk") if level in summary["metrics"]]
    labels = summary["labels"]
    fig, axes = plt.subplots(len(levels), len(labels), figsize=(3.2 * len(labels), 3 * len(levels)), squeeze=False)
    for row, level in enumerate(levels):
        for col, label in enumerate(labels):
            m = summary["metrics"][level][label]
            matrix = np.array([[m["tn"], m["fp"]], [m["fn"], m["tp"]]])
            ax = axes[row, col]
            ax.imshow(matrix, cmap="Blues")
            for (r, c), value in np.ndenumerate(matrix):
                ax.text(c, r, str(value), ha="center", va="center",
                        color="white" if value > matrix.max() / 2 else "black")
            ax.set_xticks([0, 1], ["no call", label])
            ax.set_yticks([0, 1], ["no call", label])
            ax.set(xlabel="predicted", ylabel="true",
                   title=f"{label}, {'window' if level == 'float' else level} @ {m['threshold']:.2f}")
    fig.tight_layout()
    fig.savefig(out / "confusion_matrix.png", dpi=90)
    plt.close(fig)
    return "confusion_matrix.png"


def _training(out: Path, training: dict) -> str:
    epochs = np.arange(1, len(training["loss"]) + 1)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(epochs, training["loss"], label="training (augmented)")
    ax1.plot(epochs, training["val_loss"], label="validation")
    ax1.set(xlabel="epoch", ylabel="binary cross-entropy", title="Loss")
    ax2.plot(epochs, training["val_pr_auc"], color="C2")
    ax2.set(xlabel="epoch", ylabel="PR-AUC", title="Validation PR-AUC (mean over labels)")
    for ax in (ax1, ax2):
        ax.axvline(training["best_epoch"], color="grey", ls=":", label="kept")
    ax1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "training_curves.png", dpi=90)
    plt.close(fig)
    return "training_curves.png"


def _histograms(out: Path, labels: list[str], y: np.ndarray, scores: np.ndarray, thresholds: dict) -> str:
    fig, axes = plt.subplots(1, len(labels), figsize=(4.5 * len(labels), 3.5), squeeze=False)
    bins = np.linspace(0, 1, 41)
    for i, label in enumerate(labels):
        ax = axes[0, i]
        ax.hist(scores[y[:, i] < 0.5, i], bins=bins, alpha=0.6, label="no call", color="C0")
        ax.hist(scores[y[:, i] >= 0.5, i], bins=bins, alpha=0.6, label=label, color="C1")
        ax.axvline(thresholds[label]["threshold"], color="k", ls="--", label="threshold")
        ax.set(xlabel="score (probability)", ylabel="test windows", title=f"Scores: {label}", yscale="log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "score_histogram.png", dpi=90)
    plt.close(fig)
    return "score_histogram.png"


def write_errors(path: Path, test: WindowSet, scores: np.ndarray, labels: list[str], thresholds: dict,
                 window_s: float) -> int:
    """errors.csv; returns the number of rows."""
    rows = []
    for i, label in enumerate(labels):
        threshold = thresholds[label]["threshold"]
        truth, predicted = test.y[:, i] >= 0.5, scores[:, i] >= threshold
        for k in np.flatnonzero(truth != predicted):
            kind = "false alarm" if predicted[k] else "missed call"
            rows.append((kind, -scores[k, i] if predicted[k] else scores[k, i], test.source[k],
                         test.start_s[k], label, scores[k, i]))
    rows.sort(key=lambda r: (r[0] != "false alarm", r[1]))
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "start_s", "end_s", "label", "score", "error"])
        for kind, _, source, start, label, score in rows:
            writer.writerow([source, f"{start:.2f}", f"{start + window_s:.2f}", label, f"{score:.4f}", kind])
    return len(rows)


def _table(level: dict, labels: list[str]) -> list[str]:
    lines = ["| label | ROC-AUC | PR-AUC | precision | recall | F1 | threshold | positives | negatives |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label in labels:
        m = level[label]
        lines.append(f"| {label} | {_fmt(m['roc_auc'])} | {_fmt(m['pr_auc'])} | {_fmt(m['precision'])} | "
                     f"{_fmt(m['recall'])} | {_fmt(m['f1'])} | {m['threshold']:.3f} | {m['positives']} | "
                     f"{m['negatives']} |")
    return lines


def headline(summary: dict) -> str:
    """One line of the main figures, for the log."""
    parts = []
    for level, name in (("float", "window"), ("clip", "clip"), ("chunk", "chunk")):
        for label, m in summary["metrics"].get(level, {}).items():
            parts.append(f"{label} {name} ROC-AUC {_fmt(m['roc_auc'])} F1 {_fmt(m['f1'])}")
    for label, c in summary["metrics"].get("count", {}).items():
        parts.append(f"{label} count r {_fmt(c['pearson_r'])}")
    return f"test ({summary['title']}): " + "; ".join(parts)


def write_report(out: Path, *, summary: dict, test: WindowSet, scores: np.ndarray, clip) -> None:
    """plots/*.png, errors.csv and report.md into the run folder ``out``."""
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    labels, metrics = summary["labels"], summary["metrics"]
    images = _curves(plots, labels, test.y, scores, clip)
    images += [_confusion(plots, summary), _training(plots, summary["training"]),
               _histograms(plots, labels, test.y, scores, summary["thresholds"])]
    n_errors = write_errors(out / "errors.csv", test, scores, labels, summary["thresholds"], summary["window_s"])
    t = summary["training"]
    lines = [f"# Training report: {summary['title']}", "", headline(summary), "",
             "## Data and split", "",
             "Split by group (recording, or the site taken by `group_pattern`), never by window; "
             "every recording's split is in `split.csv`.", "",
             "| split | recordings | groups | positive annotations | example groups |", "|---|---|---|---|---|"]
    for name, c in summary["split_counts"].items():
        lines.append(f"| {name} | {c['recordings']} | {c['n_groups']} | {c['positives']} | "
                     f"{', '.join(c['groups'][:5])}{' ...' if c['n_groups'] > 5 else ''} |")
    w = summary["windows"]
    lines += ["", f"Windows: {w['train_per_epoch']} training windows per epoch (fresh crops and augmentation "
              f"each epoch), {w['validation']} validation, {w['test']} test. "
              f"Hard negatives used: {summary['hard_negatives_used']}.", ""]
    if summary["warnings"]:
        lines += [f"**{len(summary['warnings'])} warning(s)**, {summary['skipped_files']} file(s) skipped:", ""]
        lines += [f"- {w}" for w in summary["warnings"][:30]]
        lines += ([f"- ... and {len(summary['warnings']) - 30} more (metrics.json)"] if len(summary["warnings"]) > 30 else [])
        lines.append("")
    final = summary.get("final")
    kept = (f"kept the last, epoch {t['best_epoch']}: {final['epochs_rule']} {final['fold_best_epochs']}"
            if final else f"kept epoch {t['best_epoch']} (best validation PR-AUC, latest epoch within 0.005 "
            "of the best)")
    calibrated_on = "the folds' pooled held-out scores" if final else "validation"
    lines += ["## Model and training", "", summary["model"], "",
              f"{len(t['loss'])} epochs in {t['seconds']:.0f} s; {kept}. Training curves: "
              "`plots/training_curves.png`.", "",
              f"## Thresholds (calibrated on {calibrated_on})", "",
              f"| label | threshold | method | achieved on {calibrated_on} | note |", "|---|---|---|---|---|"]
    for label, th in summary["thresholds"].items():
        achieved = ", ".join(f"{k} {_fmt(v)}" for k, v in th["achieved"].items())
        lines.append(f"| {label} | {th['threshold']:.4f} | {th['method']} | {achieved} | {th.get('note', '')} |")
    if final:
        lines += ["", "## Cross-validated results: the estimate of accuracy", "",
                  f"This model trained on every recording, so it has no test split of its own. The "
                  f"figures below pool the {final['folds']} folds' test splits, each window scored by the "
                  "fold model that never trained on it, at this model's thresholds; plots and "
                  "`errors.csv` are of the same scores. `test_windows.npz` holds those windows for "
                  "`python -m convert`'s int8-vs-float check; the final model itself scores ROC-AUC "
                  + ", ".join(f"{k} {_fmt(v['roc_auc'])}" for k, v in final["metrics_on_training_data"].items())
                  + " on them, which measures nothing but the fit (it trained on them).", "",
                  f"Per window ({summary['window_s']} s):", ""]
    else:
        lines += ["", "## Test results (float model)", "", f"Per window ({summary['window_s']} s):", ""]
    lines += _table(metrics["float"], labels)
    if "clip" in metrics:
        lines += ["", "Per clip (a clip's score is its highest window):", ""] + _table(metrics["clip"], labels)
    if "members" in metrics:
        lines += ["", f"This model is an ensemble of {len(metrics['members'])} (`train.model.ensemble`): the mean "
                  "of their logits. Each member alone, on the same windows: "
                  + "; ".join(f"member {i}: " + ", ".join(f"{label} {name} ROC-AUC {_fmt(m['roc_auc'])}"
                                                          for level, name in (("float", "window"), ("clip", "clip"))
                                                          for label, m in member.get(level, {}).items())
                              for i, member in enumerate(metrics["members"], start=1)) + "."]
    if "chunk" in metrics:
        lines += ["", f"Per {summary['window_s']} s chunk of the long recordings (back to back from 0 s, "
                  "ambiguous chunks left out):", ""] + _table(metrics["chunk"], labels)
    for label, c in metrics.get("count", {}).items():
        lines += ["", f"Positive chunks per recording, {label}: Pearson r = {_fmt(c['pearson_r'])}, "
                  f"mean absolute error {_fmt(c['mean_abs_error'], 2)} chunks over {len(c['recordings'])} recordings."]
    for label, e in metrics.get("events", {}).items():
        lines += ["", f"Events along the timeline, {label} (windows every {summary['hop_s']} s): "
                  f"{e['annotations_found']}/{e['annotations']} annotated calls found, {e['events_hit']} events on "
                  f"calls, {e['false_alarm_events']} false alarms ({_fmt(e['false_alarms_per_hour'], 1)} per hour "
                  f"of background over {e['background_hours']:.2f} h); precision {_fmt(e['precision'])}, recall "
                  f"{_fmt(e['recall'])}, F1 {_fmt(e['f1'])}."]
        where = e.get("localisation")
        if where:
            lines += ["", f"Where the events are ({label}, the device's detector with the bundle's extent rule): "
                      f"F1 {_fmt(where['f1'])} at IoU >= 0.3 against the annotations, median onset error "
                      f"{_fmt(where['median_onset_error_s'], 2)} s, offset error "
                      f"{_fmt(where['median_offset_error_s'], 2)} s."]
    if summary.get("command"):
        lines += ["", "## Reproduce", "", f"`{summary['command']}` (the full configuration is in "
                  "`config.resolved.yaml`; seeds are pinned)."]
    lines += ["", "## Plots", ""] + [f"![{name}](plots/{name})" for name in images]
    lines += ["", "## Errors to listen to", "",
              f"`errors.csv` lists the {n_errors} misclassified test windows (file, start, end, label, score): "
              "false alarms first, highest score first, then missed calls, lowest score first.", ""]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def fold_table(results: list[tuple[str, dict]], *, labels: list[str]) -> dict:
    """Per-fold headline metrics, their mean and standard deviation, and the pooled out-of-fold
    figures: every fold's test decisions (at that fold's own threshold) counted together, and the
    count correlation over all recordings of all folds."""
    rows = []
    for group, summary in results:
        row = {"test_group": group}
        for level in ("float", "clip", "chunk"):
            for label in labels:
                m = summary["metrics"].get(level, {}).get(label)
                if m:
                    row[f"{label} {_level_name(level)} ROC-AUC"] = m["roc_auc"]
                    row[f"{label} {_level_name(level)} F1"] = m["f1"]
        for label in labels:
            count = summary["metrics"].get("count", {}).get(label)
            if count:
                row[f"{label} count r"] = count["pearson_r"]
        rows.append(row)
    columns = [k for k in rows[0] if k != "test_group"] if rows else []
    spread = {}
    for column in columns:
        values = np.array([r[column] for r in rows if r.get(column) is not None], float)
        spread[column] = {"mean": float(values.mean()) if len(values) else None,
                          "std": float(values.std()) if len(values) else None}
    return {"folds": rows, "spread": spread, "pooled": _pooled(results, labels)}


def _level_name(level: str) -> str:
    return "window" if level == "float" else level


def _pooled(results: list[tuple[str, dict]], labels: list[str]) -> dict:
    """{"<label> <level>": {tp, fp, fn, tn, precision, recall, f1}, "<label> count": {pearson_r, ...}}."""
    pooled = {}
    for level in ("float", "clip", "chunk"):
        for label in labels:
            found = [s["metrics"][level][label] for _, s in results if label in s["metrics"].get(level, {})]
            if not found:
                continue
            tp, fp, fn, tn = (sum(m[k] for m in found) for k in ("tp", "fp", "fn", "tn"))
            pooled[f"{label} {_level_name(level)}"] = {"tp": tp, "fp": fp, "fn": fn, "tn": tn,
                                                       **rates(tp, fp, fn)}
    for label in labels:
        rows = [row for _, s in results for row in s["metrics"].get("count", {}).get(label, {}).get("recordings", [])]
        if len(rows) > 1:
            pooled[f"{label} count"] = {**count_summary(rows), "recordings": len(rows)}
    return pooled


def append_folds(report_path: Path, folds: dict) -> None:
    columns = list(folds["spread"])
    kind = folds.get("kind", "leave-one-group-out")
    title = ("Leave-one-group-out cross-validation" if kind == "leave-one-group-out"
             else f"Cross-validation, {kind}")
    what = ("Each group held out in turn as the test split" if kind == "leave-one-group-out"
            else "A share of the groups held out in turn as the test split; fold1 is the main run")
    lines = ["", f"## {title}", "",
             f"{what} (`folds/<fold>/` holds each fold's run folder; each fold calibrates its own "
             "threshold on its own validation split).", "",
             "| test fold | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for row in folds["folds"]:
        lines.append(f"| {row['test_group']} | " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    lines.append("| **mean ± sd** | " + " | ".join(
        f"{_fmt(folds['spread'][c]['mean'])} ± {_fmt(folds['spread'][c]['std'])}" for c in columns) + " |")
    pooled = folds.get("pooled", {})
    if pooled:
        lines += ["", "Pooled over the folds (every test decision at its fold's threshold, counted together):", ""]
        for name, p in pooled.items():
            if "pearson_r" in p:
                lines.append(f"- {name}: Pearson r {_fmt(p['pearson_r'])} over {p['recordings']} recordings, "
                             f"mean absolute error {_fmt(p['mean_abs_error'], 2)} chunks")
            else:
                lines.append(f"- {name}: precision {_fmt(p['precision'])}, recall {_fmt(p['recall'])}, "
                             f"F1 {_fmt(p['f1'])} (tp {p['tp']}, fp {p['fp']}, fn {p['fn']}, tn {p['tn']})")
    with open(report_path, "a") as f:
        f.write("\n".join(lines) + "\n")


def folds_headline(folds: dict) -> str:
    pooled = [f"{name} {'r' if 'pearson_r' in p else 'F1'} {_fmt(p.get('pearson_r', p.get('f1')))}"
              for name, p in folds.get("pooled", {}).items()]
    return ("folds: " + "; ".join(f"{c} {_fmt(s['mean'])} ± {_fmt(s['std'])}" for c, s in folds["spread"].items())
            + ("; pooled: " + "; ".join(pooled) if pooled else ""))
