"""python -m train, as functions: datasets -> split -> windows -> CNN -> calibrated run folder.

:func:`train_run` is what the command line calls; tests call it (and the stage functions)
directly. A run folder holds (the contract ``python -m convert`` reads)::

    model.keras        Keras 3 model, input (None, frames, n_mels, 1) log-mel dB, output logits
    run.json           labels, features, window_s, thresholds, recommended_hop_s, events, calibration, metrics
    calibration.npy    float32 (N, frames, n_mels, 1) training windows for int8 quantization
    test_windows.npz   x, y, source, start_s of the test split
    split.csv  metrics.json  config.resolved.yaml  report.md  plots/*.png  errors.csv
    folds/<fold>/      one such run folder per fold of cross-validation, when asked

With ``split.final`` (:func:`train_final`), the run folder is the final model's, trained on every
recording; its ``test_windows.npz`` holds the folds' pooled held-out windows (see train.final).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from device.config import Config, TrainSection
from device.detector import detector_params
from device.fileio import write_atomic
from device.names import WORD_CHARS, safe_name
from device.runrecord import RunRecord
from train import report
from train.cache import recording_features
from train.datasets import DatasetError, Recording
from train.decision import calibrate_events, calibrate_thresholds
from train.evaluate import (
    clip_level,
    count_correlation,
    event_metrics,
    metrics_by_label,
    timeline_scores,
)
from train.final import FinalPlan, HeldOut, final_plan
from train.fit import History, fit, member_seeds, predict_both, predict_probabilities
from train.frontend import context_frames, window_inputs
from train.hard_negatives import apply_hard_negatives
from train.prepare import Log, Prepared, prepare_data
from train.split import (
    check_disjoint,
    fold_groups,
    kfold_test_groups,
    split_recordings,
    write_split_csv,
)
from train.windows import WindowSampler, evaluation_windows

MAIN_FOLD = "fold1"
"""K-fold cross-validation's first fold: the main run itself (same test split, same model)."""


def split_for(cfg: TrainSection, recordings: list[Recording], *, test_groups: list[str] | None = None) -> dict[str, str]:
    """The configured split (or a fold's, when ``test_groups`` is given)."""
    s = cfg.split
    validation_groups = [g for g in s.validation_groups if g not in (test_groups or [])]
    return split_recordings(recordings, labels=list(cfg.labels), validation=s.validation, test=s.test,
                            test_groups=list(s.test_groups if test_groups is None else test_groups),
                            validation_groups=validation_groups, validation_by=s.validation_by, seed=cfg.seed)


def _timelines(model, recordings: list[Recording], prepared: Prepared, window_s: float,
               hop_s: float) -> dict[str, tuple]:
    return {r.name: timeline_scores(lambda x: predict_both(model, x), prepared.inputs_of(r.name),
                                    params=prepared.params, window_s=window_s, hop_s=hop_s,
                                    duration_s=r.duration_s)
            for r in recordings}


