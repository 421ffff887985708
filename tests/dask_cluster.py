"""A real Dask cluster for tests: ``dask scheduler`` and ``dask worker`` subprocesses on 127.0.0.1.

``DaskCluster(folder).start(workers=2)`` starts a scheduler on a free port and workers with one
thread each and no nanny (so a test that kills a worker with SIGKILL kills the process that runs
the tasks, and nothing restarts it). Logs go to ``folder``; ``stop()`` ends every process.
Workers inherit the environment (PYTHONPATH included), so they run this checkout's code.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from broker import free_port


def dask_command() -> list[str]:
    """The ``dask`` command of this Python (its venv's bin), else the module behind it."""
    script = Path(sys.executable).with_name("dask")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "dask"]


class DaskCluster:
    host = "127.0.0.1"

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.scheduler: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []

    @property
    def address(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    def _spawn(self, name: str, *command: str) -> subprocess.Popen:
        log = (self.folder / f"{name}.log").open("ab")
        proc = subprocess.Popen(command, stdout=log, stderr=log, cwd=self.folder)
        log.close()
        return proc

    def start(self, workers: int = 2, timeout_s: float = 60.0) -> DaskCluster:
        """Scheduler and ``workers`` workers, running; on any failure nothing is left running."""
        try:
            return self._start(workers, timeout_s)
        except BaseException:
            self.stop()
            raise

    def _start(self, workers: int, timeout_s: float) -> DaskCluster:
        self.scheduler = self._spawn("scheduler", *dask_command(), "scheduler", "--host", self.host, "--port",
                                     str(self.port), "--no-dashboard")
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                break
            except OSError:
                if self.scheduler.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"dask scheduler did not start: {self.log('scheduler')}") from None
                time.sleep(0.1)
        for _ in range(workers):
            self.add_worker()
        if workers:
            self.wait_for_workers(workers, timeout_s)
        return self

    def add_worker(self, *, hide: Path | None = None) -> subprocess.Popen:
        """One more worker; ``hide``: a folder this worker cannot see (an empty tmpfs over it,
        in a mount namespace of its own: needs ``unshare -m``, i.e. root)."""
        i = len(self.workers)
        command = [*dask_command(), "worker", self.address, "--nthreads", "1", "--no-nanny",
                   "--host", self.host, "--no-dashboard", "--name", f"w{i}",
                   "--local-directory", str(self.folder / f"w{i}")]
        if hide is not None:
            command = ["unshare", "-m", "sh", "-c", 'mount -t tmpfs none "$0" && exec "$@"',
                       str(hide), *command]
        proc = self._spawn(f"worker{i}", *command)
        self.workers.append(proc)
        return proc

    def client(self):
        from distributed import Client

        return Client(self.address, timeout=30, set_as_default=False)

    def wait_for_workers(self, n: int, timeout_s: float = 60.0) -> None:
        with self.client() as client:
            client.wait_for_workers(n, timeout=timeout_s)

    def log(self, name: str) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def kill_worker(self, proc: subprocess.Popen) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop(self) -> None:
        for proc in [*self.workers, self.scheduler]:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in [*self.workers, self.scheduler]:
            if proc is None:
                continue
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
