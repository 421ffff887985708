"""Audio loading and resampling: formats, rates, downmix, streaming resampler, bad files."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import soundfile

from device.audio import AudioError, audio_info, find_audio_files, load_audio, stream_audio
from device.resample import Resampler, downmix_weights, lowpass_taps

SR = 16000
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_MP3 = SHARED_DATA / "capuchin" / "recordings" / "recording_00.mp3"


def sine(freq_hz: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


# --- formats and rates ----------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg", "mp3"])
@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_any_format_and_rate_loads_at_16k_keeping_the_tone(tmp_path, ext, rate):
    path = tmp_path / f"tone_{rate}.{ext}"
    soundfile.write(path, sine(1000.0, 2.5, rate), rate)  # mp3 and ogg encoded by libsndfile
    audio = load_audio(path, SR)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == math.ceil(round(2.5 * rate) * SR / rate) == 40000
    assert abs(peak_hz(audio, SR) - 1000.0) <= 1.0
    # Level kept: a 0.5-amplitude sine has an RMS of 0.354 (lossy codecs shift it slightly).
    assert rms(audio[2000:-2000]) == pytest.approx(0.5 / math.sqrt(2), rel=0.02)


def test_16k_input_passes_through_unchanged(tmp_path):
    x = np.random.default_rng(0).uniform(-0.5, 0.5, SR).astype(np.float32)
    soundfile.write(tmp_path / "a.wav", x, SR, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(tmp_path / "a.wav", SR), x)


@pytest.mark.parametrize("channels", [1, 2])
def test_16bit_wav_gives_libsndfiles_own_float_samples(tmp_path, channels):
    """16-bit WAV is read as int16 and scaled in stream_audio: the samples, the downmix and the
    blocks are bit for bit those of libsndfile's float reading (the straightforward way),
    full scale included."""
    rng = np.random.default_rng(2)
    x = np.clip(rng.standard_normal((3 * 48000, channels)), -1, 1).astype(np.float32)
    x[:5], x[5:10] = -1.0, 32767 / 32768
    path = tmp_path / "pcm16.wav"
    soundfile.write(path, x, 48000, subtype="PCM_16")
    for rate in (48000, SR):
        with soundfile.SoundFile(path) as audio:
            floats = audio.read(dtype="float32", always_2d=True)
        mono = floats @ downmix_weights(channels) if channels > 1 else floats[:, 0]
        resampler = Resampler(48000, rate)
        expected = np.concatenate([resampler.process(mono), resampler.flush()])
        blocks = list(stream_audio(path, rate, block_s=0.7))
        assert all(b.dtype == np.float32 for b in blocks)
        assert np.concatenate(blocks).tobytes() == expected.tobytes()


def test_stereo_is_downmixed_by_averaging(tmp_path):
    left = sine(1000.0, 1.0, 44100)
    for name, right in (("opposite.wav", -left), ("one_side.wav", 0 * left)):
        soundfile.write(tmp_path / name, np.stack([left, right], axis=1), 44100, subtype="FLOAT")
    assert rms(load_audio(tmp_path / "opposite.wav", SR)) < 1e-6  # not just the first channel
    one_side = load_audio(tmp_path / "one_side.wav", SR)
    assert rms(one_side[1000:-1000]) == pytest.approx(0.25 / math.sqrt(2), rel=0.01)
    assert audio_info(tmp_path / "one_side.wav") == (44100, 2, 1.0)


def test_stream_audio_yields_bounded_blocks_equal_to_the_whole(tmp_path):
    x = np.random.default_rng(1).uniform(-0.5, 0.5, 20 * 48000).astype(np.float32)
    soundfile.write(tmp_path / "long.flac", x, 48000)
    blocks = list(stream_audio(tmp_path / "long.flac", SR, block_s=1.0))
    assert len(blocks) >= 20
    assert max(len(b) for b in blocks) <= SR + 64  # one second plus the filter's tail
    np.testing.assert_array_equal(np.concatenate(blocks), load_audio(tmp_path / "long.flac", SR))


@pytest.mark.realdata
def test_real_stereo_mp3_loads_with_its_full_length():
    if not REAL_MP3.is_file():
        pytest.skip(f"{REAL_MP3} absent")
    rate, channels, seconds = audio_info(REAL_MP3)
    assert (rate, channels) == (48000, 2)
    audio = load_audio(REAL_MP3, SR)
    assert abs(len(audio) / SR - seconds) < 0.01
    assert 0.001 < rms(audio) < 0.5


# --- the streaming resampler ----------------------------------------------------------------


def resample_in_chunks(x: np.ndarray, rate_in: int, sizes) -> np.ndarray:
    resampler = Resampler(rate_in, SR)
    out, start, i = [], 0, 0
    while start < len(x):
        size = sizes[i % len(sizes)]
        out.append(resampler.process(x[start : start + size]))
        start, i = start + size, i + 1
    out.append(resampler.flush())
    return np.concatenate(out)


@pytest.mark.parametrize("rate_in", [8000, 11025, 22050, 24000, 44100, 48000, 96000])
def test_resampler_in_random_chunks_equals_whole(rate_in):
    rng = np.random.default_rng(rate_in)
    x = rng.standard_normal(3 * rate_in).astype(np.float32) * 0.1
    whole = resample_in_chunks(x, rate_in, [len(x)])
    assert len(whole) == math.ceil(len(x) * SR / rate_in)
    for sizes in ([int(s) for s in rng.integers(0, 5000, 100)], [rate_in // 20]):
        np.testing.assert_allclose(resample_in_chunks(x, rate_in, sizes), whole, rtol=0, atol=1e-6)
    # Sample by sample on a short prefix (slow per sample, so short).
    head = x[: rate_in // 10]
    np.testing.assert_allclose(
        resample_in_chunks(head, rate_in, [1, 2, 3]),
        resample_in_chunks(head, rate_in, [len(head)]),
        rtol=0,
        atol=1e-6,
    )


@pytest.mark.parametrize("rate_in", [8000, 22050, 24000, 44100, 48000])
def test_resampler_agrees_with_scipy_resample_poly(rate_in):
    """Same Kaiser filter as scipy's resample_poly at these rates: same samples, float32 aside.

    (At rates where 10 * max(up, down) is not a multiple of ``down``, e.g. 11025 Hz, the
    resampler's filter is a little longer than scipy's, by design, so they differ slightly.)
    """
    x = np.random.default_rng(7).standard_normal(2 * rate_in).astype(np.float32) * 0.1
    ours = resample_in_chunks(x, rate_in, [977])
    reference = scipy.signal.resample_poly(x.astype(np.float64), SR, rate_in)
    assert len(ours) == len(reference)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-5)


def test_resampler_rejects_bad_rates():
    with pytest.raises(ValueError, match="must be positive"):
        Resampler(0, SR)


# --- bad files: one line naming the file ------------------------------------------------------


def assert_one_line_naming(exc: pytest.ExceptionInfo, path: Path, *words: str) -> None:
    message = str(exc.value)
    assert "\n" not in message and str(path) in message, message
    for word in words:
        assert word in message, message


def write_noise(path: Path, seconds: float = 5.0, rate: int = SR) -> Path:
    x = np.random.default_rng(3).uniform(-0.3, 0.3, int(seconds * rate)).astype(np.float32)
    soundfile.write(path, x, rate)
    return path


def cut_in_half(path: Path, to: Path) -> Path:
    data = path.read_bytes()
    to.write_bytes(data[: len(data) // 2])
    return to


def make_bad_file(kind: str, folder: Path) -> Path:
    """Create (or not) the bad input named ``kind`` in ``folder``; returns its path."""
    if kind == "empty file":
        (path := folder / "empty.wav").write_bytes(b"")
    elif kind == "text file":
        (path := folder / "notes.wav").write_text("not audio\n" * 100)
    elif kind == "missing file":
        path = folder / "missing.wav"
    elif kind == "folder":
        (path := folder / "folder.wav").mkdir()
    elif kind == "no samples":
        soundfile.write(path := folder / "zero.wav", np.zeros(0, np.float32), SR)
    else:  # "truncated wav" etc.: a good file cut in half
        ext = kind.split()[-1]
        path = cut_in_half(write_noise(folder / f"full.{ext}"), folder / f"cut.{ext}")
    return path


BAD_FILE_REASONS = {
    "empty file": "not readable as audio",
    "text file": "not readable as audio",
    "missing file": "no such file",
    "folder": "is a folder",
    "no samples": "no audio samples",
    "truncated wav": "truncated",
    "truncated mp3": "truncated",
    "truncated flac": "decoding failed",
}


@pytest.mark.parametrize("kind", list(BAD_FILE_REASONS))
def test_bad_files_give_one_line_naming_the_file(tmp_path, kind):
    path = make_bad_file(kind, tmp_path)
    with pytest.raises(AudioError) as exc:
        load_audio(path, SR)
    assert_one_line_naming(exc, path, BAD_FILE_REASONS[kind])


@pytest.mark.realdata
def test_truncated_real_mp3_is_refused(tmp_path):
    if not REAL_MP3.is_file():
        pytest.skip(f"{REAL_MP3} absent")
    cut = tmp_path / "cut.mp3"
    with open(REAL_MP3, "rb") as f:
        cut.write_bytes(f.read(600_000))  # about 37 s of a 180 s recording
    with pytest.raises(AudioError) as exc:
        load_audio(cut, SR)
    assert_one_line_naming(exc, cut, "truncated")


def test_ffmpeg_mp3_with_other_encoder_loads(tmp_path):
    """An mp3 from another encoder (ffmpeg/LAME), as users bring them, reads like libsndfile's."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not installed")
    wav = tmp_path / "tone.wav"
    soundfile.write(wav, sine(2000.0, 3.0, 44100), 44100)
    mp3 = tmp_path / "tone.mp3"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(wav), str(mp3)], check=True)
    audio = load_audio(mp3, SR)
    assert abs(len(audio) / SR - 3.0) < 0.06  # encoder padding aside
    assert abs(peak_hz(audio, SR) - 2000.0) <= 1.0