def train_split(*, config: Config, prepared: Prepared, split: dict[str, str], out: Path,
                hard_negatives: list[str], title: str, command: str = "", log: Log = print,
                collect: list[HeldOut] | None = None, final: FinalPlan | None = None) -> dict:
    """Train, calibrate, evaluate and write one complete run folder for ``split``; returns metrics.

    ``collect``: append this run's test split and its scores (a fold of cross-validation).
    ``final``: the final model: ``split`` puts everything in training; it trains ``final.epochs``
    epochs, takes ``final.thresholds``, reports the pooled out-of-fold figures as its accuracy and
    keeps the pooled held-out windows as ``test_windows.npz`` (for convert's int8 check)."""
    import keras

    from train.model import build_model, describe, ensemble, frame_layout, step_frames

    cfg = config.train
    labels, params, window_s = list(cfg.labels), prepared.params, cfg.window_s
    hop_s = config.detection.hop_s
    out.mkdir(parents=True, exist_ok=True)
    inventory = dataclasses.replace(prepared.inventory, recordings=list(prepared.inventory.recordings),
                                    warnings=list(prepared.inventory.warnings))
    split = dict(split)
    n_hard = apply_hard_negatives(hard_negatives, inventory=inventory, split=split, data_root=prepared.data_root,
                                  audio_dirs=cfg.hard_negatives_audio, log=log)
    for r in inventory.recordings:
        if r.name not in prepared.features:
            prepared.features[r.name] = recording_features(r.path, params, None)
    recordings = inventory.recordings
    write_split_csv(out / "split.csv", recordings, split)
    check_disjoint(recordings, split)
    parts = {name: [r for r in recordings if split[r.name] == name] for name in ("train", "validation", "test")}
    for name, members in parts.items():
        log(f"split {name}: {len(members)} recordings, {len({r.group for r in members})} groups, "
            f"{sum(len(r.positives()) for r in members)} positive annotations")
    if not parts["test"] and final is None:
        raise DatasetError("train.split: the test split is empty; set split.test or split.test_groups")
    dataset_rate = {i: ds.negatives_per_minute for i, ds in enumerate(cfg.datasets)
                    if ds.negatives_per_minute is not None}
    rates = [dataset_rate.get(r.dataset, cfg.negatives_per_minute) for r in parts["train"]]
    sampler = WindowSampler(recordings=parts["train"], features=prepared.features, labels=labels, params=params,
                            window_s=window_s, shift_s=cfg.augment.time_shift_s, negatives_per_minute=rates,
                            max_positive_ratio=cfg.max_positive_ratio, min_windows=cfg.windows_per_epoch,
                            negatives_beside_calls=cfg.negatives_beside_calls,
                            context_frames=context_frames(params))
    windows = {name: evaluation_windows(recordings=parts[name],
                                        features={r.name: prepared.inputs_of(r.name) for r in parts[name]},
                                        labels=labels,
                                        params=params, window_s=window_s, clip_hop_s=hop_s)
               for name in ("validation", "test")}
    log(f"windows per epoch: {sampler.positives_per_epoch} positive, {sampler.negatives_per_epoch} negative; "
        f"validation {len(windows['validation'])}, test {len(windows['test'])}")
    steps_of = step_frames(frames=params.window_frames(window_s), n_mels=params.n_mels,
                           filters=list(cfg.model.filters), stem_stride=cfg.model.stem_stride)

    def trained(seed: int) -> tuple[keras.Model, History]:
        keras.utils.set_random_seed(seed)  # initial weights too: the same config gives the same run
        model = build_model(frames=params.window_frames(window_s), n_mels=params.n_mels, n_labels=len(labels),
                            filters=list(cfg.model.filters), dropout=cfg.model.dropout,
                            normalisation=cfg.model.normalisation, pooling=cfg.model.pooling,
                            stem_stride=cfg.model.stem_stride)
        history = fit(model, sampler=sampler, validation=windows["validation"],
                      augment_params=cfg.augment, epochs=cfg.epochs,
                      patience=cfg.patience, batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
                      seed=seed, to_inputs=lambda x: window_inputs(x, params),
                      stop_after=final.epochs if final else None, step_frames=steps_of,
                      weight_averaging=cfg.weight_averaging, ema_momentum=cfg.ema_momentum, log=log)
        return model, history

    began = time.monotonic()
    trained_members: list[tuple[keras.Model, History]] = []
    for i, seed in enumerate(member_seeds(cfg.seed, cfg.model.ensemble), start=1):
        if cfg.model.ensemble > 1:
            log(f"ensemble member {i}/{cfg.model.ensemble} (seed {seed})")
        trained_members.append(trained(seed))
    model, history = trained_members[0]  # the first member's training curves stand for the rest
    if len(trained_members) > 1:
        model = ensemble([m for m, _ in trained_members])
    train_seconds = time.monotonic() - began
    log(describe(model))
    layout = frame_layout(model, params=params, step_frames=steps_of, hop_s=hop_s)
    model.save(out / "model.keras")

    calibration_x, calibration_y = sampler.epoch(np.random.default_rng([cfg.seed, 0]))
    calibration_x = window_inputs(calibration_x, params)
    validation = windows["validation"]
    if final is not None:  # the folds' held-out recordings stand in for validation
        thresholds, val_timelines, val_recordings = final.thresholds, final.timelines, final.recordings
    elif len(validation) == 0:  # nothing held out: calibrate on unaugmented training windows
        inventory.warn("validation split empty: thresholds calibrated on training windows (optimistic)")
        val_x, val_y, val_recordings = calibration_x[..., None], calibration_y, parts["train"]
    else:
        val_x, val_y, val_recordings = validation.x, validation.y, parts["validation"]
    if final is None:
        val_timelines = _timelines(model, [r for r in val_recordings if cfg.calibration.method == "false_alarms"
                                           or r.kind == "selections"], prepared, window_s, hop_s)
        detection = detector_params(labels=tuple(labels), bundle_thresholds=dict.fromkeys(labels, 0.5),
                                    detection=config.detection)
        thresholds = calibrate_thresholds(cfg=cfg, labels=labels, y=val_y,
                                          scores=predict_probabilities(model, val_x), timelines=val_timelines,
                                          recordings=val_recordings, window_s=window_s, hop_s=hop_s,
                                          detection=detection)
    threshold_values = {label: t.value for label, t in thresholds.items()}
    for label, t in thresholds.items():
        log(f"threshold {label}: {t.value:.4f} ({t.method}, {t.achieved}){' - ' + t.note if t.note else ''}")
    detection, events_rule = calibrate_events(detection=config.detection, labels=labels, thresholds=threshold_values,
                                              timelines=val_timelines, recordings=val_recordings,
                                              window_s=window_s, hop_s=hop_s, log=log, layout=layout)

    test = windows["test"]
    test_scores = predict_probabilities(model, test.x)
    final_info = None
    if final is not None:
        # The estimate is cross-validated: the folds' held-out windows, each scored by the fold
        # model that never trained on it. The final model has trained on all of them; its scores
        # there only check the int8 conversion.
        test, test_scores = final.held_out, final.held_out_scores
        seen = metrics_by_label(test.y, predict_probabilities(model, test.x), labels, threshold_values)
        final_info = {"epochs": final.epochs, "fold_best_epochs": final.fold_epochs, "folds": final.folds,
                      "epochs_rule": "median of the folds' kept epochs (every ensemble member's), of the same cosine schedule",
                      "thresholds_from": f"pooled out-of-fold scores of {final.folds} folds "
                                         f"({len(test)} held-out windows), calibration.method "
                                         f"{cfg.calibration.method}",
                      "verification_windows": "test_windows.npz: the folds' pooled held-out windows; the "
                                              "final model trained on them, so its figures there are no "
                                              "estimate of accuracy, only the int8-vs-float check",
                      "metrics_on_training_data": seen}
        log(f"final model: {final.epochs} epochs (folds kept {final.fold_epochs}); on its verification "
            "windows (seen in training): " + ", ".join(f"{k} ROC-AUC {v['roc_auc']:.3f}" for k, v in seen.items()))
    metrics: dict[str, Any] = {"float": metrics_by_label(test.y, test_scores, labels, threshold_values)}
    names, clip_y, clip_scores = clip_level(test, test_scores)
    if names:
        metrics["clip"] = metrics_by_label(clip_y, clip_scores, labels, threshold_values)
    if len(trained_members) > 1 and final is None and len(test):
        metrics["members"] = [_member_metrics(m, test, labels, threshold_values) for m, _ in trained_members]
    long_mask = test.kind == "selections"
    if long_mask.any():
        metrics["chunk"] = metrics_by_label(test.y[long_mask], test_scores[long_mask], labels, threshold_values)
        metrics["count"] = count_correlation(test, test_scores, labels, threshold_values)
    timeline_recordings = [r for r in parts["test"] if r.kind != "clips"]
    if collect is not None:
        test_timelines = _timelines(model, [r for r in parts["test"] if cfg.calibration.method == "false_alarms"
                                            or r.kind == "selections"], prepared, window_s, hop_s)
        collect.append(HeldOut(test, test_scores, test_timelines, parts["test"],
                               [h.best_epoch for _, h in trained_members]))
    if timeline_recordings:
        metrics["events"] = event_metrics(_timelines(model, timeline_recordings, prepared, window_s, hop_s),
                                          timeline_recordings, labels, detection, window_s, hop_s, layout)

    keep = np.random.default_rng([cfg.seed, 1]).permutation(len(calibration_x))[:cfg.calibration_windows]
    np.save(out / "calibration.npy", calibration_x[keep][..., None].astype(np.float32))
    np.savez(out / "test_windows.npz", x=test.x.astype(np.float32), y=test.y.astype(np.float32),
             source=test.source.astype(str), start_s=test.start_s.astype(float))
    evaluation = {"clip_hop_s": hop_s, "clip_score": "max over the clip's windows",
                  "chunks": "back-to-back window_s chunks of long recordings"}
    if final_info:
        evaluation["metrics"] = "cross-validated: the folds' pooled out-of-fold scores"
    RunRecord(
        labels=tuple(labels), features=params, window_s=float(window_s), thresholds=threshold_values,
        recommended_hop_s=float(hop_s), events=events_rule,
        calibration={"method": cfg.calibration.method,
                     "target": (cfg.calibration.target_precision if cfg.calibration.method == "precision"
                                else "best F1" if cfg.calibration.method == "f1"
                                else cfg.calibration.false_alarms_per_hour),
                     "labels": {label: t.to_dict() for label, t in thresholds.items()}},
        metrics={"float": metrics["float"]},
        evaluation=evaluation,
        model={"parameters": int(model.count_params()), "input_shape": list(model.input_shape[1:]),
               "output": "logits"},
        title=title,
        final={k: v for k, v in final_info.items() if k != "metrics_on_training_data"} if final_info else None,
        extra={"frames": {"step_frames": steps_of}} if layout is not None else {},
    ).write(out)
    summary = {
        "title": title, "command": command, "labels": labels, "window_s": window_s, "hop_s": hop_s,
        "split_counts": {name: {"recordings": len(m), "groups": sorted({r.group for r in m})[:20],
                                "n_groups": len({r.group for r in m}),
                                "positives": sum(len(r.positives()) for r in m)} for name, m in parts.items()},
        "windows": {"train_per_epoch": len(calibration_y), "validation": len(validation), "test": len(test)},
        "model": describe(model), "parameters": int(model.count_params()),
        "training": {**history.to_dict(), "seconds": train_seconds},
        "thresholds": {label: t.to_dict() for label, t in thresholds.items()},
        "metrics": metrics, "hard_negatives_used": n_hard, "final": final_info,
        "warnings": inventory.warnings, "skipped_files": inventory.skipped_files,
    }
    _write_metrics(out, summary)
    report.write_report(out, summary=summary, test=test, scores=test_scores, clip=(names, clip_y, clip_scores))
    log(report.headline(summary))
    return summary


