"""python -m device --replay: audio files and folders through the live pipeline, then a summary.

The work per file is one pure function, :func:`analyse_file`: a :class:`Recording` (path,
source name, site, start time) and :class:`ReplaySettings` in, a :class:`FileResult` (events,
window scores, audio seconds, error) out. It runs in this process, in ``--jobs N`` processes,
or (later) as a task on a cluster; the parent alone writes every output, the manifest and the
summary, from the results in file order, so the outputs do not depend on where the work ran.
Event sequence numbers count the run's events from 1 in file order.

A file that cannot be read is reported (one log line each, naming it) and skipped; the others
are analysed, and the run exits with status 1. A file cut short keeps the events of the part
that could be read and is reported as failed too.

SIGTERM, SIGHUP and SIGINT (Ctrl-C) stop the batch: the file under way is dropped (a resumed
run analyses it again), every output and the summary are written for the files finished, and
the exit status is 128 + the signal number (143, 129, 130).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import logging
import multiprocessing
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from device import manifest
from device.audio import AUDIO_EXTENSIONS, AudioError
from device.bundle import load_bundle
from device.events import Event, WindowScores
from device.health import Health
from device.paths import Sequence
from device.pipeline import EventFactory, Pipeline, build_pipeline
from device.progress import Progress
from device.recording import GIVEN, Recording, recording_start, site_of
from device.ringbuffer import RingBuffer
from device.runtime import load_classifier
from device.sinks import Outputs, SinkQueue, build_sinks, clip_sink, printable
from device.sources import FileSource
from device.tables import ActivitySink, AudacitySink, DetectionsCsvSink, RavenTableSink

log = logging.getLogger(__name__)

REPLAY_BLOCK_S = 10.0
"""Seconds of audio decoded per block when replaying as fast as possible."""
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


class ReplayUsageError(Exception):
    """A path that does not exist or holds no audio; one line (exit status 2)."""


# --- what is replayed -----------------------------------------------------------------------


def collect_recordings(
    paths: list[str],
    *,
    start_time: dt.datetime | None = None,
    tz: dt.tzinfo = dt.UTC,
    time_format: str | None = None,
    site_pattern: str | None = None,
) -> list[Recording]:
    """The audio files named or found in folders, each with its source name, site and time.

    Source names: with one folder, paths relative to it; with several paths, a folder's files
    relative to the folder's parent (``SiteA/x.WAV``) and a file by itself as its absolute
    path; should two names still coincide, every source is its absolute path.
    """
    import soundfile

    for path in map(Path, paths):
        if not path.exists():
            raise ReplayUsageError(f"{path}: no such file or folder")
    if start_time is not None and len(paths) > 1:
        raise ReplayUsageError(
            "--start-time: give one file, or one folder of one recorder's consecutive files"
        )
    found: list[tuple[Path, str]] = []
    single_folder = len(paths) == 1 and Path(paths[0]).is_dir()
    for entry in map(Path, paths):
        if entry.is_dir():
            base = entry if single_folder else entry.absolute().parent
            for p in sorted(x for x in entry.rglob("*") if x.suffix.lower() in AUDIO_EXTENSIONS):
                found.append((p, p.absolute().relative_to(base.absolute()).as_posix()))
        else:
            found.append((entry, str(entry.absolute())))
    if not found:
        raise ReplayUsageError(
            f"{', '.join(paths)}: no audio files (wav, flac, ogg, opus, mp3) found"
        )
    if len({source for _, source in found}) < len(found):
        found = [(p, str(p.absolute())) for p, _ in found]
    recordings = []
    clock = start_time
    for path, source in found:
        try:
            duration = float(soundfile.info(str(path)).duration)
        except Exception:  # unreadable: reported when it is analysed
            duration = 0.0
        if start_time is not None:
            start, time_source = clock, GIVEN
            clock = clock + dt.timedelta(seconds=duration)
        else:
            found_time = recording_start(path, name=source, time_format=time_format, tz=tz)
            start, time_source = found_time.start, found_time.source
        folder = None if Path(source).is_absolute() else Path(source).parent.as_posix()
        site = site_of(source, pattern=site_pattern, folder=None if folder == "." else folder)
        recordings.append(Recording(str(path), source, site, start, time_source, duration))
    return recordings


# --- the work per file ----------------------------------------------------------------------


@dataclass(frozen=True)
class ReplaySettings:
    """Everything :func:`analyse_file` needs besides the file (picklable)."""

    model_path: str
    cfg_values: dict
    """The validated config as a dict (device.config.validate rebuilds it)."""
    delegate: str
    device_id: str
    block_s: float
    realtime: bool
    scores: bool
    """Return the window scores (for --scores-csv)."""
    clips_dir: str | None
    """Write event clips here (the process analysing the file writes them)."""
    id_salt: str
    """Mixed into the event ids (the model's sha256)."""


@dataclass
class FileResult:
    """What one file gave."""

    source: str
    audio_s: float = 0.0
    windows: int = 0
    events: list[Event] = field(default_factory=list)
    """In the order the detector closed them; seq is the file's own count."""
    scores: np.ndarray | None = None
    """(windows, 2 + labels) float64: start_s, end_s, then the score of each label."""
    labels: tuple[str, ...] = ()
    error: str | None = None
    interrupted: bool = False
    """Stopped by a signal before the end: dropped, analysed again by a resumed run."""


def make_settings(
    cfg, classifier, *, device_id: str, realtime: bool, scores: bool, clips_dir: str | None
) -> ReplaySettings:
    bundle = classifier.bundle
    return ReplaySettings(
        model_path=str(bundle.model_path),
        cfg_values=cfg.to_dict(),
        delegate=classifier.delegate,
        device_id=device_id,
        block_s=cfg.audio.block_s if realtime else REPLAY_BLOCK_S,
        realtime=realtime,
        scores=scores,
        clips_dir=clips_dir,
        id_salt=str(bundle.manifest.get("sha256", bundle.model_path.name)),
    )


_loaded: dict = {}


def _classifier_for(settings: ReplaySettings):
    """The config and classifier of ``settings``, loaded once per process."""
    key = (settings.model_path, settings.delegate, repr(settings.cfg_values))
    if key not in _loaded:
        from device.config import validate

        cfg = validate(settings.cfg_values)
        bundle = load_bundle(settings.model_path)
        _loaded.clear()
        _loaded[key] = (
            cfg,
            load_classifier(bundle, delegate=settings.delegate, num_threads=cfg.detection.num_threads),
        )
    return _loaded[key]


def preload(settings: ReplaySettings, cfg, classifier) -> None:
    """Hand this process's already loaded classifier to :func:`analyse_file`."""
    _loaded.clear()
    _loaded[(settings.model_path, settings.delegate, repr(settings.cfg_values))] = (cfg, classifier)


class _Collector:
    """Sink keeping one file's events and scores (and handing each event on at once to
    ``forward``, when given)."""

    def __init__(self, forward: Callable[[Event], Event] | None = None) -> None:
        self.events: list[Event] = []
        self.scores: list[WindowScores] = []
        self._forward = forward

    def on_event(self, event: Event) -> None:
        self.events.append(self._forward(event) if self._forward else event)

    def on_scores(self, scores: WindowScores) -> None:
        self.scores.append(scores)

    def on_source_end(self, source: str) -> None:
        pass

    def close(self) -> None:
        pass


def analyse_file(
    recording: Recording,
    settings: ReplaySettings,
    *,
    stop: Callable[[], bool] | None = None,
    on_audio: Callable[[float], None] | None = None,
    on_event: Callable[[Event], Event] | None = None,
) -> FileResult:
    """Run one file through the pipeline. ``stop()`` is asked between blocks (True: give up,
    ``interrupted``); ``on_audio(seconds so far)`` after each block; ``on_event(event)`` as
    each event closes (``--realtime``: the outputs see it then, as live), returning the event
    as delivered (numbered), which the result keeps."""
    cfg, classifier = _classifier_for(settings)
    collector = _Collector(on_event)
    collector.wants_scores = settings.scores
    sinks: list = [collector]
    if settings.clips_dir is not None:
        sinks.append(clip_sink(Path(settings.clips_dir), cfg))
    health = Health()
    queue = SinkQueue(sinks, maxsize=cfg.outputs.queue_size, block=True, health=health).start()
    try:
        events = EventFactory(
            device_id=settings.device_id, sequence=Sequence(), replay=True, id_salt=settings.id_salt
        )
        pipeline = build_pipeline(cfg, classifier, queue=queue, health=health, events=events)
        ring = _ring_for(cfg, pipeline.params.sample_rate, settings.block_s)
        result = _replay_file(
            recording, pipeline=pipeline, ring=ring, settings=settings, stop=stop, on_audio=on_audio
        )
    finally:
        queue.close()
    result.events = collector.events
    if settings.scores and collector.scores:
        labels = tuple(collector.scores[0].scores)
        result.labels = labels
        result.scores = np.array(
            [(w.start_s, w.end_s, *(w.scores[k] for k in labels)) for w in collector.scores],
            np.float64,
        )
    return result


def _replay_file(
    recording: Recording,
    *,
    pipeline: Pipeline,
    ring: RingBuffer,
    settings: ReplaySettings,
    stop: Callable[[], bool] | None,
    on_audio: Callable[[float], None] | None,
) -> FileResult:
    health = pipeline.health
    rate = pipeline.params.sample_rate
    source = FileSource(
        recording.path, sample_rate=rate, block_s=settings.block_s, realtime=settings.realtime
    )
    ring.reset(0)
    pipeline.begin_source(
        recording.source,
        t0_wall=recording.start_epoch,
        t0_mono=0.0,
        site=recording.site,
        time_source=recording.time_source,
    )
    pipeline.begin_segment(ring, capture_rate=rate)
    result = FileResult(recording.source)
    try:
        for block in source.blocks():
            ring.write(block)
            pipeline.consume()
            if on_audio is not None:
                on_audio(health.audio_s)
            if stop is not None and stop():
                result.interrupted = True
                break
    except AudioError as exc:
        result.error = str(exc)
    if not result.interrupted and (result.error is None or health.audio_s > 0):
        pipeline.end_source(pad_short=result.error is None)
    result.audio_s = health.audio_s
    result.windows = health.windows
    return result


def _ring_for(cfg, rate: int, block_s: float) -> RingBuffer:
    # Room for a whole decoded block plus the clip pre-roll behind it.
    return RingBuffer(int(max(cfg.audio.ring_s, 3 * block_s) * rate))


# --- the batch --------------------------------------------------------------------------------


class _Stop:
    """Set by SIGTERM, SIGHUP or SIGINT (handlers installed for the batch only)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._event = threading.Event()
        self._previous: dict = {}

    def __call__(self) -> bool:
        return self._event.is_set()

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
            log.warning(
                "%s: stopping after writing the outputs of the files finished",
                signal.Signals(signum).name,
            )
        self._event.set()

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def manifest_settings(settings: ReplaySettings, outputs: Outputs, extra: dict) -> dict:
    """What must not change between a run and its resumption."""
    cfg = settings.cfg_values
    return {
        "model": settings.id_salt,
        "device_id": settings.device_id,
        "detection": {k: v for k, v in cfg["detection"].items() if k not in ("delegate", "num_threads")},
        "outputs": {k: v for k, v in dataclasses.asdict(outputs).items() if k != "clips_dir"},
        **extra,
    }


def run_replay(
    *,
    recordings: list[Recording],
    cfg,
    classifier,
    device_id: str,
    outputs: Outputs,
    jobs: int,
    realtime: bool,
    extra_sinks: list | None = None,
    health: Health | None = None,
    manifest_path: Path | None = None,
    resume: bool = False,
    manifest_extra: dict | None = None,
) -> int:
    """Replay ``recordings``; print the summary on stderr. Returns 0 when every file was read,
    1 when some failed, 128 + signal number when stopped by a signal."""
    bundle = classifier.bundle
    health = health or Health()
    features = bundle.features
    settings = make_settings(
        cfg,
        classifier,
        device_id=device_id,
        realtime=realtime,
        scores=bool(outputs.scores_csv),
        clips_dir=str(outputs.clips_dir) if outputs.clips_dir else None,
    )
    preload(settings, cfg, classifier)
    by_source = {r.source: r for r in recordings}
    fingerprint = manifest_settings(settings, outputs, manifest_extra or {})
    done: list[manifest.FileRecord] = []
    if resume and manifest_path is not None:
        done = manifest.load(manifest_path, settings=fingerprint)
        manifest.cut_outputs(done)
    sinks = build_sinks(
        outputs,
        cfg,
        labels=list(bundle.labels),
        low_hz=features.fmin,
        high_hz=features.fmax,
        append=bool(done),
        clips=False,
        sites={r.source: r.site for r in recordings},
        paths={r.source: Path(r.path).resolve() for r in recordings},
    )
    sinks += _batch_sinks(outputs, by_source, labels=list(bundle.labels), features=features,
                          append=bool(done))
    restorable = [s for s in sinks if hasattr(s, "restore")]
    seq = 0
    for record in done:
        events = [Event(**e) for e in record.events]
        seq += len(events)
        for sink in restorable:
            sink.restore(events, record.source)
    writer = (
        manifest.Writer(manifest_path, settings=fingerprint, records=done)
        if manifest_path is not None
        else None
    )
    sinks += list(extra_sinks or [])
    queue = SinkQueue(sinks, maxsize=cfg.outputs.queue_size, block=True, health=health).start()
    health.add_gauge("queue_depth", lambda: queue.depth)
    finished = {r.source for r in done}
    todo = [r for r in recordings if r.source not in finished]
    if done:
        log.info("resuming: %d of %d files already done (%s)", len(finished & set(by_source)),
                 len(recordings), manifest_path)
    progress = Progress(
        files=len(todo),
        audio_s=sum(r.duration_s for r in todo),
        interval_s=cfg.replay.progress_interval_s,
    )
    stop = _Stop()
    stop.install()
    results: list[FileResult] = []
    started = time.perf_counter()
    counter = [seq]

    def forward(event: Event) -> Event:  # --realtime: each event reaches the sinks at once
        counter[0] += 1
        event = dataclasses.replace(event, seq=counter[0])
        health.events += 1
        queue.put_event(event)
        return event

    work = _results(todo, settings, jobs=jobs, stop=stop, progress=progress,
                    on_event=forward if realtime else None)
    try:
        for result in work:
            if result.interrupted:
                break
            _report(result)
            seq = counter[0] = _deliver(result, queue=queue, seq=counter[0], health=health,
                                        sent=realtime)
            queue.drain()
            if writer is not None:
                sizes = dict(
                    p for s in sinks if hasattr(s, "flush_position") and (p := s.flush_position())
                )
                writer.add(
                    manifest.FileRecord(
                        source=result.source,
                        audio_s=result.audio_s,
                        windows=result.windows,
                        error=result.error,
                        events=[e.to_dict() for e in result.events],
                        sizes=sizes,
                    )
                )
            results.append(result)
            progress.file_done(result.audio_s)
            if stop():
                break
    finally:
        work.close()  # ends the worker processes
        stop.restore()
        queue.close()
        if writer is not None:
            writer.close()
    progress.finish()
    return _summary(results, done, recordings, health=health, wall_s=time.perf_counter() - started,
                    signum=stop.signum, manifest_path=manifest_path)


def _batch_sinks(outputs: Outputs, by_source: dict, *, labels, features, append: bool) -> list:
    sinks: list = []
    if outputs.raven_table:
        sinks.append(RavenTableSink(outputs.raven_table, recordings=by_source,
                                    low_hz=features.fmin, high_hz=features.fmax, append=append))
    if outputs.detections_csv:
        sinks.append(DetectionsCsvSink(outputs.detections_csv, recordings=by_source, append=append))
    if outputs.audacity_dir:
        sinks.append(AudacitySink(outputs.audacity_dir, recordings=by_source))
    if outputs.activity_dir:
        sinks.append(ActivitySink(outputs.activity_dir, recordings=by_source, labels=labels))
    return sinks


def _deliver(result: FileResult, *, queue: SinkQueue, seq: int, health: Health, sent: bool) -> int:
    """Hand one file's events (unless ``sent`` already, numbered) and scores to the sinks,
    numbering the events; returns the last sequence number."""
    if sent:
        seq = result.events[-1].seq if result.events else seq
    else:
        result.events = [dataclasses.replace(e, seq=seq + i) for i, e in enumerate(result.events, 1)]
        seq += len(result.events)
        for event in result.events:
            health.events += 1
            queue.put_event(event)
    if result.scores is not None:
        for row in result.scores:
            queue.put_scores(
                WindowScores(
                    result.source,
                    float(row[0]),
                    float(row[1]),
                    {k: float(v) for k, v in zip(result.labels, row[2:])},
                )
            )
    if result.error is None or result.audio_s > 0:
        queue.put_source_end(result.source)
    health.audio_s += result.audio_s
    health.windows += result.windows
    return seq


def _report(result: FileResult) -> None:
    if result.error:
        # A message of its own (no template): the repeat filter lets every failed file through.
        log.error("cannot analyse " + printable(result.error))
    else:
        log.debug("%s: %.1f s of audio, %d windows", printable(result.source), result.audio_s,
                  result.windows)


def _summary(results, done, recordings, *, health: Health, wall_s: float, signum: int | None,
             manifest_path: Path | None) -> int:
    failed = [r.source for r in done if r.error] + [r.source for r in results if r.error]
    audio_s = sum(r.audio_s for r in results)
    analysed = {r.source for r in done} | {r.source for r in results}
    undated = sum(1 for r in recordings if r.start is None and r.source in analysed)
    sites = sorted({r.site for r in recordings if r.site and r.source in analysed})
    line = (
        f"replay: {len(results)} files, {audio_s / 3600:.3f} h of audio, {health.events} events, "
        f"{audio_s / wall_s if wall_s > 0 else 0:.0f}x real time, {len(failed)} failed"
        + (f" ({', '.join(printable(Path(s).name) for s in failed)})" if failed else "")
    )
    if done:
        line += f"; {len(done)} files done before (resumed)"
    line += f"; {len(sites)} sites, {undated} files without a recording time"
    print(line, file=sys.stderr)
    if signum is not None:
        left = len(recordings) - len(analysed)
        hint = f"; continue with --resume (manifest {manifest_path})" if manifest_path else ""
        print(f"replay: stopped by {signal.Signals(signum).name}, {left} files not analysed"
              + hint, file=sys.stderr)
        return 128 + signum
    return 1 if failed else 0


# --- where the work runs ----------------------------------------------------------------------


def _results(
    todo: list[Recording],
    settings: ReplaySettings,
    *,
    jobs: int,
    stop: _Stop,
    progress: Progress,
    on_event: Callable[[Event], Event] | None = None,
) -> Iterator[FileResult]:
    """Results in file order: here (``on_event`` as in :func:`analyse_file`), or from ``jobs``
    worker processes."""
    if jobs <= 1 or len(todo) <= 1 or on_event is not None:
        for recording in todo:
            if stop():
                return
            yield analyse_file(
                recording, settings, stop=stop, on_audio=progress.update, on_event=on_event
            )
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process with threads
    pool = concurrent.futures.ProcessPoolExecutor(
        jobs, mp_context=context, initializer=_init_worker,
        initargs=(logging.getLogger().getEffectiveLevel(),),
    )
    futures: list = []
    try:
        futures = [pool.submit(analyse_file, r, settings) for r in todo]
        for future in futures:
            while True:
                try:
                    result = future.result(timeout=0.2)
                    break
                except concurrent.futures.TimeoutError:
                    if stop():
                        return
            yield result
            if stop():
                return
    finally:
        for f in futures:
            f.cancel()
        if not all(f.done() for f in futures):
            # Stopped early. Workers ignore the signals (a terminal sends Ctrl-C to all of
            # them): end them here rather than wait for their files.
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.kill()
        pool.shutdown(wait=True, cancel_futures=True)


def _init_worker(log_level: int) -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")
