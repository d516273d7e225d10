"""Week 10: dynamic batching. Many small requests in, few large model calls out.

A model call on a batch of 16 costs far less than 16 calls on one (the weights are read once,
the matrix units stay busy), but requests arrive one at a time. A batcher sits between them,
the way Triton's dynamic batcher and Ray Serve's @serve.batch do:

    submit(item) -> queue -> worker: take the first item, then keep taking until
                     max_batch_size items are in hand or max_wait_ms has passed since the first,
                   -> fn(items) in a worker thread (the event loop keeps accepting requests)
                   -> each item's future gets its own result

    max_batch_size  the largest batch the model runs (bigger: more throughput, more memory)
    max_wait_ms     how long the first request may wait for company (bigger: fuller batches under
                    light load, but that much added latency)
    max_queue       requests waiting beyond it are refused at once (`Overloaded`, HTTP 503 with
                    Retry-After) instead of piling up in memory until everything times out
    timeout_s       a request not answered in time fails alone (`TimeoutError`, HTTP 504)

If fn raises on a batch, each item is retried alone, so one bad item fails only its own request.
A request whose client went away is cancelled: its future is skipped, the batch runs for the rest.
"""
import asyncio
import time
from dataclasses import dataclass


class Overloaded(Exception):
    """The queue is full: the caller should retry later (HTTP 503 + Retry-After)."""


@dataclass
class Settings:
    max_batch_size: int = 16
    max_wait_ms: float = 5.0
    max_queue: int = 256
    timeout_s: float = 30.0


class Batcher:
    def __init__(self, name, fn, settings=None, on_batch=None):
        """fn(list of items) -> list of results, same order; runs in a worker thread.
        on_batch(name, size, seconds) is called after every batch (metrics)."""
        settings = settings or Settings()
        if settings.max_batch_size < 1 or settings.max_queue < 1:
            raise ValueError("max_batch_size and max_queue must be at least 1")
        self.name, self.fn, self.settings, self.on_batch = name, fn, settings, on_batch
        self.queue = asyncio.Queue(maxsize=settings.max_queue)
        self.worker = None

    def start(self):
        if self.worker is None:
            self.worker = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.name}")

    async def stop(self):
        if self.worker is not None:
            self.worker.cancel()
            await asyncio.gather(self.worker, return_exceptions=True)
            self.worker = None

    @property
    def depth(self):
        return self.queue.qsize()

    async def submit(self, item):
        """The result of fn([item, ...]) for this item; raises Overloaded, TimeoutError or fn's error."""
        self.start()
        future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((item, future))
        except asyncio.QueueFull:
            raise Overloaded(f"the {self.name} queue is full ({self.settings.max_queue} waiting)") from None
        # wait_for cancels the future on timeout; the worker then skips it
        return await asyncio.wait_for(future, self.settings.timeout_s)

    async def _collect(self):
        """The first waiting item, then more until the batch is full or max_wait_ms has passed.
        Polling (1 ms) instead of wait_for(queue.get()): a get cancelled by a timeout can lose
        the item it was taking on Python < 3.12."""
        batch = [await self.queue.get()]
        deadline = time.monotonic() + self.settings.max_wait_ms / 1000
        while len(batch) < self.settings.max_batch_size:
            if not self.queue.empty():
                batch.append(self.queue.get_nowait())
            elif time.monotonic() < deadline:
                await asyncio.sleep(min(0.001, deadline - time.monotonic()))
            else:
                break
        return [(item, future) for item, future in batch if not future.done()]  # drop cancelled ones

    async def _run(self):
        while True:
            batch = await self._collect()
            if not batch:
                continue
            start = time.perf_counter()
            results = await asyncio.to_thread(self._call, [item for item, _ in batch])
            if self.on_batch:
                self.on_batch(self.name, len(batch), time.perf_counter() - start)
            for (_, future), result in zip(batch, results):
                if future.done():  # cancelled while the batch ran
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def _call(self, items):
        """fn on the batch; if that raises, fn on each item alone, so only the bad ones fail."""
        try:
            results = self.fn(items)
            if len(results) != len(items):
                raise RuntimeError(f"{self.name}: fn returned {len(results)} results for {len(items)} items")
            return results
        except Exception as e:
            return [e] if len(items) == 1 else [self._one(item) for item in items]

    def _one(self, item):
        try:
            return self.fn([item])[0]
        except Exception as e:
            return e
