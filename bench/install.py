"""The device install per Python version: venv size, install time, replay CPU on 3.11 vs 3.13.

- For each of Python 3.11, 3.12 and 3.13 found on this machine (``pythonX.Y`` on PATH, or
  pyenv's versions), ``systemd/install.sh --destdir`` installs the device profile for real
  (pip from the package index), as on a Raspberry Pi; then the same in a Debian 13 (trixie)
  root with its own python3 (scripts/debian-root; needs root, else that row is missing).
- Venv size: ``du`` of the installed venv, MiB, and its three largest packages.
- Install time: wall seconds of install.sh (mostly downloads and unpacking; pip's cache is warm
  after the first Python, so the figures are upper bounds for the later ones only roughly).
- Replay: CPU seconds (user + system of the child, best of 3) of ``python -m device --replay``
  on the same file with the same model, in each installed venv, start-up included.

Model: ``runs/demo``, the default frame head (``bash scripts/demo``), else ``runs/capuchin``
(a frame head too), else an untrained int8 model of the schema's default architecture, a frame
head as well (bench._models.architecture_bundle). The window rule (``runs/demo_max``) is not
measured beside it: over 180 s of audio its replay would differ by about 0.01 CPU-s (0.2-0.3
CPU-s per audio hour, bench.daemon), well inside the spread of start-up. File: a real 180 s
Capuchinbird soundscape (48 kHz stereo MP3) when ../shared/data is there, else 180 s of
synthetic 48 kHz stereo FLAC.
"""

from __future__ import annotations

import glob
import os
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench import preamble

NAME = "install"
REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
VERSIONS = ("3.11", "3.12", "3.13")
BUDGET_MIB = 200


def interpreters() -> dict[str, str]:
    """Python version -> interpreter path, for the versions found on this machine."""
    found = {}
    for version in VERSIONS:
        path = shutil.which(f"python{version}")
        if path is None or "/shims/" in path:  # a pyenv shim runs only the selected version
            candidates = sorted(
                glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}"))
            )
            path = candidates[-1] if candidates else None
        if path:
            found[version] = path
    return found


def venv_mib(venv: Path) -> tuple[float, str]:
    """Size of the venv, MiB, and its largest packages."""
    total = (
        int(
            subprocess.run(
                ["du", "-sk", str(venv)], capture_output=True, text=True, check=True
            ).stdout.split()[0]
        )
        / 1024
    )
    site = next(venv.glob("lib/python3*/site-packages"))
    sizes = []
    for entry in site.iterdir():
        if entry.is_dir() and not entry.name.endswith((".dist-info", "__pycache__")):
            kib = int(
                subprocess.run(
                    ["du", "-sk", str(entry)], capture_output=True, text=True, check=True
                ).stdout.split()[0]
            )
            sizes.append((kib / 1024, entry.name))
    top = ", ".join(f"{name} {mib:.0f}" for mib, name in sorted(sizes, reverse=True)[:3])
    return total, top


