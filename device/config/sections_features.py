"""The ``train.features`` section of config.yaml.

A frozen dataclass whose fields carry default, bounds, choices and description
(device.config.fields); ``device.features.FeatureParams`` is built on it (the
front end the model was trained with, shipped in model.json), so no other place states a
feature default or bound.
"""

from dataclasses import dataclass

from device.config.fields import Section, setting


@dataclass(frozen=True, eq=False, repr=False)
class FeatureSection(Section):
    """The ``train.features`` section."""

    sample_rate: int = setting(
        16000,
        minimum=1000,
        maximum=192000,
        doc="Sample rate the model hears, Hz (audio is resampled to it)",
    )
    """Audio rate the features are computed at, Hz. Input at other rates is resampled first."""
    n_fft: int = setting(
        512,
        minimum=16,
        maximum=16384,
        doc="FFT and frame length, samples (power of two)",
    )
    """FFT length and frame length, samples."""
    win_length: int = setting(
        400,
        minimum=1,
        maximum=16384,
        doc="Hann window length, samples (<= n_fft)",
    )
    """Hann window length, samples (<= n_fft; centred in the frame and zero-padded)."""
    hop_length: int = setting(
        320,
        minimum=1,
        maximum=16384,
        doc="Samples between spectrogram frames",
    )
    """Samples between consecutive frames (320 at 16 kHz = 20 ms, 50 frames per second)."""
    n_mels: int = setting(
        40,
        minimum=1,
        maximum=512,
        doc="Mel bands",
    )
    """Number of mel bands (Slaney mel scale, Slaney area normalisation, as librosa's default)."""
    fmin: float = setting(
        100.0,
        minimum=0,
        doc="Lowest mel band edge, Hz",
    )
    """Lowest mel band edge, Hz."""
    fmax: float = setting(
        8000.0,
        minimum=1,
        doc="Highest mel band edge, Hz (<= sample_rate / 2)",
    )
    """Highest mel band edge, Hz (<= sample_rate / 2)."""
    log_floor: float = setting(
        1e-10,
        minimum=1e-20,
        maximum=0.5,
        doc="Power floor before the log (dB floor = 10 log10 of it)",
    )
    """Power below which the spectrogram is clipped before the log (amin of librosa's power_to_db)."""
    front_end: str = setting(
        "logmel",
        choices=("logmel", "pcen"),
        doc="Model input: 'logmel' (dB of the mel power; the model subtracts each band's mean) or 'pcen' (per-channel energy normalisation: each band divided by its own recent level, streaming state on the device)",
    )
    """'logmel' (dB of the mel power) or 'pcen' (per-channel energy normalisation of it).
    Bundles written before this field existed are log-mel."""
    pcen_time_constant_s: float = setting(
        0.4,
        minimum=0.01,
        maximum=60,
        doc="PCEN: how long each band's background level is averaged over, seconds",
    )
    """PCEN: time constant of each band's smoother, seconds (librosa's default)."""
    pcen_gain: float = setting(
        0.98,
        minimum=0,
        maximum=1,
        doc="PCEN: exponent of the background level (1 = fully gain-normalised)",
    )
    """PCEN: exponent alpha of the smoother in the denominator (1 = fully gain-normalised)."""
    pcen_bias: float = setting(
        2.0,
        minimum=1e-06,
        maximum=100,
        doc="PCEN: bias added before the root compression",
    )
    """PCEN: bias delta added before the root compression."""
    pcen_power: float = setting(
        0.5,
        minimum=0.01,
        maximum=1,
        doc="PCEN: root compression exponent",
    )
    """PCEN: root compression exponent r."""
    pcen_eps: float = setting(
        1e-10,
        minimum=1e-20,
        maximum=1,
        doc="PCEN: floor of the background level, mel power (bands quieter than this are not amplified)",
    )
    """PCEN: added to the smoother, mel power units: bands quieter than this are not amplified."""
