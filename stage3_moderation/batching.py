"""Week 10: dynamic batching. Many small requests in, few large model calls out.

A model call on a batch of 16 costs far less than 16 calls on one (the weights are read once,
the matrix units stay busy), but requests arrive one at a time. A batcher sits between them,
the way Triton's dynamic batcher and Ray Serve's @serve.batch do:

    submit(item) -> queue -> worker: take the first item, then keep taking until
                     max_batch_size items are in hand or max_wait_ms has passed since the first
                     (or, with `coming`, no request is on its way to bring more),
                   -> wait for a model-call slot (`slots`, shared with the other stages' batchers),
                      and take what arrived meanwhile, up to max_batch_size
                   -> fn(items) in a worker thread (the event loop keeps accepting requests),
                      or awaited on the loop when fn is a coroutine function (its model runs elsewhere)
                   -> each item's future gets its own result

Two rules came from measuring this batcher against LitServe (docs/week11.md, "the batchers people
deploy"). A batch closes when its model call can start, not when its wait ends: a batch that closed
and then queued behind another stage's call left out everything that arrived while it queued
(LitServe's worker takes its batch only once it is free). And a batch waits for company only while
some is coming: the service counts the requests it has read and is still parsing and decoding, and
when there are none, the wait would only add max_wait_ms to a lone request.

    max_batch_size  the largest batch the model runs (bigger: more throughput, more memory)
    max_wait_ms     how long the first request may wait for company (bigger: fuller batches under
                    light load, but that much added latency)
    max_queue       requests waiting beyond it are refused at once (`Overloaded`, HTTP 503 with
                    Retry-After) instead of piling up in memory until everything times out
    timeout_s       a request not answered in time fails alone (`TimeoutError`, HTTP 504)

If fn raises on a batch, each item is retried alone, so one bad item fails only its own request.
A submit that is cancelled (its client went away) or times out before its turn leaves the queue
at once: its slot is free and its item is never computed (`dropped` counts them). A request made
of several items waits for them with `all_or_none`, so when one is refused or fails, its
siblings are cancelled, and so dropped, too.

`PixelBudget` bounds the other thing a request holds while it waits: decoded image pixels, in fair
shares per client.
"""

import asyncio
import inspect
import time
from collections import deque
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

from stage3_moderation import timing


class Overloaded(Exception):
    """No room for the work now: the caller should retry later (HTTP 503 + Retry-After)."""


@dataclass
class Settings:
    max_batch_size: int = 16
    max_wait_ms: float = 5.0
    max_queue: int = 256
    timeout_s: float = 30.0
    # batches in flight at once: one in a process whose model call takes every core; the Ray Serve
    # ingress (ray_app.py) runs as many as its model deployment has replicas to run them
    concurrency: int = 1


@dataclass(eq=False)  # compared by identity: the queue must never compare items (images, arrays)
class Entry:
    item: object
    future: asyncio.Future
    queued: float = field(default_factory=time.perf_counter)
    started: float = 0.0  # set when its batch's model call starts, and finished when it ends
    finished: float = 0.0


