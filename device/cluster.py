"""``--replay --cluster ADDRESS``: the replay's files as tasks on an existing Dask cluster.

The seam is a ``concurrent.futures.Executor``: replay submits ``analyse_file(recording,
settings)`` for every file to it, as it does to its process pool with ``--jobs``, and writes
every output itself from the results, in file order. :func:`cluster_executor` gives one whose
tasks run on the workers of a Dask distributed scheduler (``dask.distributed`` is the optional
extra ``pip install 'callwatch[cluster]'``; never on a recorder).

- The model bundle (model.json and the model files it names) goes to every worker once (a Dask
  future every task depends on, so a worker fetches it once and keeps it), is written to a
  folder named by the model's sha256 in the worker's temporary folder, and loaded once per worker
  process (replay keeps the loaded classifier).
- Audio is read by path on the workers: the archive must be at the same path on every worker
  (shared storage, the normal HPC case). A worker that cannot see a file gives a failed result
  for that file, naming the path and the worker; the other files go on and the run exits 1.
- A worker lost mid-run (killed, its node gone): the scheduler runs its tasks again on another
  worker (Dask gives up on a task after ``distributed.scheduler.allowed-failures`` lost workers,
  3 by default). The analysis is deterministic, so the outputs stay the same.
- Run workers with one thread each (``dask worker --nthreads 1``; more processes with
  ``--nworkers N``): a LiteRT interpreter serves one file at a time, so tasks in one worker
  process take turns on it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import socket
import sys
import tempfile
import threading
from pathlib import Path

from device.fileio import write_atomic

CONNECT_TIMEOUT_S = 10.0
"""How long to try to reach the scheduler, s."""
WORKERS_TIMEOUT_S = 60.0
"""How long to wait for the scheduler's first worker, s."""


class ClusterError(Exception):
    """Dask missing, the scheduler unreachable or without workers; one line (exit status 2)."""


@dataclasses.dataclass(frozen=True)
class ShippedBundle:
    """A model bundle's files, as bytes, for workers that cannot read the client's disk."""

    sha256: str
    """sha256 of the model file (model.json's ``sha256``): names the folder on a worker."""
    model_name: str
    """File name of the model that ``model_path`` pointed at (e.g. model.tflite)."""
    files: dict[str, bytes]
    """File name -> content: model.json and every model file it names."""


def ship_bundle(model_path: Path) -> ShippedBundle:
    """The files of the bundle whose model is ``model_path`` (model.json beside it)."""
    folder = model_path.parent
    manifest = json.loads((folder / "model.json").read_text())
    names = {"model.json", manifest["model_file"], model_path.name}
    names |= {v["file"] for v in manifest.get("variants", {}).values() if "file" in v}
    files = {name: (folder / name).read_bytes() for name in sorted(names)
             if (folder / name).is_file()}
    sha = manifest.get("sha256") or hashlib.sha256(files[model_path.name]).hexdigest()
    return ShippedBundle(sha256=sha, model_name=model_path.name, files=files)


_installed: dict[str, str] = {}
_stats = {"tasks": 0, "bundles_installed": 0}
_install_lock = threading.Lock()
_run_lock = threading.Lock()


def _undo_malloc_trim_threshold() -> None:
    """Give glibc back its dynamic mmap threshold in a worker a Dask nanny started.

    The nanny sets ``MALLOC_TRIM_THRESHOLD_=65536`` for its workers, which turns off glibc's
    adaptive mmap threshold: every decoded block of audio (megabytes) is then a fresh mmap that
    the kernel zeroes, and a worker spends as much system CPU as it analyses (measured: 3.9 s of
    system time against 0.4 s, for 4 s of analysis). Large thresholds keep such blocks in the
    heap, as in any other process.
    """
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 64 * 2**20)
        libc.mallopt(m_trim_threshold, 128 * 2**20)
    except (OSError, AttributeError):  # not glibc: nothing to undo
        pass


def installed_bundle(bundle: ShippedBundle) -> str:
    """On a worker: the local path of ``bundle``'s model, written there on first use."""
    with _install_lock:
        if not _installed:
            _undo_malloc_trim_threshold()
        if bundle.sha256 not in _installed:
            folder = Path(tempfile.gettempdir()) / "callwatch-bundles" / bundle.sha256
            folder.mkdir(parents=True, exist_ok=True)
            for name, content in bundle.files.items():
                target = folder / name
                if not target.is_file() or target.read_bytes() != content:
                    # Worker processes of one host share the folder.
                    write_atomic(target, content, concurrent=True)
            _installed[bundle.sha256] = str(folder / bundle.model_name)
            _stats["bundles_installed"] += 1
        return _installed[bundle.sha256]


