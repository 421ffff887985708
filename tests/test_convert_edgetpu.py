"""--edgetpu: the compiler log parser on recorded output, the absent compiler, and the invocation.

edgetpu_compiler cannot be installed here (x86_64 apt package, Coral's repository). Its
output format is covered by recorded logs in tests/data (the layout of compiler 15 and 16), the
absent-compiler path runs for real, and a fake ``edgetpu_compiler`` on PATH (a SEAM TEST: it
only replays a recorded log) exercises the code that invokes it and registers its output.
"""

from __future__ import annotations

import ast
import json
import os
import sys
from pathlib import Path

import pytest

from convert import ConvertFailure
from convert.edgetpu import compile_for_edgetpu, find_compiler, parse_compiler_log

DATA = Path(__file__).resolve().parent / "data"


def _log(name: str) -> str:
    return (DATA / f"edgetpu_compiler_{name}.log").read_text()


def test_parser_all_ops_mapped():
    report = parse_compiler_log(_log("all_mapped"))
    assert report.version == "16.0.384591198"
    assert report.compiled and report.all_mapped
    assert report.total_ops == 8 and report.subgraphs == 1
    assert report.cpu_ops is None  # the compiler prints the split only when some ops stay on the CPU
    assert [(r.op, r.count) for r in report.operators] == [
        ("AVERAGE_POOL_2D", 1), ("SUB", 1), ("CONV_2D", 2), ("MAX_POOL_2D", 1),
        ("DEPTHWISE_CONV_2D", 1), ("REDUCE_MAX", 1), ("FULLY_CONNECTED", 1),
    ]
    assert report.summary() == "8 of 8 ops on the Edge TPU"


def test_parser_some_ops_on_cpu():
    report = parse_compiler_log(_log("some_cpu"))
    assert report.compiled and not report.all_mapped
    assert (report.edgetpu_ops, report.cpu_ops, report.total_ops) == (6, 3, 9)
    assert [(r.op, r.status) for r in report.unmapped] == [
        ("GELU", "Operation not supported"),
        ("REDUCE_MAX", "More than one subgraph is not supported"),
        ("FULLY_CONNECTED", "More than one subgraph is not supported"),
    ]
    assert "GELU x1 (Operation not supported)" in report.summary()


def test_parser_operation_log_file_and_stdout_without_table():
    oplog = parse_compiler_log(_log("operation_log"))
    assert oplog.version == "16.0.384591198" and len(oplog.operators) == 7
    # stdout without -s has no table: success alone does not prove every op is on the TPU...
    bare = parse_compiler_log(_log("no_table"))
    assert bare.compiled and bare.version == "15.0.340273435" and not bare.all_mapped
    assert "no operator table" in bare.summary()
    # ...the .log file beside it does.
    assert parse_compiler_log(_log("no_table") + "\n" + _log("operation_log")).all_mapped
    # stdout with -s plus the .log file: the same table, counted once.
    both = parse_compiler_log(_log("all_mapped") + "\n" + _log("operation_log"))
    assert sum(r.count for r in both.operators) == 8


def test_parser_failed_compile():
    report = parse_compiler_log(_log("failed"))
    assert not report.compiled and not report.all_mapped
    assert any("static-sized tensors" in e for e in report.errors)
    assert report.summary().startswith("edgetpu_compiler failed: ")
    assert not parse_compiler_log("Edge TPU Compiler version 2.0.291256449\n\nInternal compiler error. Aborting!\n").compiled


FAKE_COMPILER = """#!{python}
# SEAM TEST fake of edgetpu_compiler: records its arguments, replays a recorded stdout and, on
# success, writes <stem>_edgetpu.tflite and <stem>_edgetpu.log into the -o folder like the real one.
import os, pathlib, sys
args = sys.argv[1:]
pathlib.Path(os.environ["FAKE_EDGETPU_ARGS"]).write_text(repr(args))
stdout = pathlib.Path(os.environ["FAKE_EDGETPU_STDOUT"]).read_text()
out_dir, model = pathlib.Path(args[args.index("-o") + 1]), pathlib.Path(args[-1])
if "Compilation failed" in stdout:
    print(stdout)
    sys.exit(1)
(out_dir / (model.stem + "_edgetpu.tflite")).write_bytes(model.read_bytes() + b"edgetpu-custom-op")
(out_dir / (model.stem + "_edgetpu.log")).write_text(pathlib.Path(os.environ["FAKE_EDGETPU_OPLOG"]).read_text())
print(stdout)
"""


