"""python -m device --replay: audio files and folders through the live pipeline, then a summary.

Each file is a source of its own (times from its start, a Raven table each). With ``--jobs N``
the files are analysed in N processes; the parent writes every shared output (events JSONL,
scores CSV, counts CSV, MQTT) in file order, so the outputs do not depend on N. Event
sequence numbers count the run's events from 1 in file order.

A file that cannot be read is reported (one line naming it) and skipped; the others are
analysed, and the run exits with status 1. A file cut short keeps the events of the part
that could be read and is reported as failed too.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import multiprocessing
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from device.audio import AudioError, find_audio_files
from device.bundle import load_bundle
from device.events import Event
from device.health import Health
from device.paths import Sequence
from device.pipeline import EventFactory, Pipeline, build_pipeline
from device.ringbuffer import RingBuffer
from device.runtime import load_classifier
from device.sinks import Outputs, ScoresCsvSink, SinkQueue, build_sinks, clip_sink
from device.sources import FileSource

log = logging.getLogger(__name__)

REPLAY_BLOCK_S = 10.0
"""Seconds of audio decoded per block when replaying as fast as possible."""


class ReplayUsageError(Exception):
    """A path that does not exist or holds no audio; one line (exit status 2)."""


@dataclass
class FileResult:
    """What one file gave."""

    path: str
    audio_s: float = 0.0
    windows: int = 0
    events: list[Event] = field(default_factory=list)
    error: str | None = None


def replay_file(
    path: Path, *, pipeline: Pipeline, ring: RingBuffer, realtime: bool, block_s: float
) -> FileResult:
    """Run one file through ``pipeline``; its events go to the pipeline's queue."""
    health = pipeline.health
    audio0, windows0 = health.audio_s, health.windows
    rate = pipeline.params.sample_rate
    source = FileSource(path, sample_rate=rate, block_s=block_s, realtime=realtime)
    ring.reset(0)
    pipeline.begin_source(source.name, t0_wall=time.time(), t0_mono=time.monotonic())
    pipeline.begin_segment(ring, capture_rate=rate)
    result = FileResult(str(path))
    try:
        for block in source.blocks():
            ring.write(block)
            pipeline.consume()
    except AudioError as exc:
        result.error = str(exc)
    if result.error is None or health.audio_s > audio0:
        pipeline.end_source(pad_short=result.error is None)
    result.audio_s = health.audio_s - audio0
    result.windows = health.windows - windows0
    return result


def _ring_for(cfg, rate: int, block_s: float) -> RingBuffer:
    # Room for a whole decoded block plus the clip pre-roll behind it.
    return RingBuffer(int(max(cfg.audio.ring_s, 3 * block_s) * rate))


def collect_files(paths: list[str]) -> list[Path]:
    """Audio files named or found in folders; ReplayUsageError for a missing path or none."""
    for path in map(Path, paths):
        if not path.exists():
            raise ReplayUsageError(f"{path}: no such file or folder")
    files = find_audio_files(paths)
    if not files:
        raise ReplayUsageError(
            f"{', '.join(paths)}: no audio files (wav, flac, ogg, opus, mp3) found"
        )
    return files


def run_replay(
    *,
    files: list[Path],
    cfg,
    classifier,
    device_id: str,
    outputs: Outputs,
    jobs: int,
    realtime: bool,
    extra_sinks: list | None = None,
    health: Health | None = None,
) -> int:
    """Replay ``files``; print the summary on stderr; 0 when every file was read, else 1."""
    bundle = classifier.bundle
    health = health or Health()
    block_s = cfg.audio.block_s if realtime else REPLAY_BLOCK_S
    features = bundle.features
    in_process = jobs <= 1 or len(files) == 1
    sinks = build_sinks(
        outputs,
        cfg,
        labels=list(bundle.labels),
        low_hz=features.fmin,
        high_hz=features.fmax,
        append=False,
        scores=in_process,
        clips=in_process,
    ) + list(extra_sinks or [])
    queue = SinkQueue(sinks, maxsize=cfg.outputs.queue_size, block=True, health=health).start()
    health.add_gauge("queue_depth", lambda: queue.depth)
    results: list[FileResult] = []
    started = time.perf_counter()
    try:
        if in_process:
            events = EventFactory(device_id=device_id, sequence=Sequence())
            pipeline = build_pipeline(cfg, classifier, queue=queue, health=health, events=events)
            ring = _ring_for(cfg, features.sample_rate, block_s)
            for path in files:
                result = replay_file(
                    path, pipeline=pipeline, ring=ring, realtime=realtime, block_s=block_s
                )
                _report(result)
                results.append(result)
        else:
            results = _replay_parallel(
                files,
                cfg=cfg,
                classifier=classifier,
                device_id=device_id,
                outputs=outputs,
                jobs=jobs,
                realtime=realtime,
                block_s=block_s,
                queue=queue,
                health=health,
            )
    finally:
        queue.close()
    wall_s = time.perf_counter() - started
    failed = [r for r in results if r.error]
    audio_s = sum(r.audio_s for r in results)
    print(
        f"replay: {len(results)} files, {audio_s / 3600:.3f} h of audio, {health.events} events, "
        f"{audio_s / wall_s if wall_s > 0 else 0:.0f}x real time, {len(failed)} failed"
        + (f" ({', '.join(Path(r.path).name for r in failed)})" if failed else ""),
        file=sys.stderr,
    )
    return 1 if failed else 0


