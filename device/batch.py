"""Stage: replay, the batch (``python -m device --replay``): its outputs, manifest, progress and
summary. Runs on the main thread; only this process writes outputs.

The parent process alone writes: it takes each file's :class:`device.replay.FileResult` (made
here, in ``--jobs N`` processes or elsewhere) in file order, numbers its events (the run's
events from 1 in file order), hands them and the window scores to the sinks, waits until
they are written, then adds the file to the manifest (device/manifest.py), so ``--resume``
continues exactly where a stopped or killed batch left off.

A file that cannot be read is reported (one log line each, naming it) and skipped; the others
are analysed, and the run exits with status 1. SIGTERM, SIGHUP and SIGINT (Ctrl-C) stop the
batch: the file under way is dropped (a resumed run analyses it again), every output and the
summary are written for the files finished, and the exit status is 128 + the signal number
(143, 129, 130).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from device import manifest
from device.config import Config
from device.events import Event, WindowScores
from device.health import Health
from device.progress import Progress
from device.recording import Recording
from device.replay import (
    STOP_SIGNALS,
    FileResult,
    ReplaySettings,
    make_settings,
    preload,
    results_in_order,
)
from device.sinks import Outputs, SinkQueue, build_sinks, printable
from device.tables import ActivitySink, AudacitySink, DetectionsCsvSink, RavenTableSink

log = logging.getLogger(__name__)


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
    cfg: Config,
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
    executor: concurrent.futures.Executor | None = None,
) -> int:
    """Replay ``recordings``; print the summary on stderr. Returns 0 when every file was read,
    1 when some failed, 128 + signal number when stopped by a signal. ``executor``: run the
    files there (``submit(analyse_file, recording, settings)``; ``--cluster``) instead of in
    ``jobs`` processes."""
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
    seq = 0
    for record in done:
        events = [Event(**e) for e in record.events]
        seq += len(events)
        if record.error:  # a file that failed has no rows, as in an uninterrupted run
            continue
        for sink in sinks:
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
    try:
        started = time.perf_counter()
        results = _run_batch(todo, settings, queue=queue, sinks=sinks, writer=writer, seq=seq,
                             health=health, jobs=jobs, stop=stop, progress=progress,
                             executor=executor)
        progress.finish()
        return _summary(results, done, recordings, health=health,
                        wall_s=time.perf_counter() - started, signum=stop.signum,
                        manifest_path=manifest_path)
    finally:
        stop.restore()  # only now: a second Ctrl-C while the outputs are written changes nothing


def _run_batch(todo, settings, *, queue, sinks, writer, seq, health, jobs, stop, progress,
               executor=None):
    """Analyse ``todo`` and hand each result to the sinks and the manifest, in file order;
    returns the results of the files finished. Closes the queue (every output) and the manifest."""
    results: list[FileResult] = []
    counter = [seq]

    def forward(event: Event) -> Event:  # --realtime: each event reaches the sinks at once
        counter[0] += 1
        event = dataclasses.replace(event, seq=counter[0])
        health.events += 1
        queue.put_event(event)
        return event

    work = results_in_order(todo, settings, jobs=jobs, stop=stop, progress=progress,
                    on_event=forward if settings.realtime else None, executor=executor)
    try:
        for result in work:
            if result.interrupted:
                break
            _report(result)
            counter[0] = _deliver(result, queue=queue, seq=counter[0], health=health,
                                  sent=settings.realtime)
            queue.drain()
            if writer is not None:
                sizes = dict(p for s in sinks if (p := s.flush_position()))
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
        queue.close()
        if writer is not None:
            writer.close()
    return results


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
        + (f" ({', '.join(printable(s) for s in failed)})" if failed else "")
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
