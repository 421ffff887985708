"""The conversion's entries in the run's report.md and metrics.json.

Both are rewritten in place on every run of convert: the report's section sits between two
HTML comments and is replaced, never appended twice; metrics.json gets a "conversion" key.
"""

from __future__ import annotations

import json
from pathlib import Path

from device.fileio import write_atomic

REPORT = "report.md"
METRICS = "metrics.json"
BEGIN = "<!-- convert:begin (written by python -m convert; replaced on re-run) -->"
END = "<!-- convert:end -->"


def replace_section(text: str, section: str) -> str:
    """``text`` with the convert section replaced by ``section`` (added at the end if absent)."""
    block = f"{BEGIN}\n{section.strip()}\n{END}\n"
    start, end = text.find(BEGIN), text.find(END)
    if start != -1 and end > start:
        return text[:start] + block + text[end + len(END) :].lstrip("\n")
    return (text.rstrip("\n") + "\n\n" if text.strip() else "") + block


def write_report_section(run_dir: Path, section: str) -> Path:
    path = run_dir / REPORT
    text = path.read_text() if path.is_file() else ""
    write_atomic(path, replace_section(text, section))
    return path


def update_metrics(run_dir: Path, conversion: dict) -> Path:
    """Set metrics.json's "conversion" key (other keys kept; file created when absent)."""
    path = run_dir / METRICS
    try:
        metrics = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        metrics = {}
    if not isinstance(metrics, dict):
        metrics = {"training": metrics}
    metrics["conversion"] = conversion
    write_atomic(path, json.dumps(metrics, indent=2) + "\n")
    return path


def _num(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(
    *,
    command: str,
    status: str,
    size_kb: float,
    params: int,
    size_budget_kb: float,
    auc_tolerance: float,
    test_windows: int,
    comparisons: dict[str, dict],
    notes: list[str],
) -> str:
    """The report section: size, then a table per converted model against float Keras.

    ``comparisons`` maps a model name ("int8", "float16", ...) to :func:`convert.verify.compare`'s
    result for it.
    """
    lines = [
        "## int8 conversion",
        "",
        f"Command: `{command}`",
        "",
        f"**{status}**",
        "",
        f"- int8 model: `model.tflite`, {size_kb:.1f} KiB (budget {size_budget_kb:g} KiB), "
        f"{params:,} parameters; every op int8, int8 input and output, output = logits",
        f"- verified on {test_windows} test windows (`test_windows.npz`): int8 scored by the "
        f"device's classifier (LiteRT), against the float Keras model; ROC-AUC tolerance {auc_tolerance:g}",
    ]
    lines += [f"- {note}" for note in notes]
    for name, result in comparisons.items():
        lines += [
            "",
            f"### {name} vs float",
            "",
            f"| label | ROC-AUC float | ROC-AUC {name} | loss | PR-AUC float | PR-AUC {name} "
            f"| F1 float | F1 {name} | largest score diff | agreement at threshold |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for label, f in result["float"].items():
            m, d = result["model"][label], result["vs_float"][label]
            lines.append(
                f"| {label} | {_num(f['roc_auc'])} | {_num(m['roc_auc'])} | {_num(d['roc_auc_loss'])} "
                f"| {_num(f['pr_auc'])} | {_num(m['pr_auc'])} | {_num(f['f1'], 3)} | {_num(m['f1'], 3)} "
                f"| {d['max_score_diff']:.4f} | {d['agreement_at_threshold']:.4f} |"
            )
    return "\n".join(lines) + "\n"
