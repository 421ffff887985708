"""Event numbering: seq goes on across restarts through the state folder, and never stops for
storage (a damaged or unwritable file is reported, numbering continues in memory)."""

from __future__ import annotations

from device.health import Degradations
from device.sequence import Sequence


def test_sequence_numbers_continue_across_restarts(tmp_path):
    first = Sequence(tmp_path / "state")
    assert [first.next(), first.next()] == [1, 2]
    again = Sequence(tmp_path / "state")
    assert again.next() == 3 and (tmp_path / "state" / "seq").read_text().strip() == "3"
    assert again.last == 3
    assert Sequence().next() == 1  # replay: numbered per run, nothing written
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["seq"]  # no temporary left


def test_a_damaged_file_starts_numbering_again_at_one(tmp_path, caplog):
    (tmp_path / "seq").write_text("not a number\n")
    sequence = Sequence(tmp_path)
    assert sequence.next() == 1 and "damaged" in caplog.text
    assert (tmp_path / "seq").read_text() == "1\n"


def test_an_unwritable_file_degrades_to_memory_and_recovers(tmp_path):
    storage = Degradations()
    sequence = Sequence(tmp_path, storage=storage)
    assert sequence.next() == 1
    blocker = tmp_path / "seq.tmp"
    blocker.mkdir()  # the temporary file cannot be created (even by root)
    assert [sequence.next(), sequence.next()] == [2, 3]  # numbering never stops
    assert "sequence" in storage.active() and (tmp_path / "seq").read_text() == "1\n"
    blocker.rmdir()
    assert sequence.next() == 4 and (tmp_path / "seq").read_text() == "4\n"
    assert "sequence" not in storage.active()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seq"]
