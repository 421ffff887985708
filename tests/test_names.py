"""The one name sanitiser keeps each caller's names as they always were: output files (Raven
tables, clips), Home Assistant discovery ids, and training fold folders."""

from __future__ import annotations

import pytest

from device.mqtt.discovery import object_id
from device.names import WORD_CHARS, safe_name
from device.sinks import table_stem


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20240501_053000", "20240501_053000"),
        ("Site A / night#2", "Site_A_night_2"),
        ("__x.y-z__", "x.y-z"),
        ("Forêt", "For_t"),
        ("???", ""),
    ],
)
def test_file_names_squeeze_runs_and_strip_underscores(text, expected):
    assert safe_name(text) == expected


def test_table_stems_keep_folders_and_fall_back_per_part():
    assert table_stem("Site A/20240501 053000.WAV") == "Site_A/20240501_053000"
    assert table_stem("??/!!.wav") == "_/source"
    assert table_stem("/abs/path/rec.wav") == "rec"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("pi-7", "pi-7"),
        ("pi.7 garden", "pi_7_garden"),
        ("Forêt", "For_t"),
        ("", "_"),
        ("a..b", "a__b"),
    ],
)
def test_discovery_ids_replace_each_character_and_keep_no_dot(name, expected):
    assert object_id(name) == expected


@pytest.mark.parametrize(
    ("group", "expected"),
    [("SiteA", "SiteA"), ("Forêt 2", "Forêt_2"), ("a/b.c", "a_b.c"), ("", "group")],
)
def test_fold_folders_keep_unicode_letters(group, expected):
    assert safe_name(group, allowed=WORD_CHARS, squeeze=False, fallback="group") == expected
