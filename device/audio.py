"""Stage: file sources' decoding. Reading audio files, for training and replay alike.

Files are read with soundfile (libsndfile: wav, flac, ogg, opus, mp3), downmixed to mono by
averaging channels, and resampled with :class:`device.resample.Resampler`, a streaming
polyphase filter: a whole file and the same file fed block by block give the same samples, so
training, replay and the live microphone path all see identical audio.

Contract: :func:`stream_audio` yields mono float32 blocks (full scale 1.0) at the requested
rate in Hz, memory bounded whatever the file's length; every unusable file is an
:class:`AudioError` whose message is one line naming the file. Functions are thread-safe
(no shared state).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import soundfile

from device.resample import Resampler, downmix_weights

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3")
"""File name endings that replay and training pick up from folders (case-insensitive)."""
MAX_ABS_SAMPLE = 1000.0
"""A float sample beyond this magnitude (60 dB over full scale) is not audio: such a file is
refused rather than analysed into silently wrong scores."""

_PCM16_SCALE = np.float32(1 / 32768)
"""Full scale of 16-bit samples, as libsndfile scales them to float."""

log = logging.getLogger(__name__)


class AudioError(Exception):
    """An audio file that cannot be used; the message is one line that names the file."""


@contextlib.contextmanager
def decoder_quiet(path: Path):
    """Keep libmpg123's notes ("Illegal Audio-MPEG-Header ...") off the console: it writes
    them to fd 2 itself. The log writes to its own duplicate of fd 2 (device.logsetup), so
    nothing of ours is lost meanwhile. Only for MP3, the one chatty decoder."""
    if path.suffix.lower() != ".mp3":
        yield
        return
    try:
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        yield
        return
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _open(path: Path) -> soundfile.SoundFile:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise AudioError(f"{path}: no such file") from None
    except OSError as exc:
        raise AudioError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(mode):
        raise AudioError(f"{path}: is a folder, expected an audio file")
    if not stat.S_ISREG(mode):
        # Opening a FIFO blocks until a writer comes: it would hang the whole replay.
        raise AudioError(f"{path}: not a regular file (a FIFO, device or socket); skipped")
    try:
        with decoder_quiet(path):
            audio = soundfile.SoundFile(str(path))
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError(f"{path}: not readable as audio ({_reason(exc)})") from None
    if audio.frames == 0:
        audio.close()
        raise AudioError(f"{path}: contains no audio samples")
    # libsndfile quietly shortens a WAV whose data chunk is cut off; its log says so.
    cut = re.search(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", audio.extra_info, re.M)
    if cut:
        audio.close()
        raise AudioError(
            f"{path}: truncated, header promises {cut[1]} bytes of audio, file holds {cut[2]}"
        )
    return audio


def _reason(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def audio_info(path: str | Path) -> tuple[int, int, float]:
    """(sample rate Hz, channels, duration s) of a file, without decoding it."""
    path = Path(path)
    with _open(path) as audio:
        return audio.samplerate, audio.channels, audio.frames / audio.samplerate


def stream_audio(
    path: str | Path, sample_rate: int, *, block_s: float = 10.0
) -> Iterator[np.ndarray]:
    """Yield mono float32 blocks of a file at ``sample_rate``, about ``block_s`` seconds each.

    Memory stays bounded whatever the file's length. Raises :class:`AudioError` (one line,
    naming the file) for a missing, empty, unreadable or truncated file.
    """
    path = Path(path)
    with _open(path) as audio:
        expected = audio.frames
        resampler = Resampler(audio.samplerate, sample_rate)
        # Reads are bounded however high the rate or many the channels (2 MiB of float32);
        # what they give is gathered into blocks of about block_s at the output rate.
        block_frames = max(1, min(int(block_s * audio.samplerate), (1 << 19) // audio.channels))
        capped = block_frames < int(block_s * audio.samplerate)
        target = max(1, int(block_s * sample_rate)) if capped else 1
        # 16-bit WAV (what most recorders write) is read as int16 and scaled here: libsndfile's
        # own float conversion costs ~0.15 CPU-s per audio hour more, for the same float32
        # values (x / 32768 is exact in float32, as libsndfile computes it).
        pcm16 = audio.format == "WAV" and audio.subtype == "PCM_16"
        pending: list[np.ndarray] = []
        pending_n = 0
        read = 0
        try:
            # read() rather than blocks(): blocks() pads a short file with zeros up to the
            # length its header promises, hiding a truncated mp3.
            while True:
                with decoder_quiet(path):
                    block = audio.read(
                        block_frames, dtype="int16" if pcm16 else "float32", always_2d=True
                    )
                if not len(block):
                    break
                if pcm16:
                    block = block * _PCM16_SCALE
                _check_samples(block, path, read)
                read += len(block)
                mono = (
                    block @ downmix_weights(block.shape[1]) if block.shape[1] > 1 else block[:, 0]
                )
                out = resampler.process(mono)
                if len(out):
                    pending.append(out)
                    pending_n += len(out)
                if pending_n >= target:
                    yield pending[0] if len(pending) == 1 else np.concatenate(pending)
                    pending, pending_n = [], 0
        except (soundfile.LibsndfileError, RuntimeError) as exc:
            raise AudioError(
                f"{path}: decoding failed after {read} samples ({_reason(exc)})"
            ) from None
        if pending:
            yield pending[0] if len(pending) == 1 else np.concatenate(pending)
        # libsndfile reports the length from the header; a file cut short reads fewer frames.
        # MP3 and Ogg lengths come from an estimate in the header: allow 1 % slack there.
        slack = expected // 100 if audio.format in ("MP3", "OGG", "MPEG") else 0
        if read < expected - slack:
            raise AudioError(
                f"{path}: truncated, header promises {expected} samples, file holds {read}"
            )
        tail = resampler.flush()
        if len(tail):
            yield tail


def _check_samples(block: np.ndarray, path: Path, offset: int) -> None:
    """AudioError for NaN, infinite or absurdly large samples (a float file written wrong)."""
    lo, hi = float(block.min()), float(block.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise AudioError(
            f"{path}: non-finite samples (NaN or infinity) after sample {offset}; not audio"
        )
    if max(-lo, hi) > MAX_ABS_SAMPLE:
        raise AudioError(
            f"{path}: samples of magnitude {max(-lo, hi):.3g} after sample "
            f"{offset} (full scale is 1): not audio"
        )


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """The whole file as mono float32 at ``sample_rate`` Hz (see :func:`stream_audio`)."""
    blocks = list(stream_audio(path, sample_rate))
    return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)


def find_audio_files(paths: Sequence[str | Path]) -> list[Path]:
    """Files named directly, plus audio files found recursively in folders, sorted per folder."""
    found: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            for p in sorted(p for p in entry.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS):
                if p.is_file():
                    found.append(p)
                elif not p.is_dir():
                    # A FIFO would block the run when opened; a socket or device is no file.
                    log.warning("%s: not a regular file (a FIFO, device or socket); skipped", p)
        else:
            found.append(entry)
    return found
