"""Datasets -> recordings with annotations: clip folders, selection tables, background folders.

Three kinds of dataset (``train.datasets[i].kind``), all read into one list of
:class:`Recording`:

- ``clips``: one subfolder per class (``presence/``, ``absence/``); the whole clip carries the
  folder's label, mapped by ``classes`` to a target label or ``negative``.
- ``selections``: long recordings with a Raven selection table (``*.selections.txt``, tab
  separated, ``Begin Time (s)`` / ``End Time (s)`` and a label column) or an Audacity label
  file (``start<TAB>end<TAB>label``) each. Annotation labels map through ``classes``; labels in
  ``ignore`` are left out of positives and negatives; everything else is background (negative).
- ``background``: noise recordings (rain, insects, wind): negatives and mixing material.

A problem the user must fix (missing folder, empty class, a table without the needed columns)
raises :class:`DatasetError`, one line naming the file. A problem that only costs one file
(unreadable audio, a recording without a table, annotations past the end) is a warning: the
file or annotation is skipped and counted in :class:`Inventory.warnings` for the report.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from device.audio import AUDIO_EXTENSIONS, AudioError, audio_info, find_audio_files

NEGATIVE = "negative"
"""Target for classes that are not a label: their windows are negatives."""
SPLITS = ("train", "validation", "test")
_END_SLACK_S = 0.25
"""Annotations may end this far past the (header) duration without a warning: MP3 lengths are
estimates and Raven rounds times."""


class DatasetError(Exception):
    """A dataset the run cannot use; str() is one line naming the file or folder."""


@dataclass(frozen=True)
class Annotation:
    """A labelled stretch of a recording, seconds from its start."""

    start_s: float
    end_s: float
    label: str
    """A target label or :data:`NEGATIVE`."""

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True)
class Recording:
    """One audio file and what is known about it."""

    path: Path
    name: str
    """Path relative to the data root, as written in split.csv, errors.csv and reports."""
    dataset: int
    """Index in train.datasets (or -1 for a hard-negative source outside the datasets)."""
    kind: str
    """clips, selections or background."""
    group: str
    """Split group: the site from group_pattern, else the recording's name."""
    duration_s: float
    annotations: tuple[Annotation, ...] = ()
    """Positive (target label) and explicitly negative stretches; a clip is one annotation."""
    ignored: tuple[tuple[float, float], ...] = ()
    """(start_s, end_s) stretches excluded from positives and negatives (e.g. 'uncertain')."""
    unannotated_negative: bool = False
    """Whether stretches without annotations are background (selections, background kinds)."""
    forced_split: str | None = None
    """Split every window of this file goes to (the dataset's ``split`` key), or None."""

    def positives(self, label: str | None = None) -> list[Annotation]:
        return [a for a in self.annotations if a.label != NEGATIVE and label in (None, a.label)]


@dataclass
class Inventory:
    """Everything read from the datasets, with the problems met on the way."""

    recordings: list[Recording]
    labels: list[str]
    warnings: list[str] = field(default_factory=list)
    """One line per skipped file or annotation, for the log and the report."""
    skipped_files: int = 0

    def warn(self, message: str, *, skipped_file: bool = False) -> None:
        self.warnings.append(message)
        self.skipped_files += int(skipped_file)


def group_of(name: str, pattern: str | None) -> str:
    """The split group of a recording: ``pattern``'s first group (or match) on its name."""
    if not pattern:
        return name
    match = re.search(pattern, name)
    if not match:
        return name
    return match.group(1) if match.groups() else match.group(0)


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _duration(path: Path, inventory: Inventory) -> float | None:
    try:
        return audio_info(path)[2]
    except AudioError as exc:
        inventory.warn(f"skipped: {exc}", skipped_file=True)
        return None


