"""The three command lines answer --help, and the device package never needs TensorFlow or SciPy."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("tensorflow", "keras", "tf_keras", "scipy", "sklearn")
"""Workstation packages: the device profile does not install them (pyproject.toml)."""


def run_module(*args: str, code: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_device_help():
    result = run_module("device", "--help")
    assert result.returncode == 0, result.stderr
    for flag in ("--config", "--replay", "--model", "--check-config", "--list-devices",
                 "--realtime", "--events-jsonl", "--scores-csv", "--raven-dir"):
        assert flag in result.stdout, flag


def test_device_version():
    from device import __version__

    result = run_module("device", "--version")
    assert result.returncode == 0 and __version__ in result.stdout


@pytest.mark.parametrize(
    ("tool", "flags"),
    [("train", ("--config", "--data-root", "--out")), ("convert", ("--int8", "--edgetpu"))],
)
def test_workstation_tool_help(tool, flags):
    if not (REPO / tool / "cli.py").is_file():
        pytest.skip(f"{tool}/cli.py not written yet")
    result = run_module(tool, "--help")
    assert result.returncode == 0, result.stderr
    for flag in flags:
        assert flag in result.stdout, flag


def test_every_device_module_imports_with_workstation_packages_blocked():
    """A fresh interpreter where importing tensorflow, keras or scipy fails, as on a Raspberry Pi."""
    code = textwrap.dedent(
        f"""
        import importlib, importlib.abc, pkgutil, sys

        BLOCKED = {BLOCKED!r}

        class BlockTensorFlow(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{{name}} is blocked: the device must not need it")
                return None

        sys.meta_path.insert(0, BlockTensorFlow())
        try:
            import tensorflow  # noqa: F401
        except ImportError:
            pass
        else:
            sys.exit("the blocker did not block tensorflow")

        import device
        names = [m.name for m in pkgutil.walk_packages(device.__path__, "device.")]
        for name in names:
            if name != "device.__main__":  # would run the CLI
                importlib.import_module(name)
        device.cli.build_parser()
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not leaked, leaked
        print(len(names), "modules")
        """
    )
    result = run_module(code=code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.split()[0]) >= 6  # features, audio, bundle, config, cli, events...


def test_no_device_source_imports_workstation_packages_even_lazily():
    """The import test sees top-level imports; this also sees imports inside functions."""
    offenders = []
    for source in sorted((REPO / "device").rglob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            offenders += [
                f"{source.relative_to(REPO)}:{node.lineno} {name}"
                for name in names
                if name.split(".")[0] in BLOCKED
            ]
    assert offenders == []


def test_device_profile_installs_no_workstation_package():
    """The plain dependencies are what a Raspberry Pi installs: SciPy and TensorFlow stay out."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    device = [re.split(r"[=<>;\[ ]", requirement)[0].lower() for requirement in project["dependencies"]]
    assert set(device) == {"numpy", "soundfile", "sounddevice", "paho-mqtt", "pyyaml", "ai-edge-litert"}
    workstation = " ".join(project["optional-dependencies"]["workstation"])
    assert "scipy==" in workstation and "tensorflow" in workstation
    assert project["requires-python"] == ">=3.11,<3.14"


def test_bench_help_lists_the_benchmarks():
    result = run_module("bench", "--help")
    assert result.returncode == 0, result.stderr
    assert "frontend" in result.stdout


def test_bench_write_replaces_only_its_own_section():
    from bench import replace_section

    text = "# Benchmarks\n\nintro\n\n<!-- bench:a -->\n## A\nold a\n<!-- /bench:a -->\n\n" \
           "<!-- bench:b -->\n## B\nold b\n<!-- /bench:b -->\n"
    updated = replace_section(text, "a", "## A\nnew a\n")
    assert "new a" in updated and "old a" not in updated
    assert updated.count("<!-- bench:a -->") == 1 and "old b" in updated and "intro" in updated
    added = replace_section(updated, "c", "## C\nc\n")
    assert added.endswith("<!-- bench:c -->\n## C\nc\n<!-- /bench:c -->\n") and "old b" in added
