"""Real storage faults for tests: a small ext4 "SD card" on a loop device, and tmpfs.

:class:`Card` mounts a few MiB ext4 image with ``errors=remount-ro``, as a Raspberry Pi mounts
its SD card. :meth:`Card.fill` fills it to the last block (a file written until ENOSPC);
:meth:`Card.fail` makes the kernel take it read-only the way a failing card does (an ext4 error,
through ``/sys/fs/ext4/<dev>/trigger_fs_error``); :meth:`Card.replace` is the field team's
fix: the dead mount is detached (open files keep pointing at it) and a checked copy of the
card is mounted at the same place. tmpfs cannot play the failing card: the kernel refuses to
remount a file system read-only while files on it are open for writing (EBUSY), which a
running recorder always has; :func:`tmpfs` serves the "read-only or full at start" cases.

Everything needs root; :func:`need_root` skips with the reason elsewhere. Teardown always
unmounts.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest


def need_root(*tools: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("storage faults need root (mount, loop devices); CI runs them as root")
    for tool in ("mount", "umount", *tools):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed")


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def fill(folder: Path) -> Path:
    """Write ``folder/filler`` until the file system says ENOSPC; returns the file."""
    path = folder / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    block = b"\0" * 65536
    try:
        while True:
            try:
                os.write(fd, block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(block) == 1:
                    break
                block = block[: len(block) // 16 or 1]
    finally:
        os.close(fd)
    return path


@contextlib.contextmanager
def tmpfs(folder: Path, size: str = "1m"):
    """A tmpfs of ``size`` mounted at ``folder`` (created); unmounted afterwards."""
    need_root()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(folder))
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot mount a tmpfs: {exc.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def remount(folder: Path, mode: str) -> None:
    """``mode`` "ro" or "rw" (tmpfs refuses "ro" while a file on it is open for writing)."""
    _run("mount", "-o", f"remount,{mode}", str(folder))


class Card:
    """A small ext4 file system on a loop device at ``mountpoint`` (see the module docstring)."""

    def __init__(self, image: Path, mountpoint: Path, size_mb: int = 4) -> None:
        need_root("mkfs.ext4", "e2fsck", "losetup")
        self.image, self.mountpoint = image, mountpoint
        self._mounted: list[Path] = []
        subprocess.run(["truncate", "-s", f"{size_mb}M", str(image)], check=True)
        _run("mkfs.ext4", "-q", "-F", "-m", "0", str(image))
        mountpoint.mkdir(parents=True, exist_ok=True)
        self._mount(image)

    def _mount(self, image: Path) -> None:
        try:
            _run("mount", "-o", "loop,errors=remount-ro", str(image), str(self.mountpoint))
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"cannot mount an ext4 image on a loop device: {exc.stderr.strip()}")
        self._mounted.append(image)

    @property
    def device(self) -> str:
        out = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(self.mountpoint)],
                             capture_output=True, text=True, check=True).stdout.strip()
        return Path(out.splitlines()[-1]).name

    def fill(self) -> Path:
        return fill(self.mountpoint)

    def fail(self) -> None:
        """The kernel takes the card read-only, as after an I/O error on a failing card."""
        trigger = Path("/sys/fs/ext4") / self.device / "trigger_fs_error"
        if not trigger.exists():
            pytest.skip(f"{trigger} is missing: this kernel cannot simulate an ext4 error")
        trigger.write_text("1\n")
        probe = self.mountpoint / "probe"
        try:
            probe.write_text("x")
        except OSError as exc:
            assert exc.errno == errno.EROFS, exc
        else:
            raise AssertionError("the card is still writable after the ext4 error")

    def replace(self) -> None:
        """Detach the dead mount and mount a checked copy of the card in its place."""
        os.sync()
        subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True)
        copy = self.image.with_name(f"{self.image.stem}-{len(self._mounted)}.img")
        shutil.copyfile(self.image, copy)
        subprocess.run(["e2fsck", "-fy", str(copy)], capture_output=True)
        self._mount(copy)

    def close(self) -> None:
        for _ in self._mounted:
            subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True)
