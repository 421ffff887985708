"""Site adaptation from unlabelled audio, as functions: run folder + a site's recordings -> a new run.

:func:`adapt_run` is what ``python -m train.adapt`` calls (tests call it directly):

1. read the run folder (``model.keras``, ``run.json``, ``config.resolved.yaml``, ``split.csv``)
   and its datasets (training and validation recordings; hard negatives are not re-added);
2. tile the new site's recordings into windows every ``hop_s`` and score each in three views
   (:mod:`train.adapt_site`);
3. choose pseudo-labels: confident calls and the site's own background, by quantiles, agreement,
   a cap per recording and class balance (:mod:`train.adapt_select`);
4. fine-tune from the trained weights at a low learning rate for a few epochs, every epoch the
   run's own freshly drawn and augmented training windows plus the pseudo-labelled ones (a
   share ``pseudo_share`` of the epoch), so the model learns the site without forgetting;
5. check the adapted model on the run's validation split: worse than the original by more
   than ``tolerance`` ROC-AUC or PR-AUC on any label, and it is refused (:class:`AdaptRefused`,
   nothing written); optionally a second round (rescore, reselect, fine-tune again; a round
   that fails the check is dropped, the previous one kept);
6. recalibrate the thresholds and event rule on the validation split as training does, and
   write a complete run folder for ``python -m convert --int8`` whose run.json carries an
   ``adaptation`` record (from which run, which audio, how many pseudo-labels, the check).
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from device.audio import find_audio_files
from device.config import ConfigError, load_config
from device.runrecord import RunRecord, RunRecordError
from train.adapt_distill import TeacherRunError, check_teacher_runs, load_teacher_runs, site_targets
from train.adapt_select import SelectionParams, agreement, select_pseudo_labels
from train.adapt_site import read_site
from train.adapt_teacher import Teacher, TeacherError, on_student_scale, teacher_view
from train.adapt_tune import ensemble_members, fine_tune, load_model, validation_check
from train.windows import WindowSet

Log = Callable[[str], None]
RUN_FILES = (
    "model.keras",
    "run.json",
    "config.resolved.yaml",
    "split.csv",
    "test_windows.npz",
    "calibration.npy",
)


class AdaptError(Exception):
    """Bad input (a missing file, no audio): one line for the user, exit code 2."""


class AdaptRefused(Exception):
    """The safeguard refused the adapted model (worse on the validation split): exit code 1."""


@dataclass(frozen=True)
class AdaptSettings:
    """How far to adapt (see :func:`adapt_run`)."""

    selection: SelectionParams = field(default_factory=SelectionParams)
    rounds: int = 1
    """Rounds of self-training: 2 rescores the site with the adapted model and fine-tunes again."""
    epochs: int = 5
    """Fine-tuning epochs per round."""
    learning_rate_scale: float = 0.1
    """Fine-tuning learning rate as a fraction of the run's ``train.learning_rate`` (constant)."""
    pseudo_share: float = 0.3
    """Share of each fine-tuning epoch's windows that are pseudo-labelled (the rest: the run's own)."""
    tolerance: float = 0.01
    """Largest drop of validation ROC-AUC or PR-AUC (any label) an adapted model may show."""

    def __post_init__(self) -> None:
        if not 1 <= self.rounds <= 3 or not 1 <= self.epochs <= 100:
            raise ValueError("rounds must be 1-3 and epochs 1-100")
        if (
            not 0 < self.learning_rate_scale <= 1
            or not 0 < self.pseudo_share < 1
            or not 0 <= self.tolerance < 1
        ):
            raise ValueError(
                "learning_rate_scale must be in (0, 1], pseudo_share in (0, 1), tolerance in [0, 1)"
            )


def resolve_run(path: Path) -> Path:
    """The run folder of ``path`` (a run folder, or a bundle's model.tflite / model.json inside one)."""
    folder = path.parent if path.is_file() else path
    if not folder.is_dir():
        raise AdaptError(
            f"{path}: no such run folder; pass the folder 'python -m train' wrote (runs/<name>)"
        )
    if not (folder / "model.keras").is_file():
        if (folder / "model.json").is_file() or path.suffix == ".tflite":
            raise AdaptError(
                f"{path}: a bundle without its run folder (no model.keras beside it); adaptation "
                "fine-tunes the trained Keras model: pass the run folder 'python -m train' wrote"
            )
        raise AdaptError(
            f"{folder / 'model.keras'}: missing; pass the run folder 'python -m train' wrote"
        )
    for name in RUN_FILES:
        if not (folder / name).is_file():
            raise AdaptError(
                f"{folder / name}: missing; adaptation needs a complete run folder (re-run python -m train)"
            )
    return folder


