"""python -m bench [--only NAME ...] [--write]: run benchmarks, print them, update BENCHMARKS.md."""

import os

# One thread everywhere, set before anything imports NumPy: BLAS and OpenMP read these once,
# when they load. Figures are then per core, comparable with a Raspberry Pi's single core.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
             "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "TF_NUM_INTRAOP_THREADS",
             "TF_NUM_INTEROP_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import importlib  # noqa: E402
import pkgutil  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import bench  # noqa: E402
from device.native_stderr import filtered_stderr  # noqa: E402

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
INTRO = """# Benchmarks

Measured figures for callwatch, each section made by the command shown in it
(`.venv/bin/python -m bench --only NAME --write` replaces one section; `--write` alone redoes
all). Times are CPU seconds (`time.process_time`) with BLAS/OpenMP limited to one thread, the
best of several repetitions: per core, and less disturbed than wall time by other work on the
machine (each section gives the load average it started at, and the machine it ran on).
"""


def available() -> list[str]:
    """Every benchmark module in bench/, sorted."""
    return sorted(
        m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_")
    )


def main(argv: list[str] | None = None) -> int:
    names = available()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=names,
                        help=f"run only these benchmarks (of: {', '.join(names)})")
    parser.add_argument("--write", action="store_true",
                        help=f"also replace their sections in {BENCHMARKS_MD.name}")
    args = parser.parse_args(argv)
    with filtered_stderr():  # TensorFlow's native start-up lines (benches that convert models)
        return _run(args.only or names, write=args.write)


def _run(names: list[str], *, write: bool) -> int:
    for name in names:
        print(f"bench: running {name} ...", file=sys.stderr, flush=True)
        section = importlib.import_module(f"bench.{name}").run()
        if not section.startswith("## "):
            print(f"bench: bench/{name}.py returned no '## Title' line", file=sys.stderr)
            return 1
        print(section)
        if write:
            text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else INTRO
            BENCHMARKS_MD.write_text(bench.replace_section(text, name, section))
            print(f"bench: wrote the {name} section of {BENCHMARKS_MD}", file=sys.stderr)
    return 0


raise SystemExit(main())
