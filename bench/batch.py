"""A season batch: >= 10 h of real recordings in AudioMoth-style site folders, every output on.

Four site folders (SiteA..SiteD) of 50 files each, named by their start time
(``20240501_040000.mp3``, every 30 min), linking the 50 real Capuchinbird soundscapes of
../shared/data (180 s, 48 kHz stereo MP3; each site starts at another recording): 200 files,
10 h. Three runs of ``python -m device --replay`` with every batch output:

1. uninterrupted (the reference), its speed and CPU;
2. the same command killed with SIGKILL once the manifest lists a third of the files, then run
   again with ``--resume``: files skipped, and whether every output equals the reference byte
   for byte;
3. the progress lines a log gets (replay.progress_interval_s 30).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._models import DEVICE_BUNDLES, architecture_bundle, architecture_note, device_bundles
from bench.daemon import DATA

REPO = Path(__file__).resolve().parents[1]
SITES = ("SiteA", "SiteB", "SiteC", "SiteD")
OUTPUTS = {
    "--events-jsonl": "events.jsonl", "--scores-csv": "scores.csv", "--counts-csv": "counts.csv",
    "--raven-dir": "raven", "--raven-table": "season.selections.txt",
    "--detections-csv": "detections.csv", "--audacity-dir": "labels",
    "--activity-dir": "activity",
}


def season(folder: Path) -> int:
    """The site folders of symbolic links; returns the number of files."""
    recordings = sorted((DATA / "capuchin" / "recordings").glob("recording_*.mp3"))
    for k, site in enumerate(SITES):
        (folder / site).mkdir(parents=True)
        start = dt.datetime(2024, 5, 1, 4, 0)
        for i in range(len(recordings)):
            name = (start + dt.timedelta(minutes=30 * i)).strftime("%Y%m%d_%H%M%S") + ".mp3"
            (folder / site / name).symlink_to(recordings[(i + 12 * k) % len(recordings)])
    return len(SITES) * len(recordings)


def _command(config: Path, root: Path, out: Path, jobs: int) -> list[str]:
    args = [sys.executable, "-m", "device", "--config", str(config), "--replay", str(root),
            "--jobs", str(jobs)]
    for flag, name in OUTPUTS.items():
        args += [flag, str(out / name)]
    return args


def _env() -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("STATE_DIRECTORY", None)
    return env


def _run(command: list[str], cwd: Path) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    done = subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    summary = [line for line in done.stderr.splitlines() if line.startswith("replay:")]
    return {"code": done.returncode, "wall_s": wall, "cpu_s": cpu, "summary": summary,
            "stderr": done.stderr}


def _killed(command: list[str], cwd: Path, manifest: Path, files: int) -> int:
    """Start the batch, SIGKILL it once the manifest lists ``files``; returns files listed."""
    proc = subprocess.Popen(command, cwd=cwd, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    while proc.poll() is None:
        try:
            if len(manifest.read_text().splitlines()) - 1 >= files:
                break
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return len(manifest.read_text().splitlines()) - 1


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "callwatch-manifest.jsonl"}


def run() -> str:
    if not (DATA / "capuchin" / "recordings").is_dir():
        return "## Season batch\n\n../shared/data is absent: not measured.\n"
    load = os.getloadavg()[0]
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    with tempfile.TemporaryDirectory(prefix="callwatch-batch-") as tmp:
        tmp = Path(tmp)
        n_files = season(tmp / "season")
        # The season is Capuchinbird audio: only the Capuchinbird bundle's events are calls.
        model = device_bundles().get("runs/capuchin")
        if model is not None:
            model_note = f"`runs/capuchin` ({DEVICE_BUNDLES['capuchin']})"
        else:
            model = architecture_bundle(tmp / "architecture")
            model_note = f"no `runs/capuchin` here: {architecture_note()}"
        config = tmp / "config.yaml"
        config.write_text(f"detection: {{model: {model}}}\nservice: {{state_dir: {tmp / 'state'}}}\n"
                          "outputs: {log_events: false}\nreplay: {progress_interval_s: 30}\n")
        jobs = 2
        ref = _run(_command(config, tmp / "season", tmp / "whole", jobs), tmp)
        resumed_out = tmp / "resumed"
        command = _command(config, tmp / "season", resumed_out, jobs)
        listed = _killed(command, tmp, resumed_out / "callwatch-manifest.jsonl", n_files // 3)
        again = _run([*command, "--resume"], tmp)
        identical = _snapshot(resumed_out) == _snapshot(tmp / "whole")
        sizes = {}
        for name in OUTPUTS.values():
            path = tmp / "whole" / name
            files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
            sizes[name] = (sum(p.stat().st_size for p in files), len(files))
    audio_h = n_files * 180 / 3600
    progress = [line.split("progress: ", 1)[1] for line in ref["stderr"].splitlines()
                if "progress: " in line]
    shown = progress[:2] + (["..."] if len(progress) > 3 else []) + progress[-1:]
    lines = [
        "## Season batch: 10 h over four site folders, every output, stopped and resumed",
        "",
        "Command: `.venv/bin/python -m bench --only batch --write`  ",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}  ",
        f"Date: {started}, load average {load:.1f} when it started (other engineers' jobs share "
        "the machine: wall times are slower than an idle machine's)",
        "",
        f"Data: {n_files} files in `SiteA/` ... `SiteD/` named `20240501_040000.mp3` ... (every "
        "30 min), links to the 50 real Capuchinbird soundscapes (180 s, 48 kHz stereo MP3, "
        f"../shared/data), {audio_h:.1f} h of audio. Model: {model_note}. Each run: "
        f"`python -m device --replay season --jobs {jobs}` with `--events-jsonl --scores-csv "
        "--counts-csv --raven-dir --raven-table --detections-csv --audacity-dir --activity-dir`, "
        "`outputs.log_events: false`.",
        "",
        "| run | exit | wall | speed (audio / wall) | CPU (all processes) | CPU-s per audio hour |",
        "|---|---|---|---|---|---|",
        f"| uninterrupted | {ref['code']} | {ref['wall_s']:.0f} s | "
        f"{audio_h * 3600 / ref['wall_s']:.0f}x | {ref['cpu_s']:.0f} s | "
        f"{ref['cpu_s'] / audio_h:.1f} |",
        f"| resumed after SIGKILL at {listed} of {n_files} files | {again['code']} | "
        f"{again['wall_s']:.0f} s | {(n_files - listed) * 180 / again['wall_s']:.0f}x | "
        f"{again['cpu_s']:.0f} s | {again['cpu_s'] / ((n_files - listed) * 180 / 3600):.1f} |",
        "",
        f"Summary line, uninterrupted: `{ref['summary'][0] if ref['summary'] else '(none)'}`  ",
        f"Summary line, resumed: `{again['summary'][0] if again['summary'] else '(none)'}`  ",
        f"Resumed outputs equal the uninterrupted run's byte for byte (every file, PNGs "
        f"included, the manifest excepted): **{'yes' if identical else 'NO'}**.",
        "",
        "Progress in the log (not a terminal), every 30 s:",
        "",
        "```",
        *shown,
        "```",
        "",
        "Outputs: " + ", ".join(
            f"{name} {size / 1e6:.2f} MB" + (f" ({n} files)" if n > 1 else "")
            for name, (size, n) in sizes.items()
        ) + ".",
    ]
    return "\n".join(lines) + "\n"
