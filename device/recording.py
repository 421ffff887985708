"""When and where a recording was made: its start time and its site, for replay.

A recorder's files say when they were recorded in one of several ways; :func:`recording_start`
tries them in this order and says which one answered:

1. ``--start-time`` (``given``): an ISO 8601 time for a single file, or for the first of a
   folder of one recorder's back-to-back files (each next file starts where the last ended).
2. GUANO metadata (``guano``): the ``guan`` RIFF chunk Wildlife Acoustics, Pettersson and
   Titley recorders write, its ``Timestamp:`` line (https://guano-md.org).
3. The AudioMoth comment (``audiomoth``): the RIFF ``LIST/INFO/ICMT`` text "Recorded at
   05:30:00 01/05/2024 (UTC) by AudioMoth ..." (day/month/year; ``(UTC+1)``, ``(UTC-5)``,
   ``(UTC+5:30)`` for other time zones).
4. The file name (``filename``): a configured ``strftime``-style format (``replay.time_format``)
   first, then ``YYYYMMDD_HHMMSS`` anywhere in the name (AudioMoth ``20240501_053000.WAV``,
   Song Meter ``SM4A12345_20240501_053000.wav``).

Times without a zone (file names, GUANO without an offset, ``--start-time`` without one) are
in ``tz`` (``--timezone``, UTC by default). A file none of these date has no start time (None):
no time is invented for it.

The site of a source is the first group of ``replay.site_pattern`` (a regex searched in the
source path), or by default the folder the file sits in, relative to the replay root.
"""

from __future__ import annotations

import datetime as dt
import re
import struct
import zoneinfo
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

GIVEN, GUANO, AUDIOMOTH, FILENAME = "given", "guano", "audiomoth", "filename"
TIME_SOURCES = (GIVEN, GUANO, AUDIOMOTH, FILENAME)
"""Values of an event's ``time_source`` in replay (live events say ``clock``)."""

_NAME_STAMP = re.compile(r"(?<!\d)(\d{8})[_T-]?(\d{6})(?!\d)")
_AUDIOMOTH = re.compile(
    r"Recorded at (\d{2}):(\d{2}):(\d{2})(?:\.\d+)? (\d{2})/(\d{2})/(\d{4}) "
    r"\(UTC(?:([+-])(\d{1,2})(?::(\d{2}))?)?\)"
)
_FORMAT_CODES = {"%Y": r"\d{4}", "%y": r"\d{2}", "%m": r"\d{2}", "%d": r"\d{2}",
                 "%H": r"\d{2}", "%M": r"\d{2}", "%S": r"\d{2}", "%j": r"\d{3}", "%%": "%"}
_RIFF_SCAN_BYTES = 1 << 20
"""Metadata chunks after the audio are read only when they lie within this much of the end."""


class TimeError(ValueError):
    """A --start-time, --timezone or replay.time_format that cannot be used (one line)."""


@dataclass(frozen=True)
class RecordingTime:
    """A recording's start and where that came from."""

    start: dt.datetime | None
    """Start of the first sample, timezone-aware (UTC); None when unknown."""
    source: str | None
    """One of TIME_SOURCES, or None when unknown."""


def parse_timezone(text: str | None) -> dt.tzinfo:
    """'UTC', an IANA name ('Europe/Berlin') or a fixed offset ('+02:00', '-0500')."""
    if not text or text.upper() in ("UTC", "Z"):
        return dt.UTC
    m = re.fullmatch(r"(?:UTC)?([+-])(\d{1,2}):?(\d{2})?", text.strip())
    if m:
        minutes = int(m.group(2)) * 60 + int(m.group(3) or 0)
        return dt.timezone(dt.timedelta(minutes=minutes if m.group(1) == "+" else -minutes))
    try:
        return zoneinfo.ZoneInfo(text)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise TimeError(
            f"--timezone: unknown time zone {text!r} (use e.g. UTC, Europe/Berlin or +02:00)"
        ) from None


def parse_start_time(text: str, tz: dt.tzinfo) -> dt.datetime:
    """ISO 8601 (``2024-05-01T05:30:00``, ``...Z``, ``...+02:00``); no zone means ``tz``."""
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise TimeError(
            f"--start-time: {text!r} is not an ISO 8601 time (e.g. 2024-05-01T05:30:00Z)"
        ) from None
    return _aware(value, tz)


def check_time_format(fmt: str | None) -> None:
    """Raise TimeError unless ``fmt`` names a date and a time of day."""
    if fmt is None:
        return
    codes = set(re.findall(r"%.", fmt))
    unknown = codes - set(_FORMAT_CODES)
    if unknown:
        raise TimeError(f"replay.time_format: unsupported code {sorted(unknown)[0]} in {fmt!r} "
                        f"(use {' '.join(sorted(_FORMAT_CODES))})")
    if not ({"%Y", "%y"} & codes and ({"%m", "%d"} <= codes or "%j" in codes) and "%H" in codes):
        raise TimeError(f"replay.time_format: {fmt!r} needs a year, a date and an hour")