@pytest.fixture
def fake_compiler(tmp_path, monkeypatch):
    """Put the fake edgetpu_compiler first on PATH; returns a function choosing what it replays."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "edgetpu_compiler"
    script.write_text(FAKE_COMPILER.format(python=sys.executable))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_EDGETPU_ARGS", str(tmp_path / "args.txt"))

    def replay(stdout: str, oplog: str = "operation_log") -> Path:
        monkeypatch.setenv("FAKE_EDGETPU_STDOUT", str(DATA / f"edgetpu_compiler_{stdout}.log"))
        monkeypatch.setenv("FAKE_EDGETPU_OPLOG", str(DATA / f"edgetpu_compiler_{oplog}.log"))
        return tmp_path / "args.txt"

    return replay


def test_seam_invocation_arguments_and_outputs(fake_compiler, tmp_path):
    args_file = fake_compiler("all_mapped")
    model = tmp_path / "run" / "model.tflite"
    model.parent.mkdir()
    model.write_bytes(b"TFL3 model bytes")
    compiled, report = compile_for_edgetpu(model_path=model, out_dir=model.parent, compiler=find_compiler())
    assert ast.literal_eval(args_file.read_text()) == ["-s", "-o", str(model.parent), str(model)]
    assert compiled == model.parent / "model_edgetpu.tflite" and compiled.is_file()
    assert report.all_mapped

    fake_compiler("failed")
    with pytest.raises(ConvertFailure, match="static-sized tensors"):
        compile_for_edgetpu(model_path=model, out_dir=model.parent, compiler=find_compiler())


# The rest converts a real run folder, so it needs TensorFlow.
def _converted_run(tmp_path_factory, tmp_path):
    pytest.importorskip("tensorflow")
    from convert_fixtures import copy_run, template_run

    return copy_run(template_run(tmp_path_factory), tmp_path / "run")


def test_absent_compiler_is_one_line_and_int8_still_succeeds(tmp_path_factory, tmp_path, monkeypatch, capsys):
    from convert.cli import main
    from device.bundle import load_bundle

    run_dir = _converted_run(tmp_path_factory, tmp_path)
    empty = tmp_path / "empty_bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert find_compiler() is None
    assert main(["--int8", "--edgetpu", str(run_dir), "--config", os.devnull]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "edgetpu" in line.lower()]
    assert len(err) == 1 and "not found" in err[0] and "apt-get install edgetpu-compiler" in err[0]
    assert "x86_64" in err[0]
    assert "edgetpu" not in load_bundle(run_dir).variants
    assert "Edge TPU: not compiled" in (run_dir / "report.md").read_text()


def test_seam_convert_registers_the_edgetpu_variant(fake_compiler, tmp_path_factory, tmp_path):
    from convert.core import ConvertSettings, convert_run
    from device.bundle import load_bundle, sha256_of

    run_dir = _converted_run(tmp_path_factory, tmp_path)
    args_file = fake_compiler("all_mapped")
    result = convert_run(run_dir=run_dir, settings=ConvertSettings(0.01, 100.0, 300), edgetpu=True,
                         log=lambda line: None, warn=lambda line: None)
    assert result.ok, result.failures
    assert ast.literal_eval(args_file.read_text()) == ["-s", "-o", str(run_dir), str(run_dir / "model.tflite")]
    bundle = load_bundle(run_dir)
    entry = bundle.variants["edgetpu"]
    assert entry["file"] == "model_edgetpu.tflite"
    assert entry["compiled_from_sha256"] == sha256_of(run_dir / "model.tflite")
    assert (entry["compiler_version"], entry["operations"], entry["ops_on_cpu"]) == ("16.0.384591198", 8, 0)
    assert bundle.variant_path("edgetpu") == run_dir / "model_edgetpu.tflite"
    assert load_bundle(run_dir / "model_edgetpu.tflite").model_path == (run_dir / "model_edgetpu.tflite").resolve()
    assert "8 of 8 ops on the Edge TPU" in (run_dir / "report.md").read_text()


def test_seam_ops_left_on_the_cpu_fail_with_exit_1(fake_compiler, tmp_path_factory, tmp_path, capsys):
    from convert.cli import main

    run_dir = _converted_run(tmp_path_factory, tmp_path)
    fake_compiler("some_cpu", oplog="some_cpu")
    assert main(["--int8", "--edgetpu", str(run_dir), "--config", os.devnull]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not every op runs on the Edge TPU" in err[0] and "GELU" in err[0]
    manifest = json.loads((run_dir / "model.json").read_text())  # the int8 bundle itself is fine
    assert "edgetpu" not in manifest["variants"]
