"""Replay on a Dask cluster: throughput per worker, scaling from 1 to 2 workers, shipping costs.

The archive: the 50 real Capuchinbird soundscapes of ../shared/data (48 kHz stereo MP3, 2.5 h),
else 20 synthetic 3-minute 48 kHz stereo MP3s. The model: the Capuchinbird example's bundle
(runs/capuchin, a frame head) when there, else an untrained int8 model of the schema's default
architecture, the frame head (bench._models.architecture_bundle: the same inference cost).

``python -m device --replay ARCHIVE --events-jsonl ... --detections-csv ...`` runs as a
subprocess with ``--jobs 1``, ``--jobs 2``, and ``--cluster`` on a ``distributed.LocalCluster``
of 1 and of 2 worker processes (one thread each) on 127.0.0.1; every run's outputs must equal
``--jobs 1``'s. Wall time is the whole command (start-up, connecting, shipping the model,
results back); the summary line's speed leaves out the client's start-up. Worker CPU is the
worker processes' user + system time (psutil) during the run. Each run is made twice; the faster
is shown.
"""

from __future__ import annotations

import os
import pickle
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import preamble

NAME = "cluster"
REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "capuchin" / "recordings"
ARCHIVE_HOURS = 100_000
REPEAT = 2


def _archive(folder: Path) -> tuple[Path, str]:
    """The archive folder and a line describing it."""
    mp3s = sorted(DATA.glob("recording_*.mp3"))
    folder.mkdir(parents=True)
    if mp3s:
        for mp3 in mp3s:
            (folder / mp3.name).symlink_to(mp3)
        return folder, (f"the {len(mp3s)} real Capuchinbird soundscapes of ../shared/data "
                        "(48 kHz stereo MP3, 180 s each)")
    import soundfile

    from bench._models import tone_signal

    for i in range(20):
        soundfile.write(folder / f"synthetic_{i:02d}.mp3", tone_signal(180, 48000, channels=2), 48000,
                        format="MP3")
    return folder, "20 synthetic 3-minute recordings (48 kHz stereo MP3; ../shared/data absent)"


def _model(folder: Path) -> tuple[Path, str]:
    from bench._models import DEVICE_BUNDLES, architecture_bundle, architecture_note, device_bundles

    # The archive is Capuchinbird audio: only the Capuchinbird bundle's events are calls.
    path = device_bundles().get("runs/capuchin")
    if path is not None:
        return path, f"`runs/capuchin` ({DEVICE_BUNDLES['capuchin']})"
    return architecture_bundle(folder), f"no `runs/capuchin` here: {architecture_note()}"


def _replay(model: Path, archive: Path, out: Path, *mode: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "device", "--model", str(model), "--replay", str(archive),
               "--events-jsonl", str(out / "events.jsonl"),
               "--detections-csv", str(out / "detections.csv"), *mode]
    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=out.parent)
    wall_s = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    # The command and its own children (--jobs workers): all the work of a local run, the
    # client's share of a cluster run.
    client_cpu_s = (usage.ru_utime - usage0.ru_utime) + (usage.ru_stime - usage0.ru_stime)
    summary = [line for line in result.stderr.splitlines() if line.startswith("replay: ")]
    if result.returncode != 0 or not summary:
        raise RuntimeError(f"replay {' '.join(mode)} failed ({result.returncode}): "
                           f"{result.stderr[-2000:]}")
    hours = float(re.search(r"([\d.]+) h of audio", summary[0]).group(1))
    speed = float(re.search(r"(\d+)x real time", summary[0]).group(1))
    outputs = {p.name: p.read_bytes().replace(str(out).encode(), b"")
               for p in sorted(out.iterdir()) if p.is_file()}
    return {"wall_s": wall_s, "hours": hours, "speed": speed, "outputs": outputs,
            "client_cpu_s": client_cpu_s}


def _worker_cpu_s(client) -> float:
    def cpu() -> float:
        import psutil

        times = psutil.Process().cpu_times()
        return times.user + times.system

    return sum(client.run(cpu).values())


def _best(runs: list[dict]) -> dict:
    return min(runs, key=lambda r: r["wall_s"])


def _cluster_runs(model: Path, archive: Path, tmp: Path, workers: int) -> dict:
    from distributed import Client, LocalCluster

    os.environ["PYTHONPATH"] = str(REPO)  # the workers import this checkout's device/
    runs = []
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      host="127.0.0.1", dashboard_address=None) as cluster, \
            Client(cluster) as client:
        for i in range(REPEAT):
            out = tmp / f"cluster{workers}-{i}"
            out.mkdir()
            cpu0 = _worker_cpu_s(client)
            run = _replay(model, archive, out, "--cluster", cluster.scheduler_address)
            run["worker_cpu_s"] = _worker_cpu_s(client) - cpu0
            runs.append(run)
    return _best(runs)


def _local_runs(model: Path, archive: Path, tmp: Path, jobs: int) -> dict:
    runs = []
    for i in range(REPEAT):
        out = tmp / f"jobs{jobs}-{i}"
        out.mkdir()
        runs.append(_replay(model, archive, out, "--jobs", str(jobs)))
    return _best(runs)