def resolved_config_text(config: Config, *, data_root: Path, hard_negatives: list[str], folds: bool,
                         k_folds: int, final: bool = False) -> str:
    """The full config as this run used it (command-line overrides folded in)."""
    values = config.to_dict()
    values["train"]["data_root"] = str(data_root)
    values["train"]["hard_negatives"] = [str(h) for h in hard_negatives]
    values["train"]["split"]["leave_one_group_out"] = folds
    values["train"]["split"]["folds"] = k_folds
    values["train"]["split"]["final"] = final
    return yaml.safe_dump(values, sort_keys=False)


def train_run(*, config: Config, data_root: Path | None = None, out: Path | None = None,
              cache_dir: Path | None | str = "config", folds: bool | None = None, k_folds: int | None = None,
              hard_negatives: list[str] | None = None, command: str = "", final: bool | None = None,
              log: Log = print) -> dict:
    """Everything ``python -m train`` does; returns the main run's summary (metrics.json).
    ``folds`` / ``k_folds`` override the config's leave-one-group-out / k-fold cross-validation,
    ``final`` its ``split.final`` (:func:`train_final`)."""
    began = time.monotonic()
    cfg = config.train
    data_root = Path(data_root or cfg.data_root)
    out = Path(out or Path("runs") / cfg.name)
    if cache_dir == "config":
        cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else None
    folds = cfg.split.leave_one_group_out if folds is None else folds
    k_folds = (0 if folds else cfg.split.folds) if k_folds is None else k_folds
    folds = folds and not k_folds
    hard_negatives = list(cfg.hard_negatives) + list(hard_negatives or [])
    final = cfg.split.final if final is None else final
    if final and not (folds or k_folds):
        raise DatasetError("train.split.final: the final model takes its epochs and thresholds from "
                           "cross-validation; set train.split.leave_one_group_out or train.split.folds "
                           "(or pass --folds)")
    prepared = prepare_data(train_cfg=cfg, data_root=data_root, cache_dir=Path(cache_dir) if cache_dir else None,
                            log=log)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "config.resolved.yaml",
                 resolved_config_text(config, data_root=data_root, hard_negatives=hard_negatives, folds=folds,
                                      k_folds=k_folds, final=final))
    split = split_for(cfg, prepared.inventory.recordings)
    plan = _fold_plan(cfg, prepared.inventory.recordings, split, logo=folds, k=k_folds)  # errors before training
    if final:
        summary = train_final(config=config, prepared=prepared, plan=plan, out=out, hard_negatives=hard_negatives,
                              kind="leave-one-group-out" if folds else f"{k_folds}-fold", command=command, log=log)
        summary["wall_seconds"] = time.monotonic() - began
        _write_metrics(out, summary)
        return summary
    summary = train_split(config=config, prepared=prepared, split=split, out=out, hard_negatives=hard_negatives,
                          title=f"{cfg.name}", command=command, log=log)
    if plan:
        results = []
        for name, test_groups in plan:
            log(f"== fold {name}: test {', '.join(test_groups[:6])}{' ...' if len(test_groups) > 6 else ''}")
            is_main = bool(k_folds) and name == MAIN_FOLD
            fold_split = split if is_main else split_for(cfg, prepared.inventory.recordings, test_groups=test_groups)
            if fold_split == split:
                log("same split as the main run: its results are this fold's")
                results.append((name, summary))
                continue
            results.append((name, train_split(config=config, prepared=prepared, split=fold_split,
                                              out=_fold_folder(out, name), hard_negatives=hard_negatives,
                                              title=f"{cfg.name}, fold {name}", command=command, log=log)))
        summary["folds"] = report.fold_table(results, labels=list(cfg.labels))
        summary["folds"]["kind"] = "leave-one-group-out" if folds else f"{k_folds}-fold"
        report.append_folds(out / "report.md", summary["folds"])
        log(report.folds_headline(summary["folds"]))
    summary["wall_seconds"] = time.monotonic() - began  # folds included
    _write_metrics(out, summary)
    return summary