def child_cpu(command: list[str], **kwargs) -> float:
    """CPU seconds (user + system) a command's process tree took."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(command, check=True, capture_output=True, **kwargs)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def recording(folder: Path) -> tuple[Path, str]:
    mp3s = sorted((DATA / "capuchin" / "recordings").glob("recording_*.mp3"))
    if mp3s:
        return mp3s[0], f"`{mp3s[0].name}` (180 s, 48 kHz stereo MP3, ../shared/data)"
    import soundfile

    from bench._models import tone_signal

    path = folder / "stereo48k.flac"
    soundfile.write(path, tone_signal(180, 48000, channels=2), 48000)
    return path, "180 s of synthetic 48 kHz stereo FLAC"


def model_bundle(folder: Path) -> tuple[Path, str]:
    from bench._models import DEVICE_BUNDLES, architecture_bundle, architecture_note, device_bundles

    found = device_bundles()
    for name in ("demo", "capuchin"):  # trained frame heads: scripts/demo's, the example's
        if f"runs/{name}" in found:
            return found[f"runs/{name}"].parent, f"`runs/{name}` ({DEVICE_BUNDLES[name]})"
    untrained = architecture_bundle(folder / "architecture").parent
    return untrained, f"no trained frame head under runs/: {architecture_note()}"


def install_row(label: str, command: list[str], venv: Path, replay: list[str], **kwargs) -> dict:
    began = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    seconds = time.monotonic() - began
    if result.returncode != 0:
        return {"label": label, "error": (result.stderr or result.stdout).strip().splitlines()[-1]}
    mib, top = venv_mib(venv)
    cpu = min(child_cpu(replay, **kwargs) for _ in range(3))
    return {"label": label, "seconds": seconds, "mib": mib, "top": top, "replay_cpu": cpu}


def run() -> str:
    rows = []
    with tempfile.TemporaryDirectory(prefix="callwatch-bench-install-") as tmp_name:
        tmp = Path(tmp_name)
        model, model_note = model_bundle(tmp)
        audio, audio_note = recording(tmp)
        replay_args = [
            "--replay",
            str(audio),
            "--model",
            str(model),
            "--config",
            "/dev/null",
            "--events-jsonl",
            os.devnull,
        ]
        for version, python in interpreters().items():
            stage = tmp / f"py{version}"
            venv = stage / "opt/callwatch/venv"
            rows.append(
                install_row(
                    f"Python {version} ({python})",
                    [
                        "bash",
                        str(REPO / "systemd/install.sh"),
                        "--destdir",
                        str(stage),
                        "--python",
                        python,
                        str(model),
                    ],
                    venv,
                    [str(venv / "bin/python"), "-m", "device", *replay_args],
                )
            )
        if os.geteuid() == 0:
            made = subprocess.run(
                ["bash", str(REPO / "scripts/debian-root")], capture_output=True, text=True
            )
            if made.returncode == 0:
                root = Path(made.stdout.split()[-1])
                inside = Path("/tmp") / f"callwatch-bench-{os.getpid()}"
                host = root / inside.relative_to("/")
                try:
                    shutil.copytree(
                        REPO,
                        host / "src",
                        ignore=shutil.ignore_patterns(
                            ".git", ".venv", "runs", "demo", "__pycache__", "node_modules"
                        ),
                    )
                    shutil.copytree(model, host / "model")
                    shutil.copy(audio, host / audio.name)
                    venv = inside / "stage/opt/callwatch/venv"
                    # chroot with /proc and /sys mounted: LiteRT reads the CPU's features there
                    chroot = ["bash", str(REPO / "scripts/debian-root"), str(root), "--"]
                    rows.append(
                        install_row(
                            "Debian 13 root, its python3",
                            [
                                *chroot,
                                "bash",
                                f"{inside}/src/systemd/install.sh",
                                "--destdir",
                                f"{inside}/stage",
                                f"{inside}/model",
                            ],
                            host / "stage/opt/callwatch/venv",
                            [
                                *chroot,
                                f"{venv}/bin/python",
                                "-m",
                                "device",
                                "--replay",
                                f"{inside}/{audio.name}",
                                "--model",
                                f"{inside}/model",
                                "--config",
                                "/dev/null",
                                "--events-jsonl",
                                "/dev/null",
                            ],
                        )
                    )
                    python = subprocess.run(
                        [*chroot, "python3", "--version"], capture_output=True, text=True
                    ).stdout.strip()
                    rows[-1]["label"] = f"Debian 13 root, its {python}"
                finally:
                    shutil.rmtree(host, ignore_errors=True)
    lines = [
        "## Device install per Python version",
        "",
        preamble(NAME),
        f"`systemd/install.sh --destdir` with real pip installs of the device profile (no "
        f"TensorFlow, no SciPy); replay of {audio_note} with {model_note}, CPU seconds "
        "(user + system, start-up included, best of 3; the window rule's `runs/demo_max` would "
        "differ by about 0.01 CPU-s on 180 s of audio, inside the spread of start-up, so it is "
        f"not measured here). Budget: the venv at most {BUDGET_MIB} MiB on x86_64.",
        "",
        "| interpreter | venv, MiB | largest packages, MiB | install.sh, s (wall) | replay, CPU s |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['label']} | failed: {row['error']} | | | |")
        else:
            verdict = "" if row["mib"] <= BUDGET_MIB else " (over budget)"
            lines.append(
                f"| {row['label']} | {row['mib']:.0f}{verdict} | {row['top']} | "
                f"{row['seconds']:.0f} | {row['replay_cpu']:.2f} |"
            )
    return "\n".join(lines) + "\n"
