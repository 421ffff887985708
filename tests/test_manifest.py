"""The replay manifest: a line cut short by a kill, outputs cut back, other settings refused."""

from __future__ import annotations

import pytest

from device import manifest
from device.manifest import FileRecord, ManifestError


def test_a_line_cut_short_is_dropped_and_outputs_are_cut_back(tmp_path):
    out = tmp_path / "events.jsonl"
    path = tmp_path / "m.jsonl"
    settings = {"model": "abc", "detection": {"hop_s": 0.5}}
    writer = manifest.Writer(path, settings=settings, records=[])
    out.write_text("one\n")
    writer.add(FileRecord("a.wav", 10.0, 19, None, [], {str(out): 4}))
    writer.close()
    out.write_text("one\ntwo, written before a kill\n")
    with open(path, "a") as f:
        f.write('{"source": "b.wav", "audio_s": 1')  # the kill came mid-line
    records = manifest.load(path, settings=settings)
    assert [r.source for r in records] == ["a.wav"]
    manifest.cut_outputs(records)
    assert out.read_text() == "one\n"
    manifest.Writer(path, settings=settings, records=records).close()
    assert len(path.read_text().splitlines()) == 2  # the broken line is gone for good


def test_what_cannot_be_resumed_is_refused_in_one_line(tmp_path):
    path = tmp_path / "m.jsonl"
    assert manifest.load(path, settings={}) == []  # no manifest yet: start afresh
    manifest.Writer(path, settings={"model": "abc", "rules": {"timezone": "UTC"}},
                    records=[]).close()
    with pytest.raises(ManifestError, match=r"other settings \(model, rules\)"):
        manifest.load(path, settings={"model": "xyz", "rules": {"timezone": "Europe/Oslo"}})
    (tmp_path / "junk.jsonl").write_text("hello\n")
    with pytest.raises(ManifestError, match="not a callwatch replay manifest"):
        manifest.load(tmp_path / "junk.jsonl", settings={})
    shrunk = tmp_path / "scores.csv"
    shrunk.write_text("x")
    with pytest.raises(ManifestError, match="shorter than the manifest says"):
        manifest.cut_outputs([FileRecord("a.wav", 1.0, 1, None, [], {str(shrunk): 100})])
    with pytest.raises(ManifestError, match="missing, the manifest lists it"):
        manifest.cut_outputs([FileRecord("a.wav", 1.0, 1, None, [], {str(tmp_path / "no"): 1})])
