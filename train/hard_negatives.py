"""The hard-negative loop: false positives of a replay become negatives of the next run.

``train.hard_negatives`` (or ``--hard-negatives``) lists files of two kinds:

- an events JSONL written by ``python -m device --replay ... --events-jsonl FILE``: every event
  in it is taken as a false positive (delete the lines of true detections first);
- a CSV with ``source`` (or ``path``), ``start_s`` and ``end_s`` columns (``--detections-csv``):
  every row is taken as a false positive;
- a Raven selection table (e.g. from ``--raven-dir`` or ``--raven-table``, reviewed in Raven):
  the selections whose label (column ``Annotation``, ``Label``, ``Species`` or ``Class``) is
  ``negative``, ``false positive`` or ``fp``; a table without a label column counts every
  selection. Its audio is the file in ``Begin Path`` (times from ``File Offset (s)`` when the
  table has it: a table over several files), else ``Begin File``, else the table's stem.

The audio is looked up among the datasets' recordings, then as a path, beside the list, under
the data root and under each folder of ``train.hard_negatives_audio`` (give a replay's root:
replay sources are relative to it). Each stretch is added to its recording as a negative
annotation, in the training split only: a stretch on a validation or test recording, or on a
call, is skipped with a warning. The console gets one line: how many were used and skipped.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from device.audio import AudioError, audio_info
from train.datasets import NEGATIVE, Annotation, DatasetError, Inventory, Recording, _relative

NEGATIVE_MARKS = {"negative", "false positive", "false_positive", "fp"}
_LABEL_COLUMNS = ("Annotation", "Label", "Species", "Class")
_PATH_COLUMNS = ("Begin Path", "path", "Path", "source", "Source", "Begin File")


def read_hard_negatives(path: Path) -> list[tuple[str, float, float]]:
    """(source, start_s, end_s) of the false positives listed in one JSONL or Raven table."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: hard-negative file missing (train.hard_negatives)")
    lines = path.read_text(encoding="utf-8-sig", errors="replace").splitlines()
    out = []
    if path.suffix == ".jsonl":
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
                out.append((str(event["source"]), float(event["start_s"]), float(event["end_s"])))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise DatasetError(f"{path}: line {number}: expected an event with source, start_s, end_s") from None
        return out
    if not lines:
        return out
    if path.suffix.lower() == ".csv":
        rows = csv.DictReader(io.StringIO("\n".join(lines)))
        column = next((c for c in ("source", "path") if c in (rows.fieldnames or [])), None)
        if column is None or not {"start_s", "end_s"} <= set(rows.fieldnames or []):
            raise DatasetError(f"{path}: a CSV of hard negatives needs source (or path), start_s "
                               "and end_s columns")
        for number, row in enumerate(rows, 2):
            try:
                out.append((row[column], float(row["start_s"]), float(row["end_s"])))
            except (TypeError, ValueError):
                raise DatasetError(f"{path}: line {number}: unreadable row") from None
        return out
    header = [h.strip() for h in lines[0].split("\t")]
    if "Begin Time (s)" not in header or "End Time (s)" not in header:
        raise DatasetError(f"{path}: not a Raven selection table (no 'Begin Time (s)' / 'End Time (s)' columns)")
    begin, end = header.index("Begin Time (s)"), header.index("End Time (s)")
    label = next((header.index(c) for c in _LABEL_COLUMNS if c in header), None)
    file_column = next((header.index(c) for c in _PATH_COLUMNS if c in header), None)
    offset = header.index("File Offset (s)") if "File Offset (s)" in header else None
    default_source = path.name.split(".")[0]
    for number, line in enumerate(lines[1:], 2):
        cells = line.split("\t")
        try:
            if label is not None and cells[label].strip().lower() not in NEGATIVE_MARKS:
                continue
            source = cells[file_column].strip() if file_column is not None else default_source
            start, stop = float(cells[begin]), float(cells[end])
            if offset is not None:  # Begin Time counts over all files of the table
                start, stop = float(cells[offset]), float(cells[offset]) + stop - start
            out.append((source, start, stop))
        except (IndexError, ValueError):
            raise DatasetError(f"{path}: line {number}: unreadable selection") from None
    return out


def _find(source: str, inventory: Inventory) -> list[Recording]:
    """Recordings a source names: same relative path, same file name, or (tables) same stem."""
    exact = [r for r in inventory.recordings if r.name == source or str(r.path) == source]
    if exact:
        return exact
    name = Path(source).name
    by_name = [r for r in inventory.recordings if r.path.name == name]
    return by_name or [r for r in inventory.recordings if r.path.name.split(".")[0] == name]


def apply_hard_negatives(files: Sequence[str | Path], *, inventory: Inventory, split: dict[str, str],
                         data_root: Path, audio_dirs: list[str] | tuple = (),
                         log: Callable[[str], None] | None = None) -> int:
    """Add the stretches of ``files`` as negative annotations (training split); returns how many.
    ``audio_dirs``: more folders to find the audio in. ``log``: gets one line, used and skipped."""
    added = 0
    warned = len(inventory.warnings)
    for file in map(Path, files):
        for source, start, end in read_hard_negatives(file):
            if end <= start:
                inventory.warn(f"{file}: hard negative {source} {start}-{end} s has end <= start, skipped")
                continue
            matches = _find(source, inventory)
            if not matches:
                places = [Path(source), file.parent / source, data_root / source,
                          *(Path(d).expanduser() / source for d in audio_dirs)]
                candidate = next((p for p in places if p.is_file()), None)
                if candidate is None:
                    inventory.warn(f"{file}: hard negative source {source!r} not found in the datasets, "
                                   f"beside {file.name}, under the data root or train.hard_negatives_audio; "
                                   "skipped")
                    continue
                try:
                    duration = audio_info(candidate)[2]
                except AudioError as exc:
                    inventory.warn(f"{file}: hard negative skipped: {exc}")
                    continue
                name = _relative(candidate.resolve(), data_root.resolve())
                inventory.recordings.append(Recording(path=candidate, name=name, dataset=-1, kind="selections",
                                                      group=name, duration_s=duration, forced_split="train"))
                split[name] = "train"
                matches = [inventory.recordings[-1]]
            if len(matches) > 1:
                inventory.warn(f"{file}: hard negative source {source!r} matches {len(matches)} recordings; skipped")
                continue
            recording = matches[0]
            if split[recording.name] != "train":
                inventory.warn(f"{file}: hard negative on {recording.name} skipped: that recording is in the "
                               f"{split[recording.name]} split (training on it would leak into the metrics)")
                continue
            stretch = (start, min(end, recording.duration_s))
            if stretch[0] >= recording.duration_s:
                inventory.warn(f"{file}: hard negative {start}-{end} s is past the end of {recording.name}; skipped")
                continue
            if any(min(a.end_s, stretch[1]) > max(a.start_s, stretch[0]) for a in recording.positives()):
                inventory.warn(f"{file}: hard negative {start}-{end} s on {recording.name} overlaps an annotated "
                               "call; skipped (fix the annotation if the call is not there)")
                continue
            index = inventory.recordings.index(recording)
            inventory.recordings[index] = dataclasses.replace(
                recording, annotations=recording.annotations + (Annotation(*stretch, NEGATIVE),))
            added += 1
    skipped = len(inventory.warnings) - warned
    if log is not None and files:
        log(f"hard negatives: {added} used, {skipped} skipped"
            + (f" (first: {inventory.warnings[warned]})" if skipped else ""))
    return added
