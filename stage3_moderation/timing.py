"""Week 11: where a request's time goes, measured by the server itself.

Every request gets a `Timing` (a context variable, so the tasks a request starts share it), and
each stage adds its seconds to it. The stages follow one another, so with the time nothing
measured (`other`: routing, validation, building the response) they add up to the request's time:

    read       the body arriving from the socket
    parse      JSON or multipart into a request (worker thread for large bodies)
    decode     images to pixels (worker threads)
    queue      waiting in a batcher for a batch to form and start   ┐ the item that finished last
    compute    the model call of that item's batch                  │ (a request's items go through
    resume     from the batch's end until the request runs again    ┘  their batchers side by side)
    policy     concept scores and the policy's rules
    serialize  the response to JSON bytes

They go back to the client in a `Server-Timing` header (browsers' devtools draw it) and into
Prometheus histograms on /metrics. The load generators read the header, so the benchmark puts the
server's own percentiles beside the client's.
"""

import contextvars
import time
from contextlib import contextmanager

STAGES = ("read", "parse", "decode", "queue", "compute", "resume", "policy", "serialize")
current = contextvars.ContextVar("timing", default=None)


class Timing:
    def __init__(self):
        self.start = time.perf_counter()
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.last_item_done = -1.0  # when the item on the critical path left its batcher

    def item(self, queued, started, finished):
        """A batcher's item came back: if it came back last of the request's items so far, its
        queue, compute and resume times are the request's."""
        now = time.perf_counter()
        if finished >= self.last_item_done:
            self.last_item_done = finished
            self.seconds.update(queue=started - queued, compute=finished - started, resume=now - finished)

    def breakdown(self, total):
        """Seconds per stage, `other` (the rest) and `total`."""
        return {**self.seconds, "other": total - sum(self.seconds.values()), "total": total}

    def header(self, total):
        """The Server-Timing value: `read;dur=0.412, parse;dur=0.030, ...` in milliseconds."""
        return ", ".join(f"{name};dur={seconds * 1000:.3f}" for name, seconds in self.breakdown(total).items())


@contextmanager
def stage(name):
    """Adds the block's time to the running request's stage `name` (no request: nothing)."""
    timing, start = current.get(), time.perf_counter()
    try:
        yield
    finally:
        if timing is not None:
            timing.seconds[name] += time.perf_counter() - start


def parse_header(value):
    """{stage: milliseconds} from a Server-Timing value."""
    pairs = (part.strip().split(";dur=") for part in value.split(","))
    return {name: float(ms) for name, ms in pairs}