def run_on_worker(fn, recording, settings, *, bundle: ShippedBundle, client_cwd: str):
    """A task: ``fn(recording, settings)`` with the settings' model replaced by the shipped one.

    A path relative to the client's folder is read from there (a worker's own folder is
    another); messages keep the path as the client gave it, so outputs do not depend on where
    the work ran. A file the worker cannot see fails here, naming the worker.
    """
    _stats["tasks"] += 1
    path = os.path.join(client_cwd, recording.path)
    if not os.path.isfile(path):
        from device.replay import FileResult

        return FileResult(
            recording.source,
            error=f"{recording.path}: not found on cluster worker {socket.gethostname()} (as "
            f"{path}; workers read the files by path: mount the archive at the same path on "
            "every worker)",
        )
    local = dataclasses.replace(settings, model_path=installed_bundle(bundle))
    with _run_lock:  # one interpreter per worker process: one file at a time
        result = fn(dataclasses.replace(recording, path=path), local)
    if result.error and path != recording.path:
        result.error = result.error.replace(path, recording.path)
    return result


def _bundle_task(bundle: ShippedBundle) -> ShippedBundle:
    return bundle


def stats() -> dict[str, int]:
    """This worker process's counts: tasks run, bundles written (``client.run(stats)``)."""
    return dict(_stats)


class ClusterExecutor(concurrent.futures.Executor):
    """Runs ``submit(fn, recording, settings)`` as :func:`run_on_worker` tasks on the cluster.

    Owns ``client``: :meth:`shutdown` closes it (the scheduler and workers go on).
    """

    def __init__(self, client, bundle: ShippedBundle) -> None:
        self.client = client
        self._inner = client.get_executor(pure=False)
        # Every task depends on this future, so a worker fetches the bundle once (from a peer)
        # and keeps it while the run lasts. A task rather than scattered data: the scheduler
        # holds the recipe and makes it again if every worker that had it is lost.
        self._bundle = client.submit(_bundle_task, bundle, pure=False)
        self._closed = False

    def submit(self, fn, /, *args, **kwargs):
        return self._inner.submit(run_on_worker, fn, *args, bundle=self._bundle,
                                  client_cwd=os.getcwd(), **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        if cancel_futures:
            self.client.cancel(list(self._inner._futures))
        self._inner.shutdown(wait=wait and not cancel_futures)
        self._bundle.release()
        self.client.close()


def connect(address: str, *, timeout_s: float = CONNECT_TIMEOUT_S,
            workers_timeout_s: float = WORKERS_TIMEOUT_S):
    """A Dask client of the scheduler at ``address`` (``tcp://HOST:PORT``, or a scheduler
    file as ``dask scheduler --scheduler-file`` writes it) with at least one worker."""
    try:
        from distributed import Client
    except ImportError:
        raise ClusterError(
            "--cluster needs Dask distributed: pip install 'callwatch[cluster]'"
        ) from None
    is_file = not address.startswith(("tcp://", "tls://", "inproc://", "ucx://", "ws://", "wss://"))
    if is_file and not Path(address).is_file():
        raise ClusterError(
            f"--cluster {address}: neither tcp://HOST:PORT nor an existing scheduler file"
        )
    try:
        if is_file:
            client = Client(scheduler_file=address, timeout=timeout_s, set_as_default=False)
        else:
            client = Client(address, timeout=timeout_s, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ClusterError(
            f"--cluster {address}: cannot reach the Dask scheduler ({exc}); is `dask scheduler` "
            "running there?"
        ) from None
    try:
        client.wait_for_workers(1, timeout=workers_timeout_s)
    except (TimeoutError, OSError):
        client.close()
        raise ClusterError(
            f"--cluster {address}: the scheduler has no workers after {workers_timeout_s:.0f} s; start "
            "some with `dask worker ADDRESS --nthreads 1`"
        ) from None
    return client


def cluster_executor(address: str, model_path: Path) -> ClusterExecutor:
    """Connect to ``address`` and ship the bundle of ``model_path`` to its workers."""
    return ClusterExecutor(connect(address), ship_bundle(Path(model_path)))
