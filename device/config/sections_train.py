"""The sections of config.yaml that python -m train reads (its ``features`` section is in
sections_features.py: the device computes the same front end).

Each is a frozen dataclass whose fields carry default, bounds, choices and description
(device.config.fields); the validator and the doc generators read them, and the classes that
use them (``AugmentParams``) are these sections: no other place states a default.
"""

from dataclasses import dataclass

from device.config.fields import Section, section, setting
from device.config.sections_features import FeatureSection


@dataclass(frozen=True, eq=False, repr=False)
class DatasetSection(Section):
    """The ``train.datasets[]`` section."""

    path: str = setting(
        "",
        minimum=1,
        doc="Folder of clips or recordings, relative to --data-root",
    )
    kind: str = setting(
        "clips",
        choices=("clips", "selections", "background"),
        doc="clips: one subfolder per class; selections: long recordings with Raven or Audacity tables; background: noise recordings for mixing and as negatives",
    )
    classes: dict[str, str] = setting(
        {},
        doc="Class folder or annotation label -> target label, or 'negative'",
    )
    tables: str | None = setting(
        None,
        doc="Folder of selection tables (default: beside the recordings)",
    )
    label_column: str = setting(
        "Species",
        doc="Column of a Raven table holding the annotation label",
    )
    ignore: list[str] = setting(
        [],
        doc="Annotation labels left out of both positives and negatives",
    )
    group_pattern: str | None = setting(
        None,
        doc="Regex on the file path whose first group names the recording group (site); default: one group per file",
    )
    split: str | None = setting(
        None,
        choices=("train", "validation", "test"),
        doc="Put every file of this dataset in one split (train, validation or test) instead of splitting it by group; e.g. extra negatives used for training only",
    )
    negatives_per_minute: float | None = setting(
        None,
        minimum=0,
        maximum=600,
        doc="Negative windows per minute of unannotated audio for this dataset; null = train.negatives_per_minute",
    )


@dataclass(frozen=True, eq=False, repr=False)
class SplitSection(Section):
    """The ``train.split`` section."""

    validation: float = setting(
        0.2,
        minimum=0.0,
        maximum=0.9,
        doc="Share of groups for validation",
    )
    test: float = setting(
        0.2,
        minimum=0.0,
        maximum=0.9,
        doc="Share of groups for the test split",
    )
    test_groups: list[str] = setting(
        [],
        doc="Groups forced into the test split (e.g. a site); when set, they replace the test share",
    )
    validation_groups: list[str] = setting(
        [],
        doc="Groups forced into the validation split; when set, they replace the validation share",
    )
    validation_by: str = setting(
        "group",
        choices=("group", "file"),
        doc="'group': validation takes whole groups; 'file': it takes files of the training groups (when there are too few groups, e.g. two sites)",
    )
    leave_one_group_out: bool = setting(
        False,
        doc="Cross-validate: each group held out once; reports each fold",
    )
    folds: int = setting(
        0,
        minimum=0,
        maximum=20,
        doc="Group k-fold cross-validation for data with many groups (e.g. 50 recordings): k >= 2 holds out a k-th of the groups in turn, the main run's test split being the first fold; reports each fold, the spread and the pooled out-of-fold figures. 0: off",
    )
    final: bool = setting(
        False,
        doc="After cross-validation (leave_one_group_out or folds), train the model to deploy on every recording: as many epochs as the folds kept (their median), thresholds calibrated on their pooled held-out scores; the folds' figures are its estimate of accuracy (--final)",
    )