def _shipping(model: Path, archive: Path) -> dict:
    """Bytes of the bundle, and of one file's result per hour of audio (events; with scores)."""
    from device.cluster import ship_bundle
    from device.config import load_config
    from device.replay import ReplaySettings, analyse_file, collect_recordings

    bundle = ship_bundle(model)
    cfg = load_config(None)
    recording = collect_recordings([str(sorted(archive.iterdir())[0])])[0]
    sizes = {}
    for scores in (False, True):
        settings = ReplaySettings(model_path=str(model), cfg_values=cfg.to_dict(),
                                  delegate="cpu", device_id="bench", block_s=10.0,
                                  realtime=False, scores=scores, clips_dir=None,
                                  id_salt=bundle.sha256)
        result = analyse_file(recording, settings)
        sizes[scores] = len(pickle.dumps(result)) / (result.audio_s / 3600)
    return {"bundle_bytes": len(pickle.dumps(bundle)), "result_per_h": sizes[False],
            "result_scores_per_h": sizes[True]}


def run() -> str:
    with tempfile.TemporaryDirectory(prefix="callwatch-cluster-") as tmp_name:
        tmp = Path(tmp_name)
        archive, archive_note = _archive(tmp / "archive")
        model, model_note = _model(tmp / "model")
        runs = {"jobs 1": _local_runs(model, archive, tmp, 1),
                "jobs 2": _local_runs(model, archive, tmp, 2),
                "cluster 1": _cluster_runs(model, archive, tmp, 1),
                "cluster 2": _cluster_runs(model, archive, tmp, 2)}
        shipping = _shipping(model, archive)
    reference = runs["jobs 1"]["outputs"]
    same = all(r["outputs"] == reference for r in runs.values())
    return _section(runs, shipping, archive_note=archive_note, model_note=model_note, same=same)


def _section(runs: dict, shipping: dict, *, archive_note: str, model_note: str,
             same: bool) -> str:
    hours = runs["jobs 1"]["hours"]
    rows = ["| run | wall, whole command | speed (audio / wall) | summary speed | CPU of the "
            "command | CPU of the workers | audio per CPU second of analysis |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    labels = {"jobs 1": "`--jobs 1`", "jobs 2": "`--jobs 2`",
              "cluster 1": "`--cluster`, 1 worker", "cluster 2": "`--cluster`, 2 workers"}
    for key, run in runs.items():
        workers = run.get("worker_cpu_s")
        analysis = workers if workers is not None else run["client_cpu_s"]
        rows.append(
            f"| {labels[key]} | {run['wall_s']:.1f} s | {hours * 3600 / run['wall_s']:,.0f}x | "
            f"{run['speed']:,.0f}x | {run['client_cpu_s']:.1f} s | "
            f"{f'{workers:.1f} s' if workers is not None else '-'} | "
            f"{hours * 3600 / analysis:,.0f}x |")
    one, two = runs["cluster 1"], runs["cluster 2"]
    efficiency = one["wall_s"] / (2 * two["wall_s"])
    per_worker = hours * 3600 / one["worker_cpu_s"]  # audio seconds per worker CPU second
    core_hours = ARCHIVE_HOURS / per_worker
    archive_rows = ["| workers (one core each) | 100,000 h takes |", "|---:|---:|"]
    for n in (1, 16, 64, 256, 1024):
        eff = 1.0 if n == 1 else min(1.0, efficiency)
        archive_rows.append(f"| {n} | {core_hours / (n * eff):,.1f} h |")
    return f"""## Replay on a Dask cluster: per-worker throughput, 1 -> 2 workers, shipping

{preamble(NAME)}
Archive: {archive_note}, {hours:.2f} h. Model: {model_note}. `python -m device --replay` as a
subprocess, events JSONL and detections CSV written by the client; `--cluster` on a
`distributed.LocalCluster` (worker processes with one thread each, on 127.0.0.1). Best of
{REPEAT} runs by wall time. CPU: user + system seconds of the command (with its `--jobs`
processes) and of the Dask worker processes during the run. Outputs of every run equal
`--jobs 1`'s byte for byte: {"yes" if same else "**NO**"}.

{chr(10).join(rows)}

Scaling from 1 to 2 workers: {efficiency:.0%} efficiency (wall time of 1 worker / (2 x wall time
of 2 workers)). The machine has 2 cores, shared by the client, the scheduler, the workers and
other work (see the load average): with 2 workers every core is taken, so this is a lower
bound for workers on cores of their own. Per core, a worker analyses {per_worker:,.0f}x real
time (audio / worker CPU), against {hours * 3600 / runs["jobs 1"]["client_cpu_s"]:,.0f}x for
`--jobs 1` in one process: what Dask costs a worker besides the analysis (its event loop,
heartbeats, moving results) is the difference.

Shipping: the model bundle is {shipping['bundle_bytes'] / 1024:,.0f} KiB, sent to each worker
once. A file's result (its events) is {shipping['result_per_h'] / 1024:,.1f} KiB per hour of
audio here; with `--scores-csv` (every window's scores come back too)
{shipping['result_scores_per_h'] / 1024:,.0f} KiB per hour. For 100,000 h that is
{ARCHIVE_HOURS * shipping['result_scores_per_h'] / 2**30:,.1f} GiB through the client with
scores, {ARCHIVE_HOURS * shipping['result_per_h'] / 2**20:,.0f} MiB without: the client writes
outputs, it does not limit the cluster.

What 100,000 h takes: {core_hours:,.0f} core-hours at {per_worker:,.0f}x real time per worker,
spread over N workers at the efficiency measured here (held constant, a pessimistic assumption
for workers with cores of their own; the scheduler's cost per 3-minute file is small):

{chr(10).join(archive_rows)}
"""