def adapt_run(
    *,
    run: Path,
    unlabelled: list[Path],
    out: Path | None = None,
    settings: AdaptSettings | None = None,
    data_root: Path | None = None,
    teacher: Teacher | None = None,
    distill_from: list[Path] | None = None,
    command: str = "",
    log: Log = print,
) -> dict:
    """Adapt the model of ``run`` to the site recorded in ``unlabelled`` (files or folders) and
    write the adapted run folder into ``out`` (default ``<run>-adapted``); returns its adaptation
    record. Raises :class:`AdaptError` on bad input, :class:`AdaptRefused` when the adapted model
    is worse on the run's validation split (nothing is written then).

    ``distill_from``: runs of the same recipe at other seeds; instead of self-training, the model
    learns their mean score of every site window (:mod:`train.adapt_distill`; one round)."""
    import keras
    import tensorflow as tf

    from train.adapt_write import recalibrate, test_metrics, write_adapted_run
    from train.core import prepare_data
    from train.fit import predict_probabilities
    from train.frontend import context_frames
    from train.windows import WindowSampler, evaluation_windows

    settings = settings or AdaptSettings()
    if distill_from and (teacher is not None or settings.rounds > 1):
        raise AdaptError(
            "--distill-from takes the teachers' scores of every window in one pass: it goes with "
            "neither --teacher nor --rounds"
        )
    run = resolve_run(Path(run))
    out = Path(out) if out is not None else run.with_name(run.name + "-adapted")
    if out.resolve() == run.resolve():
        raise AdaptError(
            f"{out}: is the run's own folder; give a new --out folder (the run is never modified)"
        )
    try:
        config = load_config(run / "config.resolved.yaml")
    except ConfigError as exc:
        raise AdaptError(str(exc)) from None
    cfg = config.train
    files = find_audio_files(list(unlabelled))
    if not files:
        raise AdaptError(f"{', '.join(map(str, unlabelled))}: no audio files to adapt on")
    data_root = Path(data_root or cfg.data_root)
    if not data_root.is_dir():
        raise AdaptError(
            f"{data_root}: no such folder (the datasets' root the run trained from; pass --data-root)"
        )
    labels, window_s, hop_s = list(cfg.labels), float(cfg.window_s), float(config.detection.hop_s)
    try:
        run_info = RunRecord.load(run)
    except RunRecordError as exc:
        raise AdaptError(str(exc)) from None
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else None
    try:  # before anything loads: a wrong teacher run is one line
        teacher_runs = check_teacher_runs([Path(p) for p in distill_from or []], run_info)
    except TeacherRunError as exc:
        raise AdaptError(str(exc)) from None

    prepared = prepare_data(train_cfg=cfg, data_root=data_root, cache_dir=cache_dir, log=log)
    with open(run / "split.csv", newline="") as f:
        split = {row["recording"]: row["split"] for row in csv.DictReader(f)}
    parts = {
        name: [r for r in prepared.inventory.recordings if split.get(r.name) == name]
        for name in ("train", "validation")
    }
    if not parts["train"]:
        raise AdaptError(
            f"{run / 'split.csv'}: none of its training recordings is under {data_root} "
            "(pass the --data-root the run trained from)"
        )
    dataset_rate = {i: ds.negatives_per_minute for i, ds in enumerate(cfg.datasets)}
    sampler = WindowSampler(
        recordings=parts["train"],
        features=prepared.features,
        labels=labels,
        params=prepared.params,
        window_s=window_s,
        shift_s=cfg.augment.time_shift_s,
        negatives_per_minute=[
            cfg.negatives_per_minute if (rate := dataset_rate.get(r.dataset)) is None else rate
            for r in parts["train"]
        ],
        max_positive_ratio=cfg.max_positive_ratio,
        min_windows=cfg.windows_per_epoch,
        negatives_beside_calls=cfg.negatives_beside_calls,
        context_frames=context_frames(prepared.params),
    )
    if parts["validation"]:
        validation = evaluation_windows(
            recordings=parts["validation"],
            features={r.name: prepared.inputs_of(r.name) for r in parts["validation"]},
            labels=labels,
            params=prepared.params,
            window_s=window_s,
            clip_hop_s=hop_s,
        )
        checked_on = f"the run's validation split ({len(validation)} windows)"
    else:  # a final model: nothing was held out; its verification windows show what it forgot
        with np.load(run / "test_windows.npz") as data:
            n = len(data["y"])
            validation = WindowSet(
                data["x"], data["y"], data["source"], data["start_s"], np.array(["clips"] * n)
            )
        checked_on = f"the run's verification windows (test_windows.npz, {n} windows it trained on)"

    if not any(0 < validation.y[:, i].sum() < len(validation) for i in range(len(labels))):
        raise AdaptError(
            f"{checked_on}: no label with both calls and non-calls there: nothing to check an "
            "adapted model against"
        )
    site = read_site(
        files, params=prepared.params, window_s=window_s, hop_s=hop_s, cache_dir=cache_dir
    )
    for line in site.skipped:
        log(f"warning: skipped: {line}")
    if not len(site):
        raise AdaptError(f"{', '.join(map(str, unlabelled))}: no readable audio to adapt on")
    log(
        f"unlabelled site: {len(site.files)} recordings, {site.hours:.2f} h, {len(site)} windows every {hop_s} s"
    )

    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(cfg.seed)
    model, original = load_model(run / "model.keras"), load_model(run / "model.keras")
    members = ensemble_members(model)
    if members:  # one model: its averaged scores choose the pseudo-labels and face the check
        log(f"an ensemble of {len(members)}: "
            + ("the teachers' targets" if distill_from else "pseudo-labels from its averaged scores")
            + ", members fine-tuned jointly through their average")

    def predict(x: np.ndarray) -> np.ndarray:
        return predict_probabilities(model, x)

    before = predict_probabilities(original, validation.x)
    thresholds = {label: float(run_info.thresholds[label]) for label in labels}
    distilled = None
    if teacher_runs:  # the teachers' mean score of every site window: the targets
        distilled = site_targets(load_teacher_runs(teacher_runs), site)
        log(f"distilling from {len(teacher_runs)} runs: their mean score of {len(site)} site windows, "
            + ", ".join(f"{label} mean {distilled[0][:, i].mean():.3f}" for i, label in enumerate(labels)))
    teacher_scores = None
    if teacher is not None:  # one more view, fixed across rounds (train.adapt_teacher)
        try:
            teacher_scores = teacher_view(teacher, site, labels)
        except TeacherError as exc:
            raise AdaptError(str(exc)) from None
        log(f"teacher {getattr(teacher, '__name__', teacher)}: scored {len(site)} windows")
    rounds: list[dict] = []
    chosen_rows: list[list] = []  # pseudo_labels.csv: what each round took, to listen to
    kept = None
    learning_rate = cfg.learning_rate * settings.learning_rate_scale
    for round_ in range(1, settings.rounds + 1):
        if distilled is not None:
            rows, (targets, frame_targets) = np.arange(len(site)), distilled
            chosen = {
                "distilled_windows": len(site),
                "teachers": [str(p) for p in teacher_runs],
                "mean_target": {label: round(float(targets[:, i].mean()), 6) for i, label in enumerate(labels)},
            }
            for row in rows:  # every window, its target in both score columns
                target = " ".join(f"{v:.4f}" for v in targets[row])
                chosen_rows.append([round_, str(site.sources[row]), f"{site.start_s[row]:.3f}", "", target, target])
        else:
            views = site.score_views(predict)
            if teacher_scores is not None:  # the teacher's ranking on this round's student scale
                views = np.concatenate([views, on_student_scale(teacher_scores, views)[None]])
            low, high = agreement(views)
            pseudo = select_pseudo_labels(
                low=low,
                high=high,
                sources=site.sources,
                labels=labels,
                thresholds=thresholds,
                params=settings.selection,
                rng=np.random.default_rng([cfg.seed, 23, round_]),
            )
            chosen = pseudo.to_dict(site.sources)
            for k, row in enumerate(pseudo.indices):
                called = [label for i, label in enumerate(labels) if pseudo.y[k, i]]
                chosen_rows.append(
                    [
                        round_,
                        str(site.sources[row]),
                        f"{site.start_s[row]:.3f}",
                        " ".join(called),
                        " ".join(f"{v:.4f}" for v in low[row]),
                        " ".join(f"{v:.4f}" for v in high[row]),
                    ]
                )
            log(
                f"round {round_}: pseudo-labels {chosen['positives']} calls (from {chosen['recordings_with_positives']} "
                f"recordings) and {chosen['negatives']} background windows; cuts "
                + ", ".join(
                    f"{k} >= {c['positive']:.3f} / <= {c['negative']:.3f}"
                    for k, c in pseudo.cuts.items()
                )
            )
            if not len(pseudo.positives):
                if round_ == 1:
                    raise AdaptRefused(
                        "no window of the unlabelled audio scored as a confident call (above the run's "
                        "threshold in every view): nothing to adapt on; recalibrate the thresholds on "
                        "this site instead (python -m train.recalibrate)"
                    )
                log(f"round {round_}: no confident calls; keeping round {round_ - 1}")
                break
            rows, targets, frame_targets = pseudo.indices, pseudo.y, None
        fine_tune(
            model,
            sampler=sampler,
            site=site,
            rows=rows,
            targets=targets,
            frame_targets=frame_targets,
            config=config,
            epochs=settings.epochs,
            learning_rate=learning_rate,
            pseudo_share=settings.pseudo_share,
            round_=round_,
            log=log,
        )
        check = validation_check(
            y=validation.y,
            before=before,
            after=predict_probabilities(model, validation.x),
            labels=labels,
            tolerance=settings.tolerance,
        )
        rounds.append({"round": round_, "pseudo_labels": chosen, "check": check})
        log(
            f"round {round_}: on {checked_on}: "
            + ", ".join(
                f"{k} ROC-AUC {v['roc_auc_before']:.3f} -> {v['roc_auc_after']:.3f}, PR-AUC {v['pr_auc_before']:.3f} -> "
                f"{v['pr_auc_after']:.3f}"
                for k, v in check["labels"].items()
            )
        )
        if not check["passed"]:
            if kept is None:
                raise AdaptRefused(
                    f"adapted model refused: worse on {checked_on} ({'; '.join(check['worse'])}; "
                    f"tolerance {settings.tolerance}); nothing written. Try fewer --epochs, a lower "
                    "--learning-rate-scale or more unlabelled audio"
                )
            model.set_weights(kept)
            log(f"round {round_} refused ({'; '.join(check['worse'])}); keeping round {round_ - 1}")
            rounds[-1]["kept"] = False
            break
        rounds[-1]["kept"] = True
        kept = model.get_weights()

    new_thresholds, events, calibration = recalibrate(
        config=config,
        model=model,
        prepared=prepared,
        validation=validation,
        recordings=parts["validation"],
        run_info=run_info,
        log=log,
    )
    tested = test_metrics(
        run=run,
        prepared=prepared,
        labels=labels,
        thresholds=new_thresholds,
        scores={
            "before": lambda x: predict_probabilities(original, x),
            "after": lambda x: predict_probabilities(model, x),
        },
    )
    record = {
        "from_run": str(run.resolve()),
        "from_model_sha256": hashlib.sha256((run / "model.keras").read_bytes()).hexdigest(),
        "unlabelled": {
            "paths": [str(p) for p in unlabelled],
            "files": [str(p) for p in site.files],
            "skipped": site.skipped,
            "hours": round(site.hours, 4),
            "windows": len(site),
            "hop_s": hop_s,
        },
        "pseudo_labels": {
            "positives": sum(r["pseudo_labels"].get("positives", 0) for r in rounds if r["kept"]),
            "negatives": sum(r["pseudo_labels"].get("negatives", 0) for r in rounds if r["kept"]),
        },
        "rounds": rounds,
        "ensemble": {"members": len(members), "fine_tuned": "joint"} if members else None,
        "teacher": None if teacher is None else getattr(teacher, "__name__", str(teacher)),
        "distilled_from": [str(Path(p).resolve()) for p in distill_from] if distill_from else None,
        "checked_on": checked_on,
        "settings": {
            **asdict(settings),
            "learning_rate": learning_rate,
        },
        "thresholds_before": thresholds,
        "test_split": tested["before_after"],
        "created_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command,
    }
    write_adapted_run(
        pseudo_rows=chosen_rows,
        run=run,
        out=out,
        model=model,
        run_info=run_info,
        record=record,
        thresholds=new_thresholds,
        events=events,
        calibration=calibration,
        metrics=tested["metrics"],
        site=site,
        windows=int(cfg.calibration_windows),
    )
    log(
        f"adapted run: {out} ("
        + (f"an ensemble of {len(members)}; " if members else "")
        + (f"distilled from {len(distill_from)} runs" if distill_from else
           f"{record['pseudo_labels']['positives']} pseudo-positives, "
           f"{record['pseudo_labels']['negatives']} pseudo-negatives")
        + f"; next: python -m convert --int8 {out})"
    )
    return record