@dataclass(frozen=True, eq=False, repr=False)
class AugmentSection(Section):
    """The ``train.augment`` section."""

    background_p: float = setting(
        0.5,
        minimum=0,
        maximum=1,
        doc="Probability of mixing a background into a training window",
    )
    snr_db: list[float] = setting(
        [0.0, 20.0],
        doc="Range of the mixing signal-to-noise ratio, dB",
    )
    gain_db: list[float] = setting(
        [-12.0, 12.0],
        doc="Range of random gain, dB",
    )
    time_shift_s: float = setting(
        0.5,
        minimum=0,
        maximum=10,
        doc="Largest random shift of a crop, seconds",
    )
    time_masks: int = setting(
        2,
        minimum=0,
        maximum=10,
        doc="SpecAugment time masks per window",
    )
    time_mask_frames: int = setting(
        10,
        minimum=0,
        maximum=200,
        doc="Longest time mask, frames",
    )
    freq_masks: int = setting(
        2,
        minimum=0,
        maximum=10,
        doc="SpecAugment frequency masks per window",
    )
    freq_mask_bands: int = setting(
        4,
        minimum=0,
        maximum=64,
        doc="Widest frequency mask, mel bands",
    )
    freq_shift_bands: int = setting(
        0,
        minimum=0,
        maximum=16,
        doc="Largest random shift along the mel axis, bands (pitch differences between individuals); 0 = off",
    )
    mixup_alpha: float = setting(
        0.0,
        minimum=0,
        maximum=2,
        doc="Mixup Beta(alpha, alpha); 0 = off",
    )
    eq_db: float = setting(
        0.0,
        minimum=0,
        maximum=24,
        doc="Random colouring of the call before the background is mixed in: largest tilt over the mel bands, dB (plus a ripple of half that); 0 = off",
    )
    reverb_p: float = setting(
        0.0,
        minimum=0,
        maximum=1,
        doc="Probability of a synthetic reverberant tail (before mixing)",
    )
    reverb_rt60_s: list[float] = setting(
        [0.2, 1.2],
        doc="Range of the reverberation's 60 dB decay time in the lowest band, seconds (the highest band's is half)",
    )
    reverb_drr_db: list[float] = setting(
        [0.0, 15.0],
        doc="Range of the direct-to-reverberant energy ratio, dB",
    )


@dataclass(frozen=True, eq=False, repr=False)
class ModelSection(Section):
    """The ``train.model`` section."""

    filters: list[int] = setting(
        [16, 24, 32, 48],
        doc="Channels of the convolution blocks",
    )
    dropout: float = setting(
        0.2,
        minimum=0,
        maximum=0.9,
        doc="Dropout before the output layer",
    )
    normalisation: str = setting(
        "band_mean",
        choices=("band_mean", "none"),
        doc="Inside the model: 'band_mean' subtracts each mel band's mean over the window (gain and steady background), 'none' feeds raw dB",
    )
    pooling: str = setting(
        "time",
        choices=("max", "avg", "time"),
        doc="'time': max over frequency only, a score per time step (0.32 s with the default features) besides the window score (a second int8 output); events come from the steps stitched across hops (model.json extent rule 'frames'), so calls a second apart are separate events at their own times. 'max' or 'avg': global pooling over time and frequency, one window score; events from the windows that fire (extent rule 'trim' or 'centre')",
    )
    stem_stride: int = setting(
        2,
        minimum=1,
        maximum=2,
        doc="Stride of the first convolution in time and frequency: 2 costs about a third of 1 on the device (measured in BENCHMARKS.md) for the same accuracy on the example data",
    )
    ensemble: int = setting(
        1,
        minimum=1,
        maximum=8,
        doc="Models trained at different seeds (the first at train.seed) and shipped as one, their logits averaged: on a site none of them heard, the average ranks calls better than one model; training and the device's inference cost that many times as much (the front end is shared)",
    )


@dataclass(frozen=True, eq=False, repr=False)
class CalibrationSection(Section):
    """The ``train.calibration`` section."""

    method: str = setting(
        "precision",
        choices=("precision", "f1", "false_alarms"),
        doc="Threshold rule: 'precision' (reach target_precision on validation), 'f1' (the best F1 on validation: about as many false alarms as misses, so counts of calls stay unbiased; within one standard error of the best, the cut nearest 0.5) or 'false_alarms' (at most false_alarms_per_hour of background)",
    )
    target_precision: float = setting(
        0.9,
        minimum=0.01,
        maximum=1.0,
        doc="Precision the threshold must reach on validation",
    )
    false_alarms_per_hour: float = setting(
        2.0,
        minimum=0,
        maximum=3600,
        doc="False alarms per hour of background audio allowed",
    )


