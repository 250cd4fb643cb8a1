"""Dynamic batching: the inputs of concurrent requests run through the model together.

A request hands its inputs to :meth:`Batcher.submit` and awaits its results. The first input that finds the
lane idle opens a short window (``window_s``, 5 ms by default); when it closes, or as soon as ``max_batch``
inputs wait, or as many as the lane's last batch had (its clients are back: under a steady load the same
requesters return together, and waiting longer would only idle the model), the waiting requests' inputs go to
the model as one call, in the executor, and each request gets its own rows back. While a batch runs, new
inputs gather for the next one (at most ``parallel`` batches of a lane run at once), which takes everything
gathered (up to ``max_batch``) as soon as the batch ends, with no window: under load the model is never idle
while inputs wait, and batches grow with the load by themselves. Requests whose options differ (``top_k``, ...)
go to different lanes. A request is never split: one larger than ``max_batch`` runs alone.

    >>> import asyncio, concurrent.futures
    >>> pool = concurrent.futures.ThreadPoolExecutor(2)
    >>> batcher = Batcher(lambda items, options: [x * 2 for x in items], max_batch=8, executor=pool)
    >>> async def main():
    ...     return await asyncio.gather(batcher.submit([1, 2]), batcher.submit([3]))
    >>> asyncio.run(main())
    [[2, 4], [6]]
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Batcher"]

_LAST_KEPT = 256  # lanes (option sets) whose last batch size is remembered


@dataclass
class _Waiting:
    items: list
    future: asyncio.Future


@dataclass
class _Lane:
    options: dict[str, Any]
    waiting: list[_Waiting] = field(default_factory=list)
    running: int = 0
    timer: asyncio.TimerHandle | None = None


class Batcher:
    """Batches the inputs of concurrent :meth:`submit` calls into calls of ``fn(items, options) -> results``
    (one result per item, in order), run in ``executor``. ``on_batch(n)`` is told each batch's size."""

    def __init__(self, fn: Callable[[list, dict[str, Any]], Sequence[Any]], *, max_batch: int,
                 executor: concurrent.futures.Executor, window_s: float = 0.005, parallel: int = 1,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.fn, self.max_batch, self.executor = fn, max_batch, executor
        self.window_s, self.parallel = window_s, parallel
        self.on_batch = on_batch or (lambda n: None)
        self._lanes: dict[Hashable, _Lane] = {}
        self._last: dict[Hashable, int] = {}  # lane key -> inputs of its last batch (kept when the lane is idle)

    async def submit(self, items: Sequence[Any], options: dict[str, Any] | None = None) -> list:
        """The results of ``items`` (run with ``options``, batched with other requests' items of the same
        options). An exception of the batch's call is raised in every request of that batch."""
        options = dict(options or {})
        if not items:
            return []
        key = tuple(sorted((k, repr(v)) for k, v in options.items()))
        lane = self._lanes.setdefault(key, _Lane(options))
        loop = asyncio.get_running_loop()
        entry = _Waiting(list(items), loop.create_future())
        lane.waiting.append(entry)
        waiting, last = sum(len(w.items) for w in lane.waiting), self._last.get(key)
        if waiting >= self.max_batch or (last is not None and waiting >= last and lane.running < self.parallel):
            self._start(key)
        elif lane.timer is None and lane.running < self.parallel:
            lane.timer = loop.call_later(self.window_s, self._start, key)
        try:
            return await entry.future
        except asyncio.CancelledError:  # gave up (timeout, disconnect): not run if not started yet
            if entry in lane.waiting:
                lane.waiting.remove(entry)
            raise

    def _start(self, key: Hashable) -> None:
        lane = self._lanes[key]
        if lane.timer is not None:
            lane.timer.cancel()
            lane.timer = None
        if lane.running >= self.parallel or not lane.waiting:
            return  # a running batch starts the next one when it ends
        batch, size = [], 0
        while lane.waiting and (not batch or size + len(lane.waiting[0].items) <= self.max_batch):
            entry = lane.waiting.pop(0)
            batch.append(entry)
            size += len(entry.items)
        lane.running += 1
        self._last.pop(key, None)
        self._last[key] = size  # the most recent lanes last: the oldest go first beyond _LAST_KEPT
        if len(self._last) > _LAST_KEPT:
            del self._last[next(iter(self._last))]
        self.on_batch(size)
        items = [x for entry in batch for x in entry.items]
        job = asyncio.get_running_loop().run_in_executor(self.executor, self.fn, items, lane.options)
        job.add_done_callback(lambda done: self._finish(key, batch, done))

    def _finish(self, key: Hashable, batch: list[_Waiting], job: asyncio.Future) -> None:
        lane = self._lanes[key]
        lane.running -= 1
        error = job.exception() if not job.cancelled() else asyncio.CancelledError()
        start = 0
        for entry in batch:
            n = len(entry.items)
            if not entry.future.done():
                if error is not None:
                    entry.future.set_exception(error)
                else:
                    results = job.result()
                    entry.future.set_result(list(results[start:start + n]))
            start += n
        if lane.waiting:  # what gathered while the batch ran goes now, up to max_batch: the model never waits
            self._start(key)
        elif not lane.running and lane.timer is None:
            del self._lanes[key]  # an idle lane holds nothing
