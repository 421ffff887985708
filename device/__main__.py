"""python -m device: the field daemon (see device/cli.py for the arguments)."""

import os

# One BLAS thread: the front end's small matrix products only lose time to thread hand-offs,
# and the field recorder's other cores belong to the interpreter and the system. Must be set
# before numpy is first imported.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from device.cli import main  # noqa: E402

raise SystemExit(main())