class Batcher:
    def __init__(self, name, fn, settings=None, on_batch=None, on_drop=None, on_item=None, slots=None, coming=None):
        """fn(list of items) -> list of results, same order; runs in a worker thread, or, when it is a
        coroutine function (a call to a model elsewhere, ray_app.py), is awaited on the event loop.
        on_batch(name, size, seconds) is called after every batch, on_drop(name) for every item
        that left the queue uncomputed, on_item(name, queue seconds) for every item answered (metrics).
        slots: an asyncio.Semaphore of the model calls that may run at once, shared by the batchers
        whose calls take the same cores (None: this batcher's own `concurrency` alone limits them).
        coming: () -> how many requests are on their way to the batchers (read and being decoded):
        a batch waits for company only while some is (None: it always waits up to max_wait_ms)."""
        settings = settings or Settings()
        if min(settings.max_batch_size, settings.max_queue, settings.concurrency) < 1:
            raise ValueError("max_batch_size, max_queue and concurrency must be at least 1")
        self.name, self.fn, self.settings = name, fn, settings
        self.on_batch, self.on_drop, self.on_item = on_batch, on_drop, on_item
        self.slots, self.coming = slots, coming
        self.waiting = deque()  # Entry, oldest first
        self.arrived = asyncio.Event()
        self.workers = []
        self.computed = self.dropped = 0

    def start(self):
        if not self.workers:
            loop = asyncio.get_running_loop()
            self.workers = [
                loop.create_task(self._run(), name=f"batcher-{self.name}-{i}") for i in range(self.settings.concurrency)
            ]

    async def stop(self):
        for worker in self.workers:
            worker.cancel()
        await asyncio.gather(*self.workers, return_exceptions=True)
        self.workers = []

    @property
    def depth(self):
        return len(self.waiting)

    async def submit(self, item):
        """The result of fn([item, ...]) for this item; raises Overloaded, TimeoutError or fn's error."""
        self.start()
        if len(self.waiting) >= self.settings.max_queue:
            raise Overloaded(f"the {self.name} queue is full ({self.settings.max_queue} waiting)")
        entry = Entry(item, asyncio.get_running_loop().create_future())
        self.waiting.append(entry)
        self.arrived.set()
        try:
            # wait_for cancels the future on timeout, and when this submit itself is cancelled
            result = await asyncio.wait_for(entry.future, self.settings.timeout_s)
        except (asyncio.CancelledError, asyncio.TimeoutError):
            if entry in self.waiting:  # not taken into a batch yet: free the slot, never compute it
                self.waiting.remove(entry)
                self._drop()
            raise
        if self.on_item:
            self.on_item(self.name, entry.started - entry.queued)
        if (request := timing.current.get()) is not None:
            request.item(entry.queued, entry.started, entry.finished)
        return result

    async def _collect(self):
        """The first waiting item, then more until the batch is full, or max_wait_ms has passed since
        it was taken, or (with `coming`) no request is on its way to bring more."""
        while not self.waiting:
            self.arrived.clear()
            await self.arrived.wait()
        batch = [self.waiting.popleft()]
        deadline = time.monotonic() + self.settings.max_wait_ms / 1000
        while len(batch) < self.settings.max_batch_size:
            if self.waiting:
                batch.append(self.waiting.popleft())
                continue
            if self.coming is not None and not self.coming():
                break  # no company is on its way: waiting would only delay this batch
            if (remaining := deadline - time.monotonic()) <= 0:
                break
            # woken by the next arrival or the deadline, whichever comes first: no polling, which
            # cost CPU on every millisecond of the wait and took a new item up to a millisecond late
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), remaining)
            except asyncio.TimeoutError:
                break
        return batch

    def _top_up(self, batch):
        """The batch as its model call starts: what arrived while it waited for its turn joins it,
        up to max_batch_size, and what was cancelled meanwhile leaves it."""
        while len(batch) < self.settings.max_batch_size and self.waiting:
            batch.append(self.waiting.popleft())
        for entry in [e for e in batch if e.future.done()]:
            batch.remove(entry)
            self._drop()
        return batch

    def _drop(self):
        self.dropped += 1
        if self.on_drop:
            self.on_drop(self.name)

    async def _run(self):
        while True:
            batch = await self._collect()
            # the batch closes when a model call can start: while the cores run another, it grows
            async with self.slots or nullcontext():
                batch = self._top_up(batch)
                if not batch:
                    continue
                start = time.perf_counter()
                results = await self._call([entry.item for entry in batch])
                end = time.perf_counter()
            self.computed += len(batch)
            if self.on_batch:
                self.on_batch(self.name, len(batch), end - start)
            for entry, result in zip(batch, results):
                entry.started, entry.finished = start, end
                if entry.future.done():  # cancelled while the batch ran
                    continue
                if isinstance(result, BaseException):
                    entry.future.set_exception(result)
                else:
                    entry.future.set_result(result)

    async def model_call(self, items):
        """fn(items), awaited on the event loop when fn is a coroutine function, else in a worker thread."""
        if inspect.iscoroutinefunction(self.fn):
            return await self.fn(items)
        return await asyncio.to_thread(self.fn, items)

    async def _call(self, items):
        """fn on the batch; if that raises, fn on each item alone, so only the bad ones fail."""
        try:
            results = await self.model_call(items)
            if len(results) != len(items):
                raise RuntimeError(f"{self.name}: fn returned {len(results)} results for {len(items)} items")
            return results
        except Exception as e:
            return [e] if len(items) == 1 else [await self._one(item) for item in items]

    async def _one(self, item):
        try:
            return (await self.model_call([item]))[0]
        except Exception as e:
            return e


async def all_or_none(*awaitables):
    """Like asyncio.gather, but the first failure cancels the rest (as asyncio.TaskGroup does from
    Python 3.11): the siblings of a refused or failed item leave their queues instead of being
    computed for a request that will get an error anyway. Cancelling the caller cancels them all."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    if not tasks:
        return []
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()  # a no-op for the finished ones
        await asyncio.gather(*tasks, return_exceptions=True)  # the cancelled ones have left their queues
    failed = [t.exception() for t in tasks if not t.cancelled() and t.exception()]
    if failed:
        raise failed[0]
    return [task.result() for task in tasks]


class PixelBudget:
    """Decoded pixels in flight across the process, shared fairly among clients. A request takes its
    cost (width × height × frames of every image, read from the headers before anything is decoded)
    for as long as it runs, on behalf of its client (app.py: the API key when keys are set, else
    the client's address).

    With n clients holding pixels once a request is admitted (its own counted), a share is
    limit / (n + 1): equal shares, and one kept for a client yet to come. A request is admitted when
      - the pixels in flight stay within limit - share, so a newcomer finds room, and
      - its client held nothing before it, or stays within its share: one request of any allowed
        size, more at once only within the share, so parallel requests cannot take what others need.
    Otherwise it is refused at once (Overloaded: 503 + Retry-After) instead of growing the memory
    until the process is killed. First come, first served let two clients looping on the largest
    requests hold all of it, and about 97% of everyone else's requests got 503; now the second such
    request waits for the first, and the rest of the budget serves the others."""

    def __init__(self, limit):
        self.limit, self.used = limit, 0
        self.held = {}  # client -> the pixels its running requests hold; only clients holding some

    @contextmanager
    def hold(self, pixels, client):
        if not pixels:  # a text needs no pixels: nothing to share
            yield
            return
        held = self.held.get(client, 0)
        share = self.limit // (len(self.held) + (not held) + 1)
        if self.used + pixels > self.limit - share or (held and held + pixels > share):
            raise Overloaded(
                f"{self.used:,} decoded pixels are in flight, {held:,} of them this client's; {pixels:,} more "
                f"would pass its fair share of the limit of {self.limit:,} (a share is kept for others)"
            )
        self.used += pixels
        self.held[client] = held + pixels
        try:
            yield
        finally:
            self.used -= pixels
            self.held[client] -= pixels
            if not self.held[client]:
                del self.held[client]