@dataclass(frozen=True, eq=False, repr=False)
class TrainSection(Section):
    """The ``train`` section."""

    name: str = setting(
        "run",
        minimum=1,
        doc="Run name: the run folder is runs/<name>/ unless --out is given",
    )
    data_root: str = setting(
        ".",
        minimum=1,
        doc="Folder the dataset paths are relative to (--data-root overrides)",
    )
    cache_dir: str | None = setting(
        "runs/.cache",
        doc="Folder for cached log-mel features of whole recordings, reused across runs (null = no cache)",
    )
    labels: list[str] = setting(
        ["call"],
        doc="Target labels, one sigmoid output each",
    )
    datasets: list[DatasetSection] = setting(
        [],
        doc="Datasets read by python -m train (see examples/)",
    )
    window_s: float = setting(
        3.0,
        minimum=0.25,
        maximum=30,
        doc="Model window, seconds of audio per input",
    )
    features: FeatureSection = section(FeatureSection)
    split: SplitSection = section(SplitSection)
    negatives_per_minute: float = setting(
        10.0,
        minimum=0,
        maximum=600,
        doc="Background windows sampled per minute of unannotated recording",
    )
    negatives_beside_calls: bool = setting(
        True,
        doc="Also train on the windows just before and just after each annotated call of a long recording as negatives (when nothing else is annotated there; jittered by the time shift, taking in at most a quarter of the call): the model learns where a call ends, as tables on a fixed chunk grid draw it",
    )
    max_positive_ratio: float = setting(
        0.333,
        minimum=0.01,
        maximum=1.0,
        doc="Positives per negative after oversampling, at most",
    )
    windows_per_epoch: int = setting(
        1000,
        minimum=1,
        maximum=1000000,
        doc="Training windows per epoch, at least: small data sets are sampled again (fresh crops) until there are this many",
    )
    augment: AugmentSection = section(AugmentSection)
    model: ModelSection = section(ModelSection)
    epochs: int = setting(
        40,
        minimum=1,
        maximum=1000,
        doc="Most epochs (early stopping usually ends sooner)",
    )
    patience: int = setting(
        8,
        minimum=1,
        maximum=200,
        doc="Epochs without validation improvement before stopping",
    )
    batch_size: int = setting(
        64,
        minimum=1,
        maximum=4096,
        doc="Windows per batch",
    )
    learning_rate: float = setting(
        0.002,
        minimum=1e-06,
        maximum=1.0,
        doc="Adam learning rate",
    )
    weight_averaging: str = setting(
        "none",
        choices=("none", "ema"),
        doc="'ema': validate, keep and save an exponential moving average of the weights over the training steps instead of the weights as trained (BatchNorm's statistics estimated again for the average on 512 training windows each epoch); 'none': the weights as trained",
    )
    ema_momentum: float = setting(
        0.99,
        minimum=0.5,
        maximum=0.9999,
        doc="With weight_averaging 'ema': after every step, average = momentum * average + (1 - momentum) * weights; it spans about 1 / (1 - momentum) steps (0.99: 100 steps, 4 epochs of 1500 windows at batch 64)",
    )
    seed: int = setting(
        1234,
        minimum=0,
        doc="Seed for splits, crops, augmentation and weights",
    )
    calibration: CalibrationSection = section(CalibrationSection)
    calibration_windows: int = setting(
        400,
        minimum=10,
        maximum=100000,
        doc="Training windows saved for int8 quantization",
    )
    hard_negatives: list[str] = setting(
        [],
        doc="Events JSONL files or Raven tables of false positives to train on as negatives",
    )
    hard_negatives_audio: list[str] = setting(
        [],
        doc="Folders where the audio of hard_negatives is looked for (e.g. the replay root: replay sources are relative to it)",
    )