def train_final(*, config: Config, prepared: Prepared, plan: list[tuple[str, list[str]]], out: Path,
                hard_negatives: list[str], kind: str, command: str = "", log: Log = print) -> dict:
    """Cross-validate (every fold into ``out/folds/<fold>/``), then train the deployable model on
    every recording into ``out``, with the folds' epoch count and pooled out-of-fold thresholds.
    Its report and run.json carry the cross-validated figures as the estimate of accuracy."""
    cfg = config.train
    recordings = prepared.inventory.recordings
    results: list[tuple[str, dict]] = []
    held_out: list[HeldOut] = []
    for name, test_groups in plan:
        log(f"== fold {name}: test {', '.join(test_groups[:6])}{' ...' if len(test_groups) > 6 else ''}")
        results.append((name, train_split(config=config, prepared=prepared,
                                          split=split_for(cfg, recordings, test_groups=test_groups),
                                          out=_fold_folder(out, name), hard_negatives=hard_negatives,
                                          title=f"{cfg.name}, fold {name}", command=command, log=log,
                                          collect=held_out)))
    folds = report.fold_table(results, labels=list(cfg.labels))
    folds["kind"] = kind
    log(report.folds_headline(folds))
    plan_final = final_plan(cfg=cfg, held_out=held_out, window_s=cfg.window_s, hop_s=config.detection.hop_s,
                            detection=config.detection)
    log(f"== final model on every recording: {plan_final.epochs} epochs (median of {plan_final.fold_epochs}), "
        "thresholds " + ", ".join(f"{k} {t.value:.4f}" for k, t in plan_final.thresholds.items())
        + " from the pooled out-of-fold scores")
    summary = train_split(config=config, prepared=prepared, split={r.name: "train" for r in recordings}, out=out,
                          hard_negatives=hard_negatives, title=f"{cfg.name}, final model on every group",
                          command=command, log=log, final=plan_final)
    summary["folds"] = folds
    report.append_folds(out / "report.md", folds)
    return summary


