"""When and where a recording was made: GUANO, the AudioMoth comment, file names, sites.

The files are real WAVs written with soundfile, with the metadata chunks recorders write
added to them byte for byte (a ``guan`` chunk, a ``LIST/INFO/ICMT`` comment).
"""

from __future__ import annotations

import datetime as dt
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile

from device.recording import (
    AUDIOMOTH,
    FILENAME,
    GUANO,
    TimeError,
    check_time_format,
    parse_start_time,
    parse_timezone,
    recording_start,
    riff_texts,
    site_of,
    time_from_name,
)

UTC = dt.UTC


def _chunk(chunk_id: bytes, body: bytes) -> bytes:
    return chunk_id + struct.pack("<I", len(body)) + body + (b"\0" if len(body) % 2 else b"")


def write_wav(path: Path, *, seconds: float = 1.0, audio: np.ndarray | None = None,
              guano: str | None = None, comment: str | None = None,
              chunks_after_data: bool = False) -> Path:
    """A 16 kHz 16-bit WAV (``audio``, else ``seconds`` of silence) with a GUANO chunk and/or
    an INFO comment (before or after the audio)."""
    if audio is None:
        audio = np.zeros(int(seconds * 16000), np.float32)
    soundfile.write(path, audio, 16000, subtype="PCM_16")
    data = path.read_bytes()
    extra = b""
    if guano is not None:
        extra += _chunk(b"guan", guano.encode("utf-8"))
    if comment is not None:
        extra += _chunk(b"LIST", b"INFO" + _chunk(b"ICMT", comment.encode("ascii") + b"\0"))
    fmt_end = 12 + 8 + struct.unpack("<I", data[16:20])[0]  # chunks start after "WAVE" (12)
    if chunks_after_data:
        body = data[12:] + extra
    else:  # AudioMoth puts its LIST chunk between fmt and data
        body = data[12:fmt_end] + extra + data[fmt_end:]
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body)
    info = soundfile.info(str(path))  # still a valid WAV
    assert info.samplerate == 16000
    return path


AUDIOMOTH_COMMENT = ("Recorded at 05:30:00 01/05/2024 (UTC) by AudioMoth 24F319055FDF2B5E at "
                     "medium gain while battery was 4.5V and temperature was 12.3C.")


def test_audiomoth_comment_gives_the_start(tmp_path):
    path = write_wav(tmp_path / "rec.WAV", comment=AUDIOMOTH_COMMENT)
    assert "AudioMoth" in riff_texts(path)["ICMT"]
    t = recording_start(path, name="rec.WAV", time_format=None, tz=UTC)
    assert (t.start, t.source) == (dt.datetime(2024, 5, 1, 5, 30, tzinfo=UTC), AUDIOMOTH)


@pytest.mark.parametrize("zone, hour", [("UTC+1", 4), ("UTC-5", 10), ("UTC+5:30", 0)])
def test_audiomoth_comment_in_local_time(tmp_path, zone, hour):
    comment = AUDIOMOTH_COMMENT.replace("(UTC)", f"({zone})")
    path = write_wav(tmp_path / "rec.wav", comment=comment)
    start = recording_start(path, name="rec.wav", time_format=None, tz=UTC).start
    assert start.hour == hour and start.tzinfo == UTC
    if zone == "UTC+5:30":
        assert start.minute == 0 and start == dt.datetime(2024, 5, 1, 0, 0, tzinfo=UTC)


def test_guano_beats_the_comment_and_the_name_and_may_sit_after_the_audio(tmp_path):
    guano = "GUANO|Version: 1.0\nMake: Wildlife Acoustics\nTimestamp: 2023-07-04T21:15:30-04:00\n"
    path = write_wav(tmp_path / "SM4_20240501_053000.wav", guano=guano, comment=AUDIOMOTH_COMMENT,
                     chunks_after_data=True)
    t = recording_start(path, name=path.name, time_format=None, tz=UTC)
    assert (t.start, t.source) == (dt.datetime(2023, 7, 5, 1, 15, 30, tzinfo=UTC), GUANO)


