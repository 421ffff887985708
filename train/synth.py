"""A small deterministic demo data set that needs nothing outside the repository.

    python -m train.synth --out demo/data [--replay-out demo/replay] [--seed 7]

The "call" is bird-like: a two-note frequency-modulated whistle (a rising then a falling
sweep) with two harmonics, its pitch, note lengths and level drawn at random each time. The
backgrounds are coloured noise (pink to brown), rain (random clicks through a resonance),
insect-like buzzing (amplitude-modulated high tones) and distractor whistles of another
"species" (a single steady or slowly gliding note). Each site has its own background mix and
level, so a split by site is a fair test. Layout, matching ``train.datasets`` in config.yaml::

    <out>/clips/call/site1_call_000.wav ...   3 s clips with a call
    <out>/clips/noise/site1_noise_000.wav ... 3 s clips without
    <out>/soundscapes/site1_soundscape_0.wav + site1_soundscape_0.Table.1.selections.txt
    <out>/background/rain_0.wav, insects_0.wav, ...
    <replay-out>/demo_soundscape.wav (+ its table): a recording of an unseen site for replay
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import scipy.signal
import soundfile

SAMPLE_RATE = 16000
RAVEN_HEADER = "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\tSpecies"


def call(rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """One two-note whistle with harmonics, peak amplitude 1, about 0.5-0.8 s long."""
    f0 = rng.uniform(1800, 2600)
    parts = []
    for start_f, end_f, length in ((f0, f0 * rng.uniform(1.25, 1.4), rng.uniform(0.18, 0.28)),
                                   (f0 * rng.uniform(1.45, 1.6), f0 * rng.uniform(1.0, 1.15), rng.uniform(0.22, 0.34))):
        n = int(length * sr)
        freq = np.linspace(start_f, end_f, n)
        phase = 2 * np.pi * np.cumsum(freq) / sr
        note = sum(a * np.sin(k * phase) for k, a in ((1, 1.0), (2, 0.35), (3, 0.15)))
        parts += [note * np.hanning(n) ** 0.5, np.zeros(int(rng.uniform(0.05, 0.1) * sr))]
    out = np.concatenate(parts[:-1])
    return (out / np.abs(out).max()).astype(np.float32)


def distractor(rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Another 'species': one steady or gliding note, 0.3-1.2 s, no two-note pattern."""
    n = int(rng.uniform(0.3, 1.2) * sr)
    f = rng.uniform(1200, 5000)
    freq = np.linspace(f, f * rng.uniform(0.85, 1.15), n)
    note = np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.hanning(n)
    return note.astype(np.float32)


def coloured_noise(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Noise with power falling as 1/f^exponent (1 pink, 2 brown), unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spectrum), dtype=float)
    f[0] = 1
    noise = np.fft.irfft(spectrum / f ** (exponent / 2), n)
    return (noise / noise.std()).astype(np.float32)


def rain(n: int, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Drops: random clicks rung through a band-pass resonance, over a soft hiss; unit RMS."""
    clicks = np.zeros(n)
    count = int(n / sr * rng.uniform(80, 300))
    clicks[rng.integers(0, n, count)] = rng.standard_normal(count) * rng.uniform(0.3, 1.0, count)
    b, a = scipy.signal.butter(2, [rng.uniform(1500, 3000), rng.uniform(5000, 7500)], "bandpass", fs=sr)
    out = scipy.signal.lfilter(b, a, clicks) + 0.05 * rng.standard_normal(n)
    return (out / out.std()).astype(np.float32)


def insects(n: int, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Buzzing: one to three high tones, amplitude-modulated at 20-60 Hz, with slow swells; unit RMS."""
    t = np.arange(n) / sr
    out = np.zeros(n)
    for _ in range(rng.integers(1, 4)):
        tone = np.sin(2 * np.pi * rng.uniform(3500, 7500) * t)
        buzz = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(20, 60) * t) ** 2
        swell = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.05, 0.3) * t + rng.uniform(0, 6.3))
        out += tone * buzz * swell
    return (out / out.std()).astype(np.float32)


STYLES = {"noise": (1.0, 0.0, 0.0), "rain": (0.3, 1.0, 0.0), "insects": (0.5, 0.0, 1.0)}
"""Weights of (coloured noise, rain, insects) of the pure background styles."""


def site_style(rng: np.random.Generator) -> tuple[float, float, float]:
    """A site's own background mix: weights of coloured noise, rain and insects."""
    return (float(rng.uniform(0.3, 1.0)), float(rng.uniform(0, 1.0) * (rng.random() < 0.7)),
            float(rng.uniform(0, 1.0) * (rng.random() < 0.7)))


def background(n: int, rng: np.random.Generator, style: tuple[float, float, float]) -> np.ndarray:
    """Background of weights (coloured noise, rain, insects), RMS between about 0.005 and 0.05."""
    noise_w, rain_w, insect_w = style
    out = noise_w * coloured_noise(n, rng.uniform(1.0, 2.0), rng)
    if rain_w:
        out = out + rain_w * rain(n, rng)
    if insect_w:
        out = out + insect_w * insects(n, rng)
    return (10 ** rng.uniform(-2.3, -1.3) * out / out.std()).astype(np.float32)