def _fold_plan(cfg: TrainSection, recordings: list[Recording], split: dict[str, str],
               *, logo: bool, k: int) -> list[tuple[str, list[str]]]:
    """(fold name, its test groups) for leave-one-group-out or k-fold cross-validation; [] when off."""
    if logo:
        return [(group, [group]) for group in fold_groups(recordings)]
    if not k:
        return []
    main_test = sorted({r.group for r in recordings if split[r.name] == "test" and not r.forced_split})
    groups = kfold_test_groups(recordings, labels=list(cfg.labels), first=main_test, k=k,
                               seed=cfg.seed)
    return [(MAIN_FOLD if i == 1 else f"fold{i}", fold) for i, fold in enumerate(groups, 1)]


def _member_metrics(member, test, labels: list[str], thresholds: dict[str, float]) -> dict:
    """One ensemble member's own figures on the test split (window and clip level, at the
    ensemble's thresholds), so the report shows what averaging gained over each model."""
    scores = predict_probabilities(member, test.x)
    out = {"float": metrics_by_label(test.y, scores, labels, thresholds)}
    names, clip_y, clip_scores = clip_level(test, scores)
    if names:
        out["clip"] = metrics_by_label(clip_y, clip_scores, labels, thresholds)
    return out


def _write_metrics(out: Path, summary: dict) -> None:
    """metrics.json: the run's whole summary (numpy numbers as floats)."""
    write_atomic(out / "metrics.json", json.dumps(summary, indent=2, default=float) + "\n")


def _fold_folder(out: Path, name: str) -> Path:
    """Where fold ``name`` trains: ``out/folds/<name>``, any Unicode letter or digit kept."""
    return out / "folds" / safe_name(name, allowed=WORD_CHARS, squeeze=False, fallback="group")
