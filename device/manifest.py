"""The replay manifest: a JSON line per finished file, so a stopped batch can resume.

Line 1 is a header: ``{"manifest": 1, "settings": {...}}`` (model, detection settings, time
and site rules, outputs). Then one line per file, appended and flushed once every output of
that file is written: its source, audio seconds, windows, error, its events (whole, so the
summaries of a resumed batch count them) and the size of every appended output file at that
moment. A resumed batch cuts those files back to the sizes of the last line (dropping what a
killed run wrote for a file it did not finish), takes the finished files' events back into
the summaries, and analyses only the files not listed, so its outputs equal an uninterrupted
run's. A last line cut short by a kill is ignored.

Stage: replay's batch bookkeeping. Contract: one :class:`Writer` per batch, owned by the
thread that gathers results (not thread-safe); paths are relative to the manifest's folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from device.fileio import write_atomic

MANIFEST_NAME = "callwatch-manifest.jsonl"
"""Default manifest file name, in the folder of the first file output."""
FORMAT = 1


class ManifestError(Exception):
    """A manifest that cannot be resumed from (one line; exit status 2)."""


@dataclass
class FileRecord:
    """One finished file."""

    source: str
    audio_s: float
    windows: int
    error: str | None
    events: list[dict] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    """Output file path -> its size in bytes once this file was written."""

    def to_json(self) -> str:
        return json.dumps(self.__dict__, separators=(",", ":"), allow_nan=False)


def load(path: Path, *, settings: dict) -> list[FileRecord]:
    """The finished files of an earlier run with the same ``settings``; [] without a manifest."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read the manifest ({exc})") from None
    try:
        header = json.loads(lines[0]) if lines else None
    except json.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or header.get("manifest") != FORMAT:
        raise ManifestError(f"{path}: not a callwatch replay manifest; remove it to start afresh")
    if header.get("settings") != settings:
        changed = sorted(
            k
            for k in set(settings) | set(header.get("settings", {}))
            if settings.get(k) != header.get("settings", {}).get(k)
        )
        raise ManifestError(
            f"{path}: made with other settings ({', '.join(changed)}); run without --resume "
            "to start afresh"
        )
    records = []
    for line in lines[1:]:
        try:
            records.append(FileRecord(**json.loads(line)))
        except (json.JSONDecodeError, TypeError):
            break  # a line cut short by a kill: that file is analysed again
    return records


def cut_outputs(records: list[FileRecord]) -> None:
    """Truncate the appended outputs to the sizes recorded after the last finished file
    (files that a run killed before its first finished file wrote are emptied by the caller,
    which opens them afresh)."""
    if not records:
        return
    for name, size in records[-1].sizes.items():
        try:
            with open(name, "r+b") as f:
                if f.seek(0, 2) < size:
                    raise ManifestError(
                        f"{name}: shorter than the manifest says ({size} bytes); run without "
                        "--resume to start afresh"
                    )
                f.truncate(size)
        except FileNotFoundError:
            raise ManifestError(
                f"{name}: missing, the manifest lists it; run without --resume to start afresh"
            ) from None


class Writer:
    """Appends records; each is flushed to the operating system before the next file starts
    (it survives SIGKILL of the process; the appended lines' fsync is left to the OS, as for the
    outputs; the rewrite of the kept lines is atomic)."""

    def __init__(self, path: Path, *, settings: dict, records: list[FileRecord]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # Rewrite what is kept (drops a line cut short), then append.
        header = json.dumps({"manifest": FORMAT, "settings": settings}) + "\n"
        write_atomic(path, header + "".join(r.to_json() + "\n" for r in records))
        self._file = open(path, "a", encoding="utf-8")

    def add(self, record: FileRecord) -> None:
        self._file.write(record.to_json() + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()
