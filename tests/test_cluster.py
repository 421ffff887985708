"""--replay --cluster on a real Dask cluster: a scheduler and two one-thread workers on 127.0.0.1.

The same archive through ``--cluster``, ``--jobs 2`` and ``--jobs 1`` gives the same bytes in
every output (events, scores, counts, batch tables, manifest); a worker killed with SIGKILL in
the middle loses no file; a worker that cannot see the files reports each one by name; the model
bundle reaches each worker once.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile
from test_replay import SR, device, tones_signal, write_config
from tinymodel import noise, tone

pytest.importorskip("distributed", reason="the cluster extra: pip install '.[cluster]'")
from dask_cluster import DaskCluster  # noqa: E402

OUTPUT_FLAGS = {
    "--events-jsonl": "events.jsonl",
    "--scores-csv": "scores.csv",
    "--counts-csv": "counts.csv",
    "--raven-table": "selections.txt",
    "--detections-csv": "detections.csv",
}


def make_archive(folder: Path, *, files_per_site: int = 3, seconds: float = 20.0) -> Path:
    """SiteA/ and SiteB/ of tone recordings (the same names in both), a short one, a broken one."""
    for site in ("SiteA", "SiteB"):
        (folder / site).mkdir(parents=True)
        for i in range(files_per_site):
            x = tones_signal(seconds) if i % 2 == 0 else noise(seconds, SR)
            soundfile.write(folder / site / f"20240501_0{5 + i}0000.WAV", x, SR, format="WAV")
    soundfile.write(folder / "SiteA" / "short.wav", noise(0.7, SR) + tone(2000, 0.7, SR), SR)
    (folder / "SiteB" / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot audio at all")
    return folder


def replay(config: Path, archive: Path, out: Path, *mode: str, cwd: Path,
           background: bool = False):
    args = ["--config", str(config), "--replay", str(archive), *mode]
    for flag, name in OUTPUT_FLAGS.items():
        args += [flag, str(out / name)]
    if background:
        import os

        from test_replay import REPO

        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("STATE_DIRECTORY", None)
        return subprocess.Popen([sys.executable, "-m", "device", *args], cwd=cwd, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return device(*args, cwd=cwd)


def outputs_of(out: Path) -> dict[str, bytes]:
    """Every file the run wrote, by name; the output folder's path taken out of the manifest."""
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
             if p.is_file()}
    return {name: data.replace(str(out).encode(), b"<out>") for name, data in files.items()}


@pytest.fixture
def cluster(tmp_path):
    dask = DaskCluster(tmp_path / "dask").start(workers=2)
    yield dask
    dask.stop()


def worker_stats(dask: DaskCluster) -> dict[str, dict]:
    from device.cluster import stats

    with dask.client() as client:
        return client.run(stats)


def test_cluster_writes_the_bytes_of_jobs_2_and_jobs_1(tone_bundle, cluster, tmp_path):
    make_archive(tmp_path / "archive")
    archive = Path("archive")  # relative to the client's folder: the workers' is another
    config = write_config(tmp_path, tone_bundle)
    runs = {}
    for name, mode in {"cluster": ("--cluster", cluster.address), "jobs2": ("--jobs", "2"),
                       "jobs1": ()}.items():
        result = replay(config, archive, tmp_path / name, *mode, cwd=tmp_path)
        assert result.returncode == 1, result.stderr
        assert "8 files" in result.stderr and "1 failed (SiteB/broken.wav)" in result.stderr
        assert "Traceback" not in result.stderr, result.stderr
        runs[name] = outputs_of(tmp_path / name)
    assert set(runs["cluster"]) == {*OUTPUT_FLAGS.values(), "callwatch-manifest.jsonl"}
    assert runs["cluster"] == runs["jobs2"] == runs["jobs1"]
    assert runs["cluster"]["events.jsonl"].count(b"\n") >= 6  # the tones were found
    # The manifest is the client's: --resume of a finished cluster run analyses nothing again.
    again = replay(config, archive, tmp_path / "cluster", "--cluster", cluster.address,
                   "--resume", cwd=tmp_path)
    assert "0 files" in again.stderr and "8 files done before" in again.stderr, again.stderr
    resumed = outputs_of(tmp_path / "cluster")
    assert resumed == runs["cluster"]  # counts.csv too: a failed file gets no row on resume
    # The bundle went to each worker once, whatever the number of files it analysed.
    stats = worker_stats(cluster)
    assert sum(s["tasks"] for s in stats.values()) == 8  # none by the resumed run
    assert all(s["bundles_installed"] == (1 if s["tasks"] else 0) for s in stats.values()), stats