def test_guano_without_an_offset_is_in_the_given_zone(tmp_path):
    path = write_wav(tmp_path / "x.wav", guano="GUANO|Version: 1.0\nTimestamp: 2023-07-04T21:15:30\n")
    start = recording_start(path, name="x.wav", time_format=None,
                            tz=parse_timezone("America/New_York")).start
    assert start == dt.datetime(2023, 7, 5, 1, 15, 30, tzinfo=UTC)


@pytest.mark.parametrize("name, expected", [
    ("20240501_053000.WAV", dt.datetime(2024, 5, 1, 5, 30, tzinfo=UTC)),           # AudioMoth
    ("SM4A12345_20240501_053000.wav", dt.datetime(2024, 5, 1, 5, 30, tzinfo=UTC)),  # Song Meter
    ("S4A01234_20230615_230001_000.wav", dt.datetime(2023, 6, 15, 23, 0, 1, tzinfo=UTC)),
    ("site_3_20240501T053000.flac", dt.datetime(2024, 5, 1, 5, 30, tzinfo=UTC)),
    ("12345678_20241399_000000.wav", None),    # no real date anywhere
    ("20240230_120000.wav", None),             # 30 February
    ("recording-7.wav", None),
    ("2024050105300012.wav", None),            # digits run on: not a stamp
])
def test_names_with_and_without_a_time(name, expected):
    assert time_from_name(name, time_format=None, tz=UTC) == expected


def test_a_configured_format_and_a_local_time_zone():
    berlin = parse_timezone("Europe/Berlin")
    got = time_from_name("Wald_2024-05-01_07-30-00.wav", time_format="%Y-%m-%d_%H-%M-%S", tz=berlin)
    assert got == dt.datetime(2024, 5, 1, 5, 30, tzinfo=UTC)  # CEST is UTC+2
    winter = time_from_name("20240115_063000.WAV", time_format=None, tz=berlin)
    assert winter == dt.datetime(2024, 1, 15, 5, 30, tzinfo=UTC)
    assert time_from_name("x_240501-0530.wav", time_format="%y%m%d-%H%M", tz=parse_timezone("+02:00")) \
        == dt.datetime(2024, 5, 1, 3, 30, tzinfo=UTC)


def test_the_name_is_used_when_the_file_has_no_metadata(tmp_path):
    path = write_wav(tmp_path / "20240501_053000.WAV")
    t = recording_start(path, name="SiteA/20240501_053000.WAV", time_format=None, tz=UTC)
    assert t.source == FILENAME and t.start.isoformat() == "2024-05-01T05:30:00+00:00"
    nothing = recording_start(write_wav(tmp_path / "dawn.wav"), name="dawn.wav",
                              time_format=None, tz=UTC)
    assert nothing.start is None and nothing.source is None


def test_not_a_wav_and_a_broken_file_have_no_metadata(tmp_path):
    (tmp_path / "a.flac").write_bytes(b"fLaC\0\0")
    (tmp_path / "b.wav").write_bytes(b"RIFF\xff\xff\xff\x7fWAVEfmt ")
    assert riff_texts(tmp_path / "a.flac") == {} and riff_texts(tmp_path / "b.wav") == {}


def test_start_time_and_timezone_parsing():
    assert parse_start_time("2024-05-01T05:30:00Z", UTC) == dt.datetime(2024, 5, 1, 5, 30, tzinfo=UTC)
    assert parse_start_time("2024-05-01 07:30", parse_timezone("+02:00")).hour == 5
    with pytest.raises(TimeError, match="--start-time"):
        parse_start_time("May 1st", UTC)
    with pytest.raises(TimeError, match="--timezone"):
        parse_timezone("Mars/Olympus")
    with pytest.raises(TimeError, match="needs a year"):
        check_time_format("%H%M%S")
    with pytest.raises(TimeError, match="unsupported code %B"):
        check_time_format("%d %B %Y %H")


def test_site_from_the_folder_or_a_pattern():
    assert site_of("SiteA/20240501_053000.WAV", pattern=None, folder="SiteA") == "SiteA"
    assert site_of("/abs/x.wav", pattern=None, folder=None) is None
    assert site_of("2024/SiteB/card1/x.wav", pattern=r"(Site\w+)/", folder="2024/SiteB/card1") == "SiteB"
    assert site_of("x.wav", pattern=r"(Site\w+)/", folder=None) is None
