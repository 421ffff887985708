"""Train / validation / test split by group (recording or site), never by window. Seeded.

Every window of a recording goes where its group goes, so two windows of one call, or two
recordings of one site, never sit on both sides of an accuracy figure. The split is written
to ``split.csv`` (one row per recording) so a run can be audited and reproduced.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from train.datasets import SPLITS, DatasetError, Recording

_TRIES = 200


def _has_positive(recordings: list[Recording], label: str) -> bool:
    return any(r.positives(label) for r in recordings)


def _share(n: int, share: float) -> int:
    """Groups for a split of ``share``: at least one when the share is non-zero and groups remain."""
    return 0 if share <= 0 or n < 2 else min(n - 1, max(1, round(share * n)))


def split_recordings(
    recordings: list[Recording],
    *,
    labels: list[str],
    validation: float,
    test: float,
    test_groups: list[str],
    validation_groups: list[str],
    validation_by: str,
    seed: int,
) -> dict[str, str]:
    """Recording name -> "train" | "validation" | "test".

    Datasets with a ``split`` key go there whole. Named ``test_groups`` / ``validation_groups``
    replace the share of that split; the other groups are shuffled (seeded) and shared out, with
    a few reshuffles to give every split positives of every label when the groups allow it.
    ``validation_by="file"`` draws validation recordings from the training groups instead (for
    data with too few groups, e.g. two sites: one for test, one for training and validation).
    """
    split: dict[str, str] = {r.name: r.forced_split for r in recordings if r.forced_split}
    free = [r for r in recordings if not r.forced_split]
    groups = sorted({r.group for r in free})
    for name, forced in (("test_groups", test_groups), ("validation_groups", validation_groups)):
        unknown = sorted(set(forced) - set(groups))
        if unknown:
            raise DatasetError(f"train.split.{name}: no recordings in group(s) {', '.join(unknown)} "
                               f"(groups: {', '.join(groups[:12])}{' ...' if len(groups) > 12 else ''})")
    overlap = set(test_groups) & set(validation_groups)
    if overlap:
        raise DatasetError(f"train.split: group(s) {', '.join(sorted(overlap))} named for both test and validation")
    by_group: dict[str, list[Recording]] = {g: [] for g in groups}
    for r in free:
        by_group[r.group].append(r)
    rest = [g for g in groups if g not in test_groups and g not in validation_groups]
    n_test = 0 if test_groups else _share(len(rest), test)
    n_val = 0 if validation_groups or validation_by == "file" else _share(len(rest) - n_test, validation)
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for _attempt in range(_TRIES):
        order = list(rng.permutation(rest)) if rest else []
        assignment = {g: "test" for g in test_groups} | {g: "validation" for g in validation_groups}
        assignment |= {g: "test" for g in order[:n_test]}
        assignment |= {g: "validation" for g in order[n_test:n_test + n_val]}
        assignment |= {g: "train" for g in order[n_test + n_val:]}
        if all(_has_positive([r for g, s in assignment.items() if s == part for r in by_group[g]], label)
               for part in ("train",) + (("test",) if n_test else ()) + (("validation",) if n_val else ())
               for label in labels):
            break
    for r in free:
        split[r.name] = assignment[r.group]
    if validation_by == "file" and validation > 0 and not validation_groups:
        _validation_by_file(free, split, validation, rng)
    return split


def _validation_by_file(free: list[Recording], split: dict[str, str], share: float, rng) -> None:
    """Move ``share`` of the training recordings to validation, stratified by their labels."""
    strata: dict[tuple, list[Recording]] = {}
    for r in free:
        if split[r.name] == "train":
            strata.setdefault(tuple(sorted({a.label for a in r.annotations})), []).append(r)
    for members in strata.values():
        n = round(share * len(members))
        for index in rng.permutation(len(members))[:n]:
            split[members[index].name] = "validation"


def fold_groups(recordings: list[Recording]) -> list[str]:
    """Groups that leave-one-group-out cross-validation holds out in turn (forced datasets excluded)."""
    return sorted({r.group for r in recordings if not r.forced_split})


def kfold_test_groups(recordings: list[Recording], *, labels: list[str], first: list[str], k: int,
                      seed: int) -> list[list[str]]:
    """Test groups of ``k`` folds: ``first`` (the main run's), then the other groups shuffled
    (seeded) and dealt out in turn, groups with positives first so every fold gets its share."""
    rest = [g for g in fold_groups(recordings) if g not in first]
    with_positives = {r.group for r in recordings if any(r.positives(label) for label in labels)}
    rng = np.random.default_rng([seed, k])
    order = [g for part in (sorted(g for g in rest if g in with_positives),
                            sorted(g for g in rest if g not in with_positives))
             for g in rng.permutation(part)] if rest else []
    folds: list[list[str]] = [sorted(first)] + [[] for _ in range(k - 1)]
    for i, group in enumerate(order):
        folds[1 + i % (k - 1)].append(str(group))
    if any(not fold for fold in folds):
        raise DatasetError(f"train.split.folds: {k} folds need at least {k} groups besides forced splits; "
                           f"there are {len(rest) + bool(first)} (lower folds)")
    return [sorted(fold) for fold in folds]


def check_disjoint(recordings: list[Recording], split: dict[str, str]) -> None:
    """Raise when a group has recordings in two splits (validation-by-file excepted)."""
    seen: dict[str, set[str]] = {}
    for r in recordings:
        seen.setdefault(r.group, set()).add(split[r.name])
    for group, parts in seen.items():
        if "test" in parts and len(parts) > 1:
            raise AssertionError(f"group {group} is in the test split and in {sorted(parts - {'test'})}")


def write_split_csv(path: Path, recordings: list[Recording], split: dict[str, str]) -> None:
    """split.csv: recording, group, split, dataset index, kind, positive annotations."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["recording", "group", "split", "dataset", "kind", "positives", "duration_s"])
        for r in sorted(recordings, key=lambda r: (SPLITS.index(split[r.name]), r.name)):
            writer.writerow([r.name, r.group, split[r.name], r.dataset, r.kind,
                             len(r.positives()), f"{r.duration_s:.3f}"])
