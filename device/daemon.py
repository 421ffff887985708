"""Wiring: config + model bundle -> sinks, pipeline and a source; live until a signal (the
loop is device.supervisor), or replay. Main thread.

Exit status: 0 done (also live after SIGTERM/SIGINT, once the sinks are flushed and the stream
closed), 2 bad input (model bundle, config value, microphone not there, missing replay
path: one line on stderr), 1 failure at run time (a replayed file that could not be read,
an unexpected error), 128 + the signal number for a replay stopped by SIGTERM (143), SIGHUP
(129) or Ctrl-C (130) after writing the outputs of the files it finished.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from device.audio import AudioError
from device.bundle import Bundle, BundleError, load_bundle
from device.config import ClipsSection, Config, ConfigError, OutputsSection
from device.detector import detector_params
from device.eventfactory import EventFactory
from device.health import Health
from device.logsetup import setup_logging
from device.notify import Notifier
from device.paths import device_id, state_dir
from device.pipeline import build_pipeline
from device.runtime import Classifier, load_classifier
from device.sequence import Sequence
from device.sinks import Outputs, SinkQueue, build_sinks
from device.sources import Backoff, Liveness, MicrophoneSource, SourceError
from device.supervisor import run_live

log = logging.getLogger(__name__)


class UsageError(Exception):
    """Bad input found while wiring; one line, exit status 2."""


def _outputs(args: argparse.Namespace, out: OutputsSection, *, clips_dir: Path | None) -> Outputs:
    return Outputs(
        events_jsonl=args.events_jsonl or out.events_jsonl,
        scores_csv=args.scores_csv or out.scores_csv,
        raven_dir=args.raven_dir or out.raven_dir,
        counts_csv=getattr(args, "counts_csv", None) or out.counts_csv,
        raven_table=getattr(args, "raven_table", None),
        detections_csv=getattr(args, "detections_csv", None),
        audacity_dir=getattr(args, "audacity_dir", None),
        activity_dir=getattr(args, "activity_dir", None),
        clips_dir=clips_dir if out.clips.enabled else None,
        log_events=out.log_events,
    )


def _clips_dir(clips: ClipsSection, state: Path | None) -> Path | None:
    if clips.dir:
        return Path(clips.dir).expanduser()
    return state / "clips" if state is not None else None


def _optional_sinks(
    cfg: Config, *, device: str, labels: list[str], state: Path, health: Health, replay: bool = False
) -> list:
    """The MQTT sink when mqtt.enabled, or for a replay given --mqtt (device/mqtt/)."""
    if not cfg.mqtt.enabled and not replay:
        return []
    from device.mqtt import MqttSink

    sink = MqttSink(
        cfg.mqtt, device_id=device, labels=labels, state_dir=state, health=health.snapshot,
        replay=replay, storage=health.storage,
    )
    if not replay:
        health.add_check("mqtt", sink.stalled)  # publishing joins the watchdog
    return [sink]


def _with_overrides(args: argparse.Namespace, cfg: Config, labels: tuple[str, ...]) -> Config:
    """The config with --min-conf (every label's threshold) and --hop applied."""
    if getattr(args, "min_conf", None) is None and getattr(args, "hop", None) is None:
        return cfg
    from device.config import validate

    values = cfg.to_dict()
    if args.min_conf is not None:
        values["detection"]["thresholds"] = dict.fromkeys(labels, args.min_conf)
    if args.hop is not None:
        values["detection"]["hop_s"] = args.hop
    return validate(values)


def check_with_bundle(cfg: Config, bundle: Bundle) -> None:
    """The config rules that need the model: thresholds only for its labels, and a silence
    timeout longer than the first window takes to arrive (else the microphone is reopened
    over and over while audio plays). Raises ConfigError (one line naming the key)."""
    try:
        detector_params(
            labels=bundle.labels, bundle_thresholds=bundle.thresholds, detection=cfg.detection
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    audio = cfg.audio
    least = bundle.window_s + cfg.detection.hop_s + audio.liveness_timeout_s
    if audio.silence_timeout_s and audio.silence_timeout_s < least:
        raise ConfigError(
            f"audio.silence_timeout_s: must be 0 (off) or at least the model window "
            f"({bundle.window_s:g} s) + detection.hop_s + audio.liveness_timeout_s = {least:g} s, "
            f"got {audio.silence_timeout_s:g}")


def run(args: argparse.Namespace, cfg: Config) -> int:
    """Run the daemon (live) or a replay as the command line asks; returns the exit status."""
    setup_logging(cfg.service.log_level, cfg.service.warning_interval_s)
    try:
        model = args.model or cfg.detection.model
        bundle = load_bundle(model)
        cfg = _with_overrides(args, cfg, bundle.labels)
        classifier = load_classifier(
            bundle, delegate=cfg.detection.delegate, num_threads=cfg.detection.num_threads
        )
        check_with_bundle(cfg, bundle)
        if getattr(args, "plot", None):
            return _plot(args, cfg, classifier)
        if args.replay:
            return _replay(args, cfg, classifier)
        return _live(args, cfg, classifier)
    except (BundleError, ConfigError, UsageError, SourceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before a replay's own handler was installed
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:
        log.exception("failed")
        return 1


def _replay(args: argparse.Namespace, cfg: Config, classifier: Classifier) -> int:
    import re

    from device.batch import run_replay
    from device.manifest import MANIFEST_NAME, ManifestError
    from device.recording import TimeError, check_time_format, parse_start_time, parse_timezone
    from device.replay import ReplayUsageError, collect_recordings

    rules = {
        "timezone": args.timezone or cfg.replay.timezone,
        "time_format": args.time_format or cfg.replay.time_format,
        "site_pattern": args.site_pattern or cfg.replay.site_pattern,
        "start_time": args.start_time,
    }
    try:
        tz = parse_timezone(rules["timezone"])
        check_time_format(rules["time_format"])
        start = parse_start_time(args.start_time, tz) if args.start_time else None
        if rules["site_pattern"]:
            re.compile(rules["site_pattern"])
        recordings = collect_recordings(
            args.replay,
            start_time=start,
            tz=tz,
            time_format=rules["time_format"],
            site_pattern=rules["site_pattern"],
        )
    except re.error as exc:
        raise UsageError(f"--site-pattern: not a regular expression ({exc})") from None
    except (ReplayUsageError, TimeError) as exc:
        raise UsageError(str(exc).replace("replay.time_format", "--time-format")) from None
    device = device_id(cfg)
    health = Health()
    if cfg.mqtt.enabled and not args.mqtt:
        log.info("replay: not publishing to MQTT (mqtt.enabled is for the live service; "
                 "--mqtt publishes a replay)")
    needs_state = args.mqtt or (cfg.outputs.clips.enabled and not cfg.outputs.clips.dir)
    state = _make_state_dir(cfg) if needs_state else None
    outputs = _outputs(args, cfg.outputs, clips_dir=_clips_dir(cfg.outputs.clips, state))
    manifest_path = _manifest_path(args, outputs, MANIFEST_NAME)
    if args.resume and manifest_path is None:
        raise UsageError("--resume: needs a file output (or --manifest FILE) to keep a manifest")
    executor = None
    if args.cluster:
        from device.cluster import ClusterError, cluster_executor

        try:
            executor = cluster_executor(args.cluster, classifier.bundle.model_path)
        except ClusterError as exc:
            raise UsageError(str(exc)) from None
    try:
        extra = (
            _optional_sinks(
                cfg, device=device, labels=list(classifier.bundle.labels),
                state=state / "replay", health=health, replay=True,
            )
            if args.mqtt and state is not None  # --mqtt always makes the state folder
            else []
        )
        return run_replay(
            recordings=recordings,
            cfg=cfg,
            classifier=classifier,
            device_id=device,
            outputs=outputs,
            jobs=args.jobs,
            realtime=args.realtime,
            extra_sinks=extra,
            health=health,
            manifest_path=manifest_path,
            resume=args.resume,
            manifest_extra={"rules": rules},
            executor=executor,
        )
    except ManifestError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(
            f"{exc.filename or ''}: cannot write output ({exc.strerror or exc})"
        ) from None
    finally:
        if executor is not None:  # already shut down after a run; here after an early error
            executor.shutdown(wait=False, cancel_futures=True)


def _plot(args: argparse.Namespace, cfg: Config, classifier: Classifier) -> int:
    from device.plot import PlotError, plot_file
    from device.replay import make_settings

    settings = make_settings(
        cfg, classifier, device_id=device_id(cfg), realtime=False, scores=True, clips_dir=None
    )
    try:
        out = plot_file(args.plot, settings=settings, cfg=cfg, classifier=classifier,
                        out=Path(args.plot_out) if args.plot_out else None)
    except PlotError as exc:
        raise UsageError(str(exc)) from None
    except AudioError as exc:
        raise UsageError(str(exc)) from None
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _manifest_path(args: argparse.Namespace, outputs: Outputs, name: str) -> Path | None:
    """--manifest, else beside the first file output; None when every output is stdout."""
    if args.manifest:
        return Path(args.manifest)
    for file in (outputs.events_jsonl, outputs.scores_csv, outputs.detections_csv,
                 outputs.raven_table, outputs.counts_csv):
        if file and file != "-":
            return Path(file).parent / name
    for folder in (outputs.raven_dir, outputs.audacity_dir, outputs.activity_dir):
        if folder:
            return Path(folder) / name
    return None


def _make_state_dir(cfg: Config, *, health: Health | None = None) -> Path:
    """The state folder, created. Live (``health`` given), a folder that cannot be created
    (read-only card) is a degradation, not an error: everything in it waits in memory."""
    state = state_dir(cfg)
    try:
        # 0700: the outbox and clips say what was heard where and when. (systemd's
        # StateDirectoryMode=0700 does the same for the service.)
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        if health is None:
            raise UsageError(f"service.state_dir: cannot create {state} ({exc.strerror})") from None
        health.storage.failed("state folder", exc, fallback="state is kept in memory")
        return state
    try:
        mode = state.stat().st_mode & 0o777
        if mode & 0o077 and state.stat().st_uid == os.geteuid():
            state.chmod(0o700)
            log.info("service.state_dir %s was mode %03o; now 0700", state, mode)
    except OSError as exc:  # a read-only card: its mode is what it is
        log.warning("service.state_dir %s: cannot make it private (%s)", state,
                    exc.strerror or exc)
    return state


def _live(args: argparse.Namespace, cfg: Config, classifier: Classifier) -> int:
    bundle = classifier.bundle
    health = Health()
    state = _make_state_dir(cfg, health=health)
    device = device_id(cfg)
    features = bundle.features
    outputs = _outputs(args, cfg.outputs, clips_dir=_clips_dir(cfg.outputs.clips, state))
    try:
        sinks = build_sinks(
            outputs,
            cfg,
            labels=list(bundle.labels),
            low_hz=features.fmin,
            high_hz=features.fmax,
            append=True,
            live=True,
        )
        sequence = Sequence(state, storage=health.storage)
    except OSError as exc:
        raise UsageError(f"{exc.filename or state}: cannot write ({exc.strerror or exc})") from None
    sinks += _optional_sinks(
        cfg, device=device, labels=list(bundle.labels), state=state, health=health
    )
    queue = SinkQueue(sinks, maxsize=cfg.outputs.queue_size, block=False, health=health)
    health.add_gauge("queue_depth", lambda: queue.depth)
    audio = cfg.audio
    source = MicrophoneSource(
        device=audio.device,
        sample_rate=audio.sample_rate,
        model_rate=features.sample_rate,
        channels=audio.channels,
        block_s=audio.block_s,
        ring_s=audio.ring_s,
    )
    pipeline = build_pipeline(
        cfg,
        classifier,
        queue=queue,
        health=health,
        events=EventFactory(device_id=device, sequence=sequence),
    )
    stop = threading.Event()
    # SIGHUP (a closed terminal, or `systemctl kill -s HUP`) ends the daemon like SIGTERM:
    # events flushed, exit 0. Reloading happens by restarting (systemctl restart callwatch).
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop.set())
    try:
        source.open()
    except SourceError:
        queue.close()
        raise
    notifier = Notifier.from_env()
    queue.start()
    try:
        run_live(
            source=source,
            pipeline=pipeline,
            liveness=Liveness(
                liveness_timeout_s=audio.liveness_timeout_s,
                silence_timeout_s=audio.silence_timeout_s,
            ),
            backoff=Backoff(*audio.reopen_backoff_s),
            stop=stop,
            notifier=notifier,
            health=health,
        )
    finally:
        notifier.stopping(status="stopping")
        source.close()
        queue.close()
    log.info("stopped: %s", health.status_line())
    log.info("health at exit: %s", json.dumps(health.snapshot(), separators=(",", ":")))
    return 0