def test_a_worker_killed_mid_run_loses_no_file(tone_bundle, cluster, tmp_path):
    archive = make_archive(tmp_path / "archive", files_per_site=6, seconds=180.0)
    config = write_config(tmp_path, tone_bundle)
    reference = replay(config, archive, tmp_path / "jobs1", cwd=tmp_path)
    assert reference.returncode == 1, reference.stderr
    run = replay(config, archive, tmp_path / "cluster", "--cluster", cluster.address,
                 cwd=tmp_path, background=True)
    victim, addresses = cluster.workers[0], []
    try:
        with cluster.client() as client:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and run.poll() is None:
                info = client.scheduler_info(n_workers=-1)["workers"]
                busy = client.processing()
                addresses = [a for a, w in info.items() if w.get("name") == "w0" and busy.get(a)]
                if addresses:
                    break
                time.sleep(0.02)
        assert addresses, "worker w0 never had a task before the run ended"
        cluster.kill_worker(victim)
        stdout, stderr = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 1, stderr
    assert "14 files" in stderr and "1 failed (SiteB/broken.wav)" in stderr, stderr
    assert outputs_of(tmp_path / "cluster") == outputs_of(tmp_path / "jobs1")


def test_files_a_worker_cannot_see_fail_by_name(tone_bundle, tmp_path):
    """The archive is hidden from the only worker (a tmpfs over it, in its own mount namespace)."""
    if shutil.which("unshare") is None or subprocess.run(
        ["unshare", "-m", "true"], capture_output=True
    ).returncode != 0:
        pytest.skip("needs unshare -m (root) to hide a folder from one worker")
    archive = make_archive(tmp_path / "archive")
    config = write_config(tmp_path, tone_bundle)
    dask = DaskCluster(tmp_path / "dask").start(workers=0)
    try:
        dask.add_worker(hide=archive / "SiteB")
        dask.wait_for_workers(1)
        result = replay(config, archive, tmp_path / "out", "--cluster", dask.address, cwd=tmp_path)
    finally:
        dask.stop()
    assert result.returncode == 1
    assert "Traceback" not in result.stderr, result.stderr
    assert "8 files" in result.stderr and "4 failed" in result.stderr, result.stderr
    for name in ("20240501_050000.WAV", "20240501_060000.WAV", "20240501_070000.WAV",
                 "broken.wav"):
        assert f"SiteB/{name}: not found on cluster worker" in result.stderr, result.stderr
    events = (tmp_path / "out" / "events.jsonl").read_text()
    assert '"source":"SiteA/' in events and "SiteB/" not in events


def test_cluster_usage_errors_are_one_line(tone_bundle, tmp_path):
    archive = make_archive(tmp_path / "archive", files_per_site=1)
    config = write_config(tmp_path, tone_bundle)
    for mode, message in [
        (("--cluster", f"tcp://127.0.0.1:{_closed_port()}"), "cannot reach the Dask scheduler"),
        (("--cluster", str(tmp_path / "nope.json")), "neither tcp://HOST:PORT nor an existing"),
        (("--cluster", "tcp://127.0.0.1:1", "--jobs", "2"), "drop --jobs"),
    ]:
        result = device("--config", str(config), "--replay", str(archive), *mode,
                        "--events-jsonl", str(tmp_path / "e.jsonl"), cwd=tmp_path, timeout=120)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr


def _closed_port() -> int:
    from broker import free_port

    return free_port()


def test_the_slurm_example_asks_for_one_thread_per_worker_process(tmp_path):
    """examples/cluster/slurm.py (README): the job script Slurm would run, made offline."""
    pytest.importorskip("dask_jobqueue", reason="the cluster extra: pip install '.[cluster]'")
    import importlib.util

    from test_replay import REPO

    spec = importlib.util.spec_from_file_location("slurm_example",
                                                  REPO / "examples" / "cluster" / "slurm.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    scheduler_file = tmp_path / "scheduler.json"
    cluster = example.make_cluster(scheduler_file, port=0)
    try:
        script = cluster.job_script()
        address = json.loads(scheduler_file.read_text())["address"]
    finally:
        cluster.close()
    assert f"#SBATCH -A {example.ACCOUNT}" in script and f"#SBATCH -p {example.QUEUE}" in script
    worker = next(line for line in script.splitlines() if "dask_worker" in line)
    assert worker.startswith(sys.executable) and address in worker
    assert "--nthreads 1" in worker and f"--nworkers {example.CORES_PER_JOB}" in worker
    assert f"cd {REPO}" in script
