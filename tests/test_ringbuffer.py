"""The audio ring buffer: fixed memory, one producer, one consumer, counted overflow."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from device.ringbuffer import RingBuffer


def ramp(start: int, n: int) -> np.ndarray:
    """Samples whose value is their absolute index (exact in float32 below 2**24)."""
    return np.arange(start, start + n, dtype=np.float32)


def test_reads_return_what_was_written_across_wraparound():
    ring = RingBuffer(100)
    rng = np.random.default_rng(0)
    written = read = 0
    for _ in range(200):
        n = int(rng.integers(1, 40))
        ring.write(ramp(written, n))
        written += n
        start, samples = ring.read()
        assert start == read
        np.testing.assert_array_equal(samples, ramp(read, len(samples)))
        read += len(samples)
    assert read == written and ring.overrun_samples == 0


def test_read_respects_max_samples():
    ring = RingBuffer(50)
    ring.write(ramp(0, 30))
    assert ring.read(max_samples=10)[0] == 0
    start, samples = ring.read()
    assert start == 10 and len(samples) == 20


def test_overflow_drops_oldest_unread_samples_and_counts_them():
    ring = RingBuffer(100)
    for k in range(10):  # 250 samples, 25 at a time, none read
        ring.write(ramp(25 * k, 25))
    start, samples = ring.read()
    assert start == 250 - 100
    np.testing.assert_array_equal(samples, ramp(start, 100))
    assert ring.overrun_samples == start


def test_block_larger_than_capacity_keeps_its_newest_samples():
    ring = RingBuffer(64)
    ring.write(ramp(0, 1000))
    assert ring.written == 1000
    start, samples = ring.read()
    assert start >= 1000 - 64
    np.testing.assert_array_equal(samples, ramp(start, 1000 - start))


def test_get_returns_history_for_clips_clamped_to_what_is_held():
    ring = RingBuffer(100)
    for k in range(8):
        ring.write(ramp(20 * k, 20))
        ring.read()
    start, samples = ring.get(100, 150)
    assert start == 100
    np.testing.assert_array_equal(samples, ramp(100, 50))
    start, samples = ring.get(0, 200)  # older than held, and not yet written
    assert start == 160 - 100 and len(samples) == 100
    np.testing.assert_array_equal(samples, ramp(60, 100))


def test_reset_continues_at_a_new_index():
    ring = RingBuffer(10)
    ring.write(ramp(0, 5))
    ring.reset(1000)
    assert ring.read()[1].size == 0
    ring.write(np.ones(3, np.float32))
    assert ring.read()[0] == 1000


def test_wait_wakes_on_write_and_times_out():
    ring = RingBuffer(10)
    assert ring.wait(0.01) is False
    threading.Timer(0.05, lambda: ring.write(np.ones(2, np.float32))).start()
    assert ring.wait(2.0) is True


def test_producer_thread_and_consumer_never_see_torn_data():
    """A fast producer thread and a slow consumer: every sample read is the one written at
    that index."""
    ring = RingBuffer(4096)
    total, block = 400_000, 160
    done = threading.Event()

    def produce():
        for start in range(0, total, block):
            ring.write(ramp(start, block))
            if start % (block * 50) == 0:
                time.sleep(0.0005)
        done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    expected = got = 0
    while not (done.is_set() and ring.read_position == ring.written):
        ring.wait(0.01)
        start, samples = ring.read()
        assert start >= expected
        np.testing.assert_array_equal(samples, ramp(start, len(samples)))
        expected = start + len(samples)
        got += len(samples)
        if got % 7 == 0:
            time.sleep(0.001)  # fall behind now and then
    producer.join()
    assert got + ring.overrun_samples == total


def test_capacity_must_be_positive():
    with pytest.raises(ValueError):
        RingBuffer(0)