def _place(audio: np.ndarray, sound: np.ndarray, start: int, snr_db: float) -> None:
    """Add ``sound`` at ``start`` at ``snr_db`` over the background's RMS, in place."""
    level = np.sqrt(np.mean(audio ** 2)) * 10 ** (snr_db / 20) * np.sqrt(2)
    end = min(len(audio), start + len(sound))
    audio[start:end] += level * sound[:end - start]


def scene(seconds: float, rng: np.random.Generator, style: tuple[float, float, float], *, calls: int, distractors: int,
          snr_db: tuple[float, float] = (3.0, 18.0)) -> tuple[np.ndarray, list[tuple[float, float, str]]]:
    """Background with calls and distractors placed at random; returns audio and (start, end, label)."""
    n = int(seconds * SAMPLE_RATE)
    audio = background(n, rng, style)
    selections = []
    for _ in range(distractors):
        sound = distractor(rng)
        _place(audio, sound, int(rng.integers(0, max(1, n - len(sound)))), rng.uniform(0, 15))
    taken: list[tuple[float, float]] = []
    for _ in range(calls):
        sound = call(rng)
        for _ in range(50):  # keep calls apart, so each annotation is one call
            start = int(rng.integers(0, max(1, n - len(sound))))
            begin, end = start / SAMPLE_RATE, (start + len(sound)) / SAMPLE_RATE
            if all(end + 1.0 < b or begin > e + 1.0 for b, e in taken):
                break
        else:
            continue
        snr = rng.uniform(*snr_db)
        _place(audio, sound, start, snr)
        taken.append((begin, end))
        selections.append((begin, end, "call" if snr >= snr_db[0] + 1.5 else "uncertain"))
    return np.clip(audio, -1, 1), sorted(selections)


def write_table(path: Path, selections: list[tuple[float, float, str]]) -> None:
    lines = [RAVEN_HEADER] + [f"{i}\tSpectrogram 1\t1\t{b:.3f}\t{e:.3f}\t1500\t6000\t{label}"
                              for i, (b, e, label) in enumerate(selections, 1)]
    path.write_text("\n".join(lines) + "\n")


def make_demo_data(out: Path, *, replay_out: Path | None = None, seed: int = 7, sites: int = 5,
                   clips_per_class: int = 16, clip_s: float = 3.0, soundscapes_per_site: int = 1,
                   soundscape_s: float = 60.0, backgrounds: int = 6, background_s: float = 10.0,
                   replay_s: float = 60.0) -> Path:
    """Write the demo data set under ``out`` (and a replay soundscape under ``replay_out``)."""
    rng = np.random.default_rng(seed)
    out = Path(out)
    for sub in ("clips/call", "clips/noise", "soundscapes", "background"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    n_clip = int(clip_s * SAMPLE_RATE)
    for site in (f"site{k}" for k in range(1, sites + 1)):
        style = site_style(rng)
        for i in range(clips_per_class):
            audio = background(n_clip, rng, style)
            sound = call(rng)
            _place(audio, sound, int(rng.integers(0, n_clip - len(sound))), rng.uniform(3, 18))
            soundfile.write(out / f"clips/call/{site}_call_{i:03d}.wav", np.clip(audio, -1, 1), SAMPLE_RATE, "PCM_16")
            audio = background(n_clip, rng, style)
            if rng.random() < 0.5:
                sound = distractor(rng)
                _place(audio, sound, int(rng.integers(0, n_clip - len(sound))), rng.uniform(0, 15))
            soundfile.write(out / f"clips/noise/{site}_noise_{i:03d}.wav", np.clip(audio, -1, 1), SAMPLE_RATE, "PCM_16")
        for k in range(soundscapes_per_site):
            audio, selections = scene(soundscape_s, rng, style, calls=int(soundscape_s / 6), distractors=int(soundscape_s / 8))
            soundfile.write(out / f"soundscapes/{site}_soundscape_{k}.wav", audio, SAMPLE_RATE, "PCM_16")
            write_table(out / f"soundscapes/{site}_soundscape_{k}.Table.1.selections.txt", selections)
    for k in range(backgrounds):
        kind = ("rain", "insects", "noise")[k % 3]
        audio = background(int(background_s * SAMPLE_RATE), rng, STYLES[kind])
        soundfile.write(out / f"background/{kind}_{k}.wav", audio, SAMPLE_RATE, "PCM_16")
    if replay_out is not None and replay_s > 0:
        replay_out = Path(replay_out)
        replay_out.mkdir(parents=True, exist_ok=True)
        audio, selections = scene(replay_s, rng, site_style(rng), calls=int(replay_s / 6), distractors=int(replay_s / 8))
        soundfile.write(replay_out / "demo_soundscape.wav", audio, SAMPLE_RATE, "PCM_16")
        write_table(replay_out / "demo_soundscape.Table.1.selections.txt", selections)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.synth", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="demo/data", metavar="DIR", help="data set folder (default demo/data)")
    parser.add_argument("--replay-out", metavar="DIR", help="folder for the replay soundscape "
                        "(default: 'replay' beside --out, e.g. demo/replay)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    replay = Path(args.replay_out) if args.replay_out else out.parent / "replay"
    make_demo_data(out, replay_out=replay, seed=args.seed)
    print(f"demo data in {out} (clips/, soundscapes/, background/); replay soundscape in {replay}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