def read_clips(ds, index: int, folder: Path, root: Path, inventory: Inventory) -> None:
    """A folder with one subfolder per class (``ds.classes``: folder name -> label)."""
    if not ds.classes:
        raise DatasetError(f"{folder}: clips dataset needs 'classes' (subfolder -> label or 'negative')")
    for class_name, target in ds.classes.items():
        class_dir = folder / class_name
        if not class_dir.is_dir():
            raise DatasetError(f"{class_dir}: class folder missing (named in train.datasets[{index}].classes)")
        files = find_audio_files([class_dir])
        if not files:
            raise DatasetError(f"{class_dir}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in this class folder")
        kept = 0
        for path in files:
            duration = _duration(path, inventory)
            if duration is None:
                continue
            name = _relative(path, root)
            inventory.recordings.append(Recording(
                path=path, name=name, dataset=index, kind="clips",
                group=group_of(name, ds.group_pattern), duration_s=duration,
                annotations=(Annotation(0.0, duration, target),), forced_split=ds.split,
            ))
            kept += 1
        if kept == 0:
            raise DatasetError(f"{class_dir}: none of its {len(files)} audio files is readable")
    unmapped = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in ds.classes)
    if unmapped:
        inventory.warn(f"{folder}: subfolder(s) {', '.join(unmapped)} not in classes, not used")


def read_background(ds, index: int, folder: Path, root: Path, inventory: Inventory) -> None:
    """A folder of noise recordings: every window is a negative and mixing material."""
    files = find_audio_files([folder])
    if not files:
        raise DatasetError(f"{folder}: no audio files in this background folder")
    for path in files:
        duration = _duration(path, inventory)
        if duration is None:
            continue
        name = _relative(path, root)
        inventory.recordings.append(Recording(
            path=path, name=name, dataset=index, kind="background",
            group=group_of(name, ds.group_pattern), duration_s=duration,
            unannotated_negative=True, forced_split=ds.split,
        ))


def read_table(path: Path, *, label_column: str) -> list[tuple[float, float, str]]:
    """(start_s, end_s, label) rows of a Raven selection table or an Audacity label file.

    Raven: tab-separated with a header; rows repeated per view (Waveform/Spectrogram) are
    collapsed. Audacity: ``start<TAB>end[<TAB>label]`` lines, spectral lines (``\\``) skipped.
    Raises DatasetError for a table without the needed columns or with unreadable times.
    """
    try:
        text = path.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read table ({exc.strerror})") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    rows: list[tuple[float, float, str]] = []
    first = lines[0].split("\t")
    if _is_number(first[0]) or first[0].startswith("\\"):  # Audacity: no header
        for number, line in enumerate(lines, 1):
            cells = line.split("\t")
            if cells[0].startswith("\\"):
                continue
            if len(cells) < 2 or not (_is_number(cells[0]) and _is_number(cells[1])):
                raise DatasetError(f"{path}: line {number}: expected 'start<TAB>end<TAB>label' (Audacity labels)")
            rows.append((float(cells[0]), float(cells[1]), cells[2].strip() if len(cells) > 2 else ""))
        return rows
    header = [h.strip() for h in first]
    needed = ["Begin Time (s)", "End Time (s)", label_column]
    missing = [c for c in needed if c not in header]
    if missing:
        raise DatasetError(
            f"{path}: selection table lacks column(s) {', '.join(repr(m) for m in missing)} "
            f"(has: {', '.join(header)}); set label_column to the column holding the label"
        )
    begin, end, label = (header.index(c) for c in needed)
    seen = set()
    for number, cells in enumerate(csv.reader(lines[1:], delimiter="\t"), 2):
        try:
            row = (float(cells[begin]), float(cells[end]), cells[label].strip())
        except (IndexError, ValueError):
            raise DatasetError(f"{path}: line {number}: unreadable begin/end time or missing cells") from None
        if row not in seen:
            seen.add(row)
            rows.append(row)
    return rows


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _tables_for(folder: Path) -> dict[str, Path]:
    """Table files in ``folder``, keyed by the recording stem they name (text before the first '.')."""
    tables: dict[str, Path] = {}
    for path in sorted(folder.rglob("*.txt")):
        stem = path.name.split(".")[0]
        tables.setdefault(stem, path)
    return tables