def _report(result: FileResult) -> None:
    if result.error:
        log.error("%s", result.error)
    else:
        log.debug("%s: %.1f s of audio, %d windows", result.path, result.audio_s, result.windows)


# --- several processes ----------------------------------------------------------------------

_worker: dict = {}


def _init_worker(
    model_path: str,
    cfg_values: dict,
    delegate: str,
    device_id: str,
    block_s: float,
    realtime: bool,
    clips_dir: str | None,
    log_level: int,
) -> None:
    from device.config import validate

    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")
    cfg = validate(cfg_values)
    bundle = load_bundle(model_path)
    _worker.update(
        cfg=cfg,
        classifier=load_classifier(
            bundle, delegate=delegate, num_threads=cfg.detection.num_threads
        ),
        device_id=device_id,
        block_s=block_s,
        realtime=realtime,
        clips_dir=Path(clips_dir) if clips_dir else None,
    )


class _Collector:
    """Sink keeping a worker's events for the parent."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def on_event(self, event: Event) -> None:
        self.events.append(event)

    def on_scores(self, scores) -> None:
        pass

    def on_source_end(self, source: str) -> None:
        pass

    def close(self) -> None:
        pass


def _replay_one(path: str, scores_part: str | None) -> FileResult:
    """Worker process: one file; scores go to ``scores_part`` (rows without a header)."""
    w = _worker
    collector = _Collector()
    sinks: list = [collector]
    if scores_part:
        sinks.append(ScoresCsvSink(scores_part, header=False))
    if w["clips_dir"] is not None:
        sinks.append(clip_sink(w["clips_dir"], w["cfg"]))
    health = Health()
    queue = SinkQueue(sinks, maxsize=w["cfg"].outputs.queue_size, block=True, health=health).start()
    try:
        events = EventFactory(device_id=w["device_id"], sequence=Sequence())
        pipeline = build_pipeline(
            w["cfg"], w["classifier"], queue=queue, health=health, events=events
        )
        ring = _ring_for(w["cfg"], pipeline.params.sample_rate, w["block_s"])
        result = replay_file(
            Path(path), pipeline=pipeline, ring=ring, realtime=w["realtime"], block_s=w["block_s"]
        )
    finally:
        queue.close()
    result.events = collector.events
    return result


def _replay_parallel(
    files: list[Path],
    *,
    cfg,
    classifier,
    device_id: str,
    outputs: Outputs,
    jobs: int,
    realtime: bool,
    block_s: float,
    queue: SinkQueue,
    health: Health,
) -> list[FileResult]:
    """Analyse files in ``jobs`` processes; feed their events to ``queue`` in file order."""
    bundle = classifier.bundle
    sequence = Sequence()
    results = []
    with tempfile.TemporaryDirectory(prefix="callwatch-replay-") as tmp:
        scores = ScoresCsvSink(outputs.scores_csv) if outputs.scores_csv else None
        parts = [str(Path(tmp) / f"{i}.csv") if scores else None for i in range(len(files))]
        context = multiprocessing.get_context("spawn")  # no fork of a process with threads
        init = (
            str(bundle.model_path),
            cfg.to_dict(),
            classifier.delegate,
            device_id,
            block_s,
            realtime,
            str(outputs.clips_dir) if outputs.clips_dir else None,
            logging.getLogger().getEffectiveLevel(),
        )
        try:
            with concurrent.futures.ProcessPoolExecutor(
                jobs, mp_context=context, initializer=_init_worker, initargs=init
            ) as pool:
                results_in_order = pool.map(_replay_one, map(str, files), parts)
                for result, part in zip(results_in_order, parts, strict=True):
                    _report(result)
                    for event in result.events:
                        health.events += 1
                        queue.put_event(dataclasses.replace(event, seq=sequence.next()))
                    if result.error is None or result.audio_s > 0:
                        queue.put_source_end(Path(result.path).name)
                        if scores:
                            scores.append_rows(Path(part))
                    health.audio_s += result.audio_s
                    health.windows += result.windows
                    results.append(result)
        finally:
            if scores:
                scores.close()
    return results