def _aware(value: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    return value.astimezone(dt.UTC)


def time_from_name(name: str, *, time_format: str | None, tz: dt.tzinfo) -> dt.datetime | None:
    """The start time written in a file name (the stem), or None."""
    stem = PurePosixPath(name).name
    if time_format:
        pattern = "".join(
            _FORMAT_CODES.get(part, re.escape(part)) for part in re.split(r"(%.)", time_format)
        )
        for m in re.finditer(pattern, stem):
            try:
                return _aware(dt.datetime.strptime(m.group(0), time_format), tz)
            except ValueError:
                continue
    for m in _NAME_STAMP.finditer(stem):
        try:
            return _aware(dt.datetime.strptime(m.group(1) + m.group(2), "%Y%m%d%H%M%S"), tz)
        except ValueError:  # 8 + 6 digits that are no date (a serial number, 20241399_...)
            continue
    return None


def riff_texts(path: str | Path) -> dict[str, str]:
    """Metadata of a RIFF/WAVE file: {'guan': GUANO text, 'ICMT': comment, ...}; {} if none.

    Walks the chunk list without reading the audio (``data`` is skipped by seeking).
    """
    texts: dict[str, str] = {}
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return texts
            size = f.seek(0, 2)
            pos = 12
            while pos + 8 <= size:
                f.seek(pos)
                chunk_id, length = struct.unpack("<4sI", f.read(8))
                body = pos + 8
                if chunk_id == b"guan" and length < _RIFF_SCAN_BYTES:
                    f.seek(body)
                    texts["guan"] = f.read(length).decode("utf-8", "replace").rstrip("\0")
                elif chunk_id == b"LIST" and length < _RIFF_SCAN_BYTES:
                    f.seek(body)
                    texts.update(_info_texts(f.read(length)))
                pos = body + length + (length & 1)
    except OSError:
        return {}
    return texts


def _info_texts(body: bytes) -> dict[str, str]:
    """Sub-chunks of a ``LIST`` chunk of type ``INFO``."""
    texts: dict[str, str] = {}
    if body[:4] != b"INFO":
        return texts
    pos = 4
    while pos + 8 <= len(body):
        sub_id, length = struct.unpack("<4sI", body[pos : pos + 8])
        text = body[pos + 8 : pos + 8 + length]
        texts[sub_id.decode("latin-1")] = text.decode("utf-8", "replace").rstrip("\0")
        pos += 8 + length + (length & 1)
    return texts


def time_from_guano(text: str, tz: dt.tzinfo) -> dt.datetime | None:
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Timestamp" and value.strip():
            try:
                return _aware(dt.datetime.fromisoformat(value.strip()), tz)
            except ValueError:
                return None
    return None


def time_from_audiomoth(comment: str) -> dt.datetime | None:
    m = _AUDIOMOTH.search(comment)
    if not m:
        return None
    hh, mm, ss, day, month, year, sign, oh, om = m.groups()
    try:
        local = dt.datetime(int(year), int(month), int(day), int(hh), int(mm), int(ss))
    except ValueError:
        return None
    offset = dt.timedelta(hours=int(oh or 0), minutes=int(om or 0))
    return _aware(local, dt.timezone(-offset if sign == "-" else offset))


def recording_start(
    path: str | Path, *, name: str, time_format: str | None, tz: dt.tzinfo
) -> RecordingTime:
    """The start of one file from its metadata or its name (``name``: its source path)."""
    texts = riff_texts(path)
    if "guan" in texts and (start := time_from_guano(texts["guan"], tz)):
        return RecordingTime(start, GUANO)
    if "ICMT" in texts and (start := time_from_audiomoth(texts["ICMT"])):
        return RecordingTime(start, AUDIOMOTH)
    if start := time_from_name(name, time_format=time_format, tz=tz):
        return RecordingTime(start, FILENAME)
    return RecordingTime(None, None)


def site_of(source: str, *, pattern: str | None, folder: str | None) -> str | None:
    """``pattern``'s first group (or the whole match) in ``source``; without a pattern, the
    file's folder relative to the replay root (``folder``; None for a file given by itself)."""
    if pattern is None:
        return folder or None
    m = re.search(pattern, source)
    if not m:
        return None
    return m.group(1) if m.groups() else m.group(0)


@dataclass(frozen=True)
class Recording:
    """One file of a replay: where it is, what it is called in the outputs, when and where it
    was recorded."""

    path: str
    """The file as given or found (for reading it)."""
    source: str
    """Its name in every output: the path relative to the replay root, or absolute."""
    site: str | None
    start: dt.datetime | None
    """Start of its first sample (UTC), None when unknown."""
    time_source: str | None
    """One of TIME_SOURCES, None when unknown."""
    duration_s: float
    """Length from the file's header, seconds (0 when the header cannot be read)."""

    @property
    def start_epoch(self) -> float | None:
        return None if self.start is None else self.start.timestamp()