def read_selections(ds, index: int, folder: Path, root: Path, labels: list[str], inventory: Inventory) -> None:
    """Long recordings, each with a Raven selection table or Audacity label file."""
    table_dir = (root / ds.tables) if ds.tables else folder
    if not table_dir.is_dir():
        raise DatasetError(f"{table_dir}: selection table folder missing (train.datasets[{index}].tables)")
    tables = _tables_for(table_dir)
    files = find_audio_files([folder])
    if not files:
        raise DatasetError(f"{folder}: no audio recordings in this selections dataset")
    classes = dict(ds.classes) or ({} if len(labels) != 1 else None)
    unknown: dict[str, int] = {}
    used_tables = set()
    for path in files:
        table = tables.get(path.name.split(".")[0])
        if table is None:
            inventory.warn(f"skipped: {path}: no selection table named {path.stem}.*.txt in {table_dir}",
                           skipped_file=True)
            continue
        used_tables.add(table)
        duration = _duration(path, inventory)
        if duration is None:
            continue
        annotations, ignored = [], []
        for start, end, raw in read_table(table, label_column=ds.label_column):
            if end <= start:
                inventory.warn(f"{table}: selection {start}-{end} s has end <= begin, skipped")
                continue
            if start >= duration:
                inventory.warn(f"{table}: selection {start}-{end} s starts past the end of "
                               f"{path.name} ({duration:.2f} s), skipped")
                continue
            if end > duration + _END_SLACK_S:
                inventory.warn(f"{table}: selection {start}-{end} s runs past the end of "
                               f"{path.name} ({duration:.2f} s), cut at the end")
            end = min(end, duration)
            if raw in ds.ignore:
                ignored.append((start, end))
            elif classes is None:  # one label and no mapping: every annotation is a call
                annotations.append(Annotation(start, end, labels[0]))
            elif raw in classes:
                annotations.append(Annotation(start, end, classes[raw]))
            else:
                unknown[raw] = unknown.get(raw, 0) + 1
                ignored.append((start, end))
        name = _relative(path, root)
        inventory.recordings.append(Recording(
            path=path, name=name, dataset=index, kind="selections",
            group=group_of(name, ds.group_pattern), duration_s=duration,
            annotations=tuple(sorted(annotations, key=lambda a: a.start_s)),
            ignored=tuple(sorted(ignored)), unannotated_negative=True, forced_split=ds.split,
        ))
    for raw, count in sorted(unknown.items()):
        inventory.warn(f"{folder}: {count} selection(s) labelled {raw!r} are neither in classes nor "
                       "in ignore; left out of positives and negatives")
    orphans = sorted(set(tables.values()) - used_tables)
    if orphans:
        inventory.warn(f"{table_dir}: {len(orphans)} table(s) match no recording, e.g. {orphans[0].name}")


def load_datasets(datasets: list, *, data_root: Path, labels: list[str]) -> Inventory:
    """Read every configured dataset (``cfg.train.datasets``) under ``data_root``."""
    data_root = Path(data_root)
    if not data_root.is_dir():
        raise DatasetError(f"{data_root}: data root folder missing (pass --data-root or set train.data_root)")
    if not datasets:
        raise DatasetError("train.datasets: empty; name at least one dataset (see examples/)")
    inventory = Inventory(recordings=[], labels=list(labels))
    for index, ds in enumerate(datasets):
        folder = data_root / ds.path
        if not folder.is_dir():
            raise DatasetError(f"{folder}: dataset folder missing (train.datasets[{index}].path)")
        if ds.kind == "clips":
            read_clips(ds, index, folder, data_root, inventory)
        elif ds.kind == "selections":
            read_selections(ds, index, folder, data_root, labels, inventory)
        else:
            read_background(ds, index, folder, data_root, inventory)
    for label in labels:
        if not any(r.positives(label) for r in inventory.recordings):
            raise DatasetError(f"train.labels: no examples of {label!r} in any dataset "
                               "(check classes mappings and folder names)")
    return inventory
