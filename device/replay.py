"""Stage: replay, the work per file (``python -m device --replay``; device/batch.py runs the batch).

The work per file is one pure function, :func:`analyse_file`: a :class:`Recording` (path,
source name, site, start time) and :class:`ReplaySettings` in, a :class:`FileResult` (events,
window scores, audio seconds, error) out. It runs in this process, in ``--jobs N`` processes,
or (later) as a task on a cluster; the parent alone writes every output, the manifest and the
summary, from the results in file order, so the outputs do not depend on where the work ran.
A file cut short keeps the events of the part that could be read and is reported as failed.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import logging
import multiprocessing
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from device.audio import AUDIO_EXTENSIONS, AudioError, decoder_quiet
from device.bundle import load_bundle
from device.config import Config, validate
from device.eventfactory import EventFactory
from device.events import Event, SinkBase, WindowScores
from device.health import Health
from device.pipeline import Pipeline, build_pipeline
from device.recording import GIVEN, Recording, recording_start, site_of
from device.ringbuffer import RingBuffer
from device.runtime import Classifier, load_classifier
from device.sequence import Sequence
from device.sinks import SinkQueue, clip_sink
from device.sources import FileSource

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
                if p.is_dir():
                    continue
                found.append((p, p.absolute().relative_to(base.absolute()).as_posix()))
        else:
            found.append((entry, str(entry.absolute())))
    # Only regular files: opening a FIFO blocks until a writer comes (the whole run would hang
    # on it); a socket or device is no recording.
    for path, _ in found:
        if not path.is_file():
            log.warning("%s: not a regular file (a FIFO, device or socket); skipped", path)
    found = [(p, source) for p, source in found if p.is_file()]
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
            with decoder_quiet(path):
                duration = float(soundfile.info(str(path)).duration)
        except Exception:  # unreadable: reported when it is analysed
            duration = 0.0
        time_source: str | None
        if clock is not None:  # --start-time: the files follow each other
            start: dt.datetime | None = clock
            time_source = GIVEN
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
    cfg: Config, classifier: Classifier, *, device_id: str, realtime: bool, scores: bool, clips_dir: str | None
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


_loaded: dict[tuple[str, str, str], tuple[Config, Classifier]] = {}


def _classifier_for(settings: ReplaySettings) -> tuple[Config, Classifier]:
    """The config and classifier of ``settings``, loaded once per process."""
    key = (settings.model_path, settings.delegate, repr(settings.cfg_values))
    if key not in _loaded:
        cfg = validate(settings.cfg_values)
        bundle = load_bundle(settings.model_path)
        _loaded.clear()
        _loaded[key] = (
            cfg,
            load_classifier(bundle, delegate=settings.delegate, num_threads=cfg.detection.num_threads),
        )
    return _loaded[key]


def preload(settings: ReplaySettings, cfg: Config, classifier: Classifier) -> None:
    """Hand this process's already loaded classifier to :func:`analyse_file`."""
    _loaded.clear()
    _loaded[(settings.model_path, settings.delegate, repr(settings.cfg_values))] = (cfg, classifier)


class _Collector(SinkBase):
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


def _ring_for(cfg: Config, rate: int, block_s: float) -> RingBuffer:
    # Room for a whole decoded block plus the clip pre-roll behind it.
    return RingBuffer(int(max(cfg.audio.ring_s, 3 * block_s) * rate))


# --- where the work runs ----------------------------------------------------------------------


def results_in_order(
    todo: list[Recording],
    settings: ReplaySettings,
    *,
    jobs: int,
    stop: Callable[[], bool],
    progress,
    on_event: Callable[[Event], Event] | None = None,
    executor: concurrent.futures.Executor | None = None,
) -> Iterator[FileResult]:
    """Results in file order: here (``on_event`` as in :func:`analyse_file`), from ``jobs``
    worker processes, or from ``executor`` (``--cluster``: device/cluster.py), which is shut
    down at the end. ``progress.update(seconds)`` follows the file under way (here only).
    Close the generator to end the workers early."""
    if executor is None and (jobs <= 1 or len(todo) <= 1 or on_event is not None):
        for recording in todo:
            if stop():
                return
            yield analyse_file(
                recording, settings, stop=stop, on_audio=progress.update, on_event=on_event
            )
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process with threads
    pool = executor or concurrent.futures.ProcessPoolExecutor(
        jobs, mp_context=context, initializer=_init_worker,
        initargs=(logging.getLogger().getEffectiveLevel(),),
    )
    futures: list = []
    try:
        # submit() starts the workers. They inherit a signal mask that holds the stop signals
        # (a Ctrl-C reaches the whole process group) until their initializer ignores them; here
        # the held signals are delivered to the parent's handler once the mask is restored.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            futures = [pool.submit(analyse_file, r, settings) for r in todo]
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
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
