"""Dask workers as Slurm jobs for `python -m device --replay ... --cluster SCHEDULER_FILE`.

Run on the login node (it hosts the scheduler: keep it running while callwatch works, e.g. in
tmux), from the callwatch checkout, with its venv (`pip install -e '.[cluster]'`):

    .venv/bin/python examples/cluster/slurm.py --jobs 8 --scheduler-file ~/callwatch-scheduler.json

then, in another shell on the login node:

    .venv/bin/python -m device --replay /shared/archive/2024 --cluster ~/callwatch-scheduler.json \
        --detections-csv results/2024.detections.csv --raven-table results/2024.selections.txt

Each Slurm job runs one worker process per core, one thread each (a LiteRT interpreter serves
one file at a time). The archive must be at the same path on every compute node.
Edit QUEUE, ACCOUNT and the per-job resources below for your site.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

QUEUE = "normal"
ACCOUNT = "my-project"
CORES_PER_JOB = 8
MEMORY_PER_JOB = "8GB"  # a worker process needs about 150 MiB; the rest is headroom
WALLTIME = "04:00:00"


def make_cluster(scheduler_file: Path, *, port: int = 8786):
    """The SLURMCluster (no jobs yet: ``scale(jobs=N)`` submits them); its scheduler runs in
    this process and writes its address to ``scheduler_file``."""
    from dask_jobqueue import SLURMCluster

    checkout = Path(__file__).resolve().parents[2]
    return SLURMCluster(
        queue=QUEUE,
        account=ACCOUNT,
        cores=CORES_PER_JOB,
        processes=CORES_PER_JOB,  # one worker process per core: --nworkers 8 --nthreads 1
        memory=MEMORY_PER_JOB,
        walltime=WALLTIME,
        python=sys.executable,
        local_directory="$TMPDIR",  # the node's local disk: model bundle, spill files
        job_script_prologue=[f"cd {checkout}", "export OMP_NUM_THREADS=1"],
        scheduler_options={"port": port, "scheduler_file": str(scheduler_file)},
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=4, help="Slurm jobs to start")
    parser.add_argument("--scheduler-file", type=Path, required=True,
                        help="where to write the scheduler's address for --cluster")
    args = parser.parse_args()
    cluster = make_cluster(args.scheduler_file)
    cluster.scale(jobs=args.jobs)
    print(f"scheduler {cluster.scheduler_address}; {args.jobs} Slurm jobs asked for; "
          f"wrote {args.scheduler_file}. Ctrl-C ends the jobs.", flush=True)
    try:
        while True:
            time.sleep(60)
    except KeyboardInterrupt:
        cluster.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
