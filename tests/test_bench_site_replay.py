"""The site replay bench: a clip's score is its highest window, missing runs are not invented."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import adapt_sites, site_levers, site_replay


def test_a_clip_scores_its_highest_window(tmp_path: Path) -> None:
    scores = tmp_path / "scores.csv"
    scores.write_text(
        "source,start_s,end_s,label,score\n"
        "/d/a.wav,0.0,3.0,bobwhite,0.20\n"
        "/d/a.wav,0.5,3.5,bobwhite,0.91\n"
        "/d/a.wav,1.0,4.0,bobwhite,0.40\n"
        "/d/b.wav,0.0,3.0,bobwhite,0.05\n"
    )
    assert site_replay.clip_scores(scores) == {"/d/a.wav": 0.91, "/d/b.wav": 0.05}


def test_a_missing_run_gives_no_bundle_and_no_row_figure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(site_replay, "RUNS", tmp_path / "replay")
    monkeypatch.setattr(site_replay, "KINDS", {"one": ("one model", tmp_path / "none", "base")})
    assert site_replay.bundle("one", "DiLane", 7) is None
    assert not (tmp_path / "replay").exists()  # nothing copied, nothing converted
    rows = site_replay.accuracy_rows()
    assert rows[2:] == [
        f"| one model | {site} | {hop:g} s | - | - | - | - |"
        for site in site_levers.SITES for hop in site_replay.HOPS
    ]


@pytest.mark.skipif(not (adapt_sites.DATA / "bobwhite").is_dir(), reason="../shared/data is not present")
def test_the_sites_clips_are_its_own_presence_and_absence() -> None:
    files = site_replay.clips("DiLane")
    assert len(files) == 60 and sum(label for _, label in files) == 30
    assert all(f.name.startswith("DiLane_") for f, _ in files)
    assert {f.parent.name for f, label in files if label} == {"presence"}
