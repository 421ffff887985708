"""The Coral Edge TPU compiler: run it, read its log, decide whether every op is on the TPU.

``edgetpu_compiler -s -o OUT_DIR model.tflite`` writes ``OUT_DIR/model_edgetpu.tflite`` and
``OUT_DIR/model_edgetpu.log``. Its standard output (compiler 16.0) looks like::

    Edge TPU Compiler version 16.0.384591198
    Started a compilation timeout timer of 180 seconds.

    Model compiled successfully in 412 ms.

    Input model: runs/demo/model.tflite
    ...
    Number of Edge TPU subgraphs: 1
    Total number of operations: 10
    Operation log: runs/demo/model_edgetpu.log

    [only when some ops stay on the CPU:]
    Model successfully compiled but not all operations are supported by the Edge TPU. ...
    Number of operations that will run on Edge TPU: 8
    Number of operations that will run on CPU: 2

    Operator                       Count      Status

    CONV_2D                        4          Mapped to Edge TPU
    SIN                            1          Operation not supported

and the .log file holds the same operator table under ``Input:``/``Output:`` lines. A failed
compile prints e.g. ``Internal compiler error. Aborting!`` or ``Invalid model: ...`` /
``Model not quantized``. The compiler exists for x86_64 Linux only.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from convert import ConvertFailure

COMPILER = "edgetpu_compiler"
MAPPED = "Mapped to Edge TPU"
INSTALL_HINT = (
    f"{COMPILER} not found on PATH, so no Edge TPU model was made; install it on an x86_64 "
    "Debian/Ubuntu machine from Coral's apt repository ('deb https://packages.cloud.google.com/apt "
    "coral-edgetpu-stable main', then 'apt-get install edgetpu-compiler', see "
    "https://coral.ai/docs/edgetpu/compiler/) and re-run with --edgetpu"
)

_OP_ROW = re.compile(r"^([A-Z][A-Z0-9_]*)\s+(\d+)\s+(\S.*?)\s*$")
_ERRORS = (
    re.compile(r"Internal compiler error.*", re.I),
    re.compile(r"Invalid model.*", re.I),
    re.compile(r"Model not quantized.*", re.I),
    re.compile(r"^ERROR:.*", re.I),
    re.compile(r".*compilation failed.*", re.I),
)


@dataclass(frozen=True)
class OperatorStatus:
    """One row of the compiler's operator table."""

    op: str
    """TFLite op name, e.g. CONV_2D."""
    count: int
    status: str
    """"Mapped to Edge TPU" or the reason it stays on the CPU."""

    @property
    def mapped(self) -> bool:
        return self.status == MAPPED


@dataclass(frozen=True)
class CompilerReport:
    """What the compiler said about one model."""

    version: str | None
    compiled: bool
    """The compiler reported success and no error line."""
    total_ops: int | None
    edgetpu_ops: int | None
    """Ops on the Edge TPU; the compiler prints it only when some ops stay on the CPU."""
    cpu_ops: int | None
    subgraphs: int | None
    operators: tuple[OperatorStatus, ...]
    errors: tuple[str, ...]

    @property
    def unmapped(self) -> tuple[OperatorStatus, ...]:
        return tuple(row for row in self.operators if not row.mapped)

    @property
    def all_mapped(self) -> bool:
        """Compiled, into one Edge TPU subgraph, with no op left for the CPU."""
        return (
            self.compiled
            and bool(self.operators)
            and not self.unmapped
            and not self.cpu_ops
            and self.subgraphs in (None, 1)
        )

    def summary(self) -> str:
        """One line: how many ops went where, and the ones that stayed on the CPU."""
        if not self.compiled:
            return f"{COMPILER} failed: {'; '.join(self.errors) or 'no success line in its output'}"
        if not self.operators:
            return f"compiled, but no operator table to tell which ops run on the Edge TPU ({self.total_ops} ops)"
        on_tpu = sum(row.count for row in self.operators if row.mapped)
        text = f"{on_tpu} of {self.total_ops or on_tpu + sum(r.count for r in self.unmapped)} ops on the Edge TPU"
        if self.unmapped:
            text += "; on the CPU: " + ", ".join(f"{r.op} x{r.count} ({r.status})" for r in self.unmapped)
        return text


def _int_after(label: str, text: str) -> int | None:
    match = re.search(rf"^{re.escape(label)}:\s*(\d+)\s*$", text, re.M)
    return int(match.group(1)) if match else None


def parse_compiler_log(text: str) -> CompilerReport:
    """Parse the compiler's standard output, its .log file, or both concatenated.

    Operator rows come from the first ``Operator  Count  Status`` table (stdout with -s and the
    .log file carry the same one).
    """
    version = re.search(r"Edge TPU Compiler version\s+(\S+)", text)
    tables: list[tuple[OperatorStatus, ...]] = []
    in_table = False
    for line in text.splitlines():
        if re.match(r"^\s*Operator\s+Count\s+Status\s*$", line):
            in_table = True
            tables.append(())
            continue
        if not in_table:
            continue
        row = _OP_ROW.match(line.strip())
        if row:
            tables[-1] += (OperatorStatus(row.group(1), int(row.group(2)), row.group(3)),)
        elif line.strip() and tables[-1]:
            in_table = False  # the first other line after the rows ends the table
    # stdout (with -s) and the .log file carry the same table: one is enough.
    operators = next((table for table in tables if table), ())
    errors = tuple(dict.fromkeys(  # one line may match several patterns: keep each once, in order
        match.group(0).strip()
        for line in text.splitlines()
        for pattern in _ERRORS
        if (match := pattern.search(line.strip()))
    ))
    succeeded = bool(re.search(r"Models? compiled successfully|Model successfully compiled", text))
    return CompilerReport(
        version=version.group(1) if version else None,
        compiled=succeeded and not errors,
        total_ops=_int_after("Total number of operations", text),
        edgetpu_ops=_int_after("Number of operations that will run on Edge TPU", text),
        cpu_ops=_int_after("Number of operations that will run on CPU", text),
        subgraphs=_int_after("Number of Edge TPU subgraphs", text),
        operators=operators,
        errors=errors,
    )


def find_compiler() -> str | None:
    """Path of edgetpu_compiler on PATH, or None."""
    return shutil.which(COMPILER)


def compile_for_edgetpu(
    *, model_path: Path, out_dir: Path, compiler: str, timeout_s: float = 600.0
) -> tuple[Path, CompilerReport]:
    """Run ``compiler -s -o out_dir model_path``; returns the compiled model and the parsed log.

    Raises :class:`convert.ConvertFailure` when the compiler cannot be run, fails, or leaves no
    model. Whether every op is on the TPU is for the caller to judge from the report.
    """
    command = [compiler, "-s", "-o", str(out_dir), str(model_path)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise ConvertFailure(f"{COMPILER} did not finish within {timeout_s:.0f} s") from None
    except OSError as exc:
        raise ConvertFailure(f"{compiler}: cannot run ({exc.strerror})") from None
    output = done.stdout + "\n" + done.stderr
    log_path = out_dir / f"{model_path.stem}_edgetpu.log"
    if log_path.is_file():
        output += "\n" + log_path.read_text(errors="replace")
    report = parse_compiler_log(output)
    compiled = out_dir / f"{model_path.stem}_edgetpu.tflite"
    if done.returncode != 0 or not report.compiled:
        reason = "; ".join(report.errors) or f"exit code {done.returncode}"
        raise ConvertFailure(f"{COMPILER} failed on {model_path}: {reason}")
    if not compiled.is_file():
        raise ConvertFailure(f"{COMPILER} reported success but wrote no {compiled}")
    return compiled, report
