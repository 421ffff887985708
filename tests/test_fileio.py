"""The one atomic write: the whole new content or the old, never a half-written file."""

from __future__ import annotations

import pytest

from device.fileio import write_atomic


def test_text_and_bytes_replace_the_file_and_leave_no_temporary(tmp_path):
    path = tmp_path / "state.json"
    write_atomic(path, "first\n")
    write_atomic(path, "zweite Zeile: ä\n")
    assert path.read_text(encoding="utf-8") == "zweite Zeile: ä\n"
    write_atomic(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    write_atomic(path, b"shared", concurrent=True)  # a temporary of its own, same result
    assert path.read_bytes() == b"shared"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_failed_write_keeps_the_old_content_and_cleans_up(tmp_path):
    path = tmp_path / "seq"
    write_atomic(path, "7\n")
    (tmp_path / "seq.tmp").mkdir()  # the temporary cannot be written
    with pytest.raises(OSError):
        write_atomic(path, "8\n")
    assert path.read_text() == "7\n"
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "no" / "such" / "folder" / "x", "y")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seq", "seq.tmp"]
