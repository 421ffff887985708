"""Native libraries' log lines are kept off the console by train and convert; ours are not.

TensorFlow's C++ start-up lines depend on the CPU (oneDNN, instruction sets), so this machine
may print none of them: the filter is tested with the lines other machines print, written to
fd 2 the way native code writes them (and from a child process, which inherits fd 2).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from device.native_stderr import is_native_log_line

NATIVE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1795940017.149250   21125 cpu_feature_guard.cc:227] This TensorFlow binary is "
    "optimized to use available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow "
    "with the appropriate compiler flags.",
    "I0000 00:00:1764402111.104528    4117 port.cc:153] oneDNN custom operations are on. You may "
    "see slightly different numerical results due to floating-point round-off errors.",
    "E0000 00:00:1764402190.559107    4201 meta_optimizer.cc:966] model_pruner failed: "
    "INVALID_ARGUMENT: NodeDef mentions attribute use_unbounded_threadpool which is not in the "
    "op definition",
    "W0000 00:00:1764402190.1    4201 tf_tfl_flatbuffer_helpers.cc:365] Ignored output_format.",
    "2025-11-29 06:57:21.123456: I tensorflow/core/util/port.cc:113] oneDNN custom operations are on.",
]
KEPT = [
    "error: /nowhere: no such folder (--data-root: the folder your datasets' paths are relative to)",
    "warning: Edge TPU compiler not found",
    "F0000 00:00:1.0 1 check.cc:1] Check failed: a fatal native line is never hidden",
    "Traceback (most recent call last):",
    "I0000 is how our own line might start, without the native format",
]


def test_native_lines_are_recognised_and_ours_are_not():
    assert all(is_native_log_line(line.encode()) for line in NATIVE)
    assert not any(is_native_log_line(line.encode()) for line in KEPT)


def test_filtered_stderr_drops_native_lines_from_fd_2_and_children_keeps_the_rest_in_order():
    code = textwrap.dedent(f"""
        import os, subprocess, sys
        from device.native_stderr import filtered_stderr
        native, kept = {NATIVE!r}, {KEPT!r}
        with filtered_stderr():
            for i, n in enumerate(native):
                os.write(2, (n + "\\n").encode())     # as C++ code writes: fd 2, unbuffered
                if i < len(kept):
                    print(kept[i], file=sys.stderr, flush=True)  # as Python writes
            subprocess.run(["sh", "-c", "echo '{NATIVE[1]}' >&2; echo child line >&2"])
            os.write(2, b"no newline at the end")
        print("after", file=sys.stderr)
        """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [*KEPT, "child line", "no newline at the endafter"]
