"""The config on the device: cost of importing device.config and of loading config.yaml.

Each figure comes from fresh Python processes (bytecode compiled once beforehand into a
temporary cache, as an installed package has it): CPU time of the import or load inside the
process (``time.process_time``, best of REPEAT), and the process's peak RSS after it. The
bare interpreter's figures are given for reference.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import preamble

NAME = "config"
REPEAT = 15
REPO = Path(__file__).resolve().parents[1]

PROBE = """
import json, resource, sys, time
t = time.process_time()
{work}
cpu = time.process_time() - t
print(json.dumps({{"cpu_ms": cpu * 1000, "numpy": "numpy" in sys.modules,
                  "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}))
"""

WORK = {
    "python (nothing imported)": "pass",
    "import device.config": "import device.config",
    "load_config(config.yaml)": "import device.config as c; c.load_config('config.yaml')",
}


def measure(tree: Path = REPO, repeat: int = REPEAT) -> dict[str, dict]:
    """{what: {cpu_ms (best), rss_kib (least), numpy}} for each of WORK, run in ``tree``."""
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONPYCACHEPREFIX": cache}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        for what, work in WORK.items():
            code = PROBE.format(work=work)
            runs = []
            for _ in range(repeat + 1):  # the first run compiles the bytecode
                result = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env,
                                        capture_output=True, text=True, check=True)
                runs.append(json.loads(result.stdout))
            runs = runs[1:]
            out[what] = {"cpu_ms": min(r["cpu_ms"] for r in runs),
                         "rss_kib": min(r["rss_kib"] for r in runs),
                         "numpy": runs[0]["numpy"]}
    return out


def table(figures: dict[str, dict]) -> str:
    rows = ["| process | CPU, ms (best) | peak RSS, MiB | imports NumPy |", "|---|---:|---:|---|"]
    for what, f in figures.items():
        rows.append(f"| `{what}` | {f['cpu_ms']:.1f} | {f['rss_kib'] / 1024:.1f} | "
                    f"{'yes' if f['numpy'] else 'no'} |")
    return "\n".join(rows)


def run() -> str:
    figures = measure()
    return (
        "## Config: import and load cost on the device\n\n"
        + preamble(NAME)
        + f"\nFresh processes, best CPU time and least peak RSS of {REPEAT} runs each, bytecode "
        "cached. The typed sections (frozen dataclasses, issue 13) cost their class creation "
        "at import; loading config.yaml checks the feature settings without importing the "
        "front end (NumPy).\n\n"
        + table(figures)
        + "\n"
    )