def test_find_audio_files_recurses_folders_and_keeps_named_files(tmp_path):
    (tmp_path / "b").mkdir()
    for name in ("b/2.WAV", "b/1.flac", "a.mp3", "notes.txt", "b/c.ogg"):
        (tmp_path / name).write_bytes(b"")
    named = tmp_path / "elsewhere.xyz"
    found = find_audio_files([tmp_path / "b", named, tmp_path / "a.mp3"])
    assert found == [
        tmp_path / "b/1.flac",
        tmp_path / "b/2.WAV",
        tmp_path / "b/c.ogg",
        named,
        tmp_path / "a.mp3",
    ]


@pytest.mark.parametrize(
    ("n_taps", "cutoff"), [(61, 1 / 3), (41, 1 / 2), (8821, 1 / 441), (121, 1 / 6)]
)
def test_lowpass_taps_are_scipys_firwin(n_taps, cutoff):
    ours = lowpass_taps(n_taps, cutoff)
    reference = scipy.signal.firwin(n_taps, cutoff, window=("kaiser", 5.0))
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-7)


def test_resampling_never_imports_scipy(tmp_path):
    """The device resamples with NumPy alone (scipy.signal would cost tens of MiB of RSS)."""
    path = tmp_path / "stereo48k.wav"
    t = np.arange(48000) / 48000
    soundfile.write(path, np.stack([np.sin(2 * np.pi * 440 * t)] * 2, axis=1) * 0.1, 48000)
    code = (
        "import sys\n"
        "from device.audio import load_audio\n"
        f"x = load_audio({str(path)!r}, 16000)\n"
        "assert len(x) == 16000, len(x)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'scipy'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
