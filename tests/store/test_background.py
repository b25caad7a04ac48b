"""`Every`: a background loop that stops between runs, never in the middle of one."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from store.background import Every


async def test_stopping_lets_a_run_under_way_finish() -> None:
    started, finished = asyncio.Event(), []

    async def work() -> None:
        started.set()
        await asyncio.sleep(0.3)
        finished.append(True)

    loop = Every(0.01, work, name="test-every", failure="work failed")
    loop.start()
    await asyncio.wait_for(started.wait(), 5)
    await loop.stop()
    assert finished == [True]  # not cancelled mid-way
    assert not loop.running


async def test_stopping_wakes_the_wait_at_once() -> None:
    runs: list[float] = []

    async def work() -> None:
        runs.append(time.monotonic())

    loop = Every(3600, work, name="test-every", failure="work failed")
    loop.start()
    began = time.monotonic()
    await loop.stop()
    assert time.monotonic() - began < 1
    assert runs == []


async def test_a_run_longer_than_the_grace_is_cancelled() -> None:
    started = asyncio.Event()
    cancelled = []

    async def work() -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    loop = Every(0.01, work, name="test-every", failure="work failed")
    loop.start()
    await asyncio.wait_for(started.wait(), 5)
    await loop.stop(grace_seconds=0.1)
    assert cancelled == [True]


async def test_a_failed_run_is_logged_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    runs = []

    async def work() -> None:
        runs.append(True)
        if len(runs) == 1:
            raise RuntimeError("boom")

    caplog.set_level(logging.WARNING, logger="portcullis.background")
    loop = Every(0.01, work, name="test-every", failure="work failed")
    loop.start()
    for _ in range(500):
        if len(runs) >= 2:
            break
        await asyncio.sleep(0.01)
    await loop.stop()
    assert len(runs) >= 2
    assert [r.getMessage() for r in caplog.records] == ["work failed"]


async def test_a_wake_runs_at_once_and_the_first_run_needs_no_wait() -> None:
    runs = []
    ran = asyncio.Event()

    async def work() -> None:
        runs.append(True)
        ran.set()

    loop = Every(3600, work, name="test-every", failure="work failed", run_first=True)
    loop.start()
    await asyncio.wait_for(ran.wait(), 5)  # on start, before any wait
    ran.clear()
    loop.wake()
    await asyncio.wait_for(ran.wait(), 5)  # woken long before the hour
    await loop.stop()
    assert len(runs) == 2
    assert loop.stopping


async def test_a_long_run_sees_stopping_between_its_steps() -> None:
    steps = []
    started = asyncio.Event()

    async def work() -> None:
        started.set()
        while not loop.stopping:
            steps.append(True)
            await asyncio.sleep(0.01)

    loop = Every(0.01, work, name="test-every", failure="work failed")
    loop.start()
    await asyncio.wait_for(started.wait(), 5)
    await loop.stop(grace_seconds=5)  # ends at the next step, far within the grace
    assert steps
