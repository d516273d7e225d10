"""Week 10: the moderation API on uvicorn, held to the HTTP limits a server facing clients sets.

    python -m stage3_moderation.serve --host 127.0.0.1 --port 8000     # what `make serve` runs

uvicorn on its own reads a request's headers and body for as long as the client takes, and headers
of any size: one 256 MiB header line cost 51 s of CPU (the parser joins its pieces again and again)
and was answered 200; 2,000 clients trickling a byte a second held 2,000 connections open. Served
from here, each connection is held to these settings (MODERATION_* variables, settings.py); past
one, the client gets the API's error shape and the connection is closed:

  MODERATION_MAX_HEADER_BYTES  65536  the request line and headers (431)
  MODERATION_HEADER_TIMEOUT_S  10     from a connection's opening, or a request's first byte, to its
                                      last header (408)
  MODERATION_BODY_TIMEOUT_S    30     from the last header to the body's last byte (408): an 8 MiB
                                      body needs 280 kB/s
  MODERATION_KEEP_ALIVE_S      5      an idle keep-alive connection is closed (uvicorn's own timer)
  MODERATION_MAX_CONNECTIONS   512    open at once; one more is answered 503 and closed at once

A reverse proxy in front (nginx, a cloud load balancer) should set its own: it sees each client's
address, so it can also limit connections per client, which this process (behind it) cannot.
"""

import fcntl
import json
import struct
import termios
from http import HTTPStatus

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from curriculum import cli
from stage3_moderation import errors
from stage3_moderation.app import create_app
from stage3_moderation.errors import BadInput

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
LINGER_S = 1.0  # a refused client's last bytes are read and dropped this long, no more
LATE_READ_S = 0.05  # a clock that ran out with bytes unread looks again this much later


def raw_response(error):
    """The bytes of an HTTP/1.1 response with the API's error shape that closes the connection: for
    what the server answers itself, before (or instead of) the app."""
    body = json.dumps(errors.body(error)).encode()
    headers = {"content-type": "application/json", "content-length": len(body), **(error.headers or {})}
    lines = [f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}"] + [f"{k}: {v}" for k, v in headers.items()]
    return "\r\n".join([*lines, "connection: close", "", ""]).encode() + body


class LimitedHttp(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 connection (httptools) held to `settings`' limits: the bytes of a request's
    head, the time its head and its body may take to arrive, and the connections open at once.
    One instance per connection; `protocol(settings)` makes the class uvicorn is given."""

    settings = None  # set by protocol()

    def connection_made(self, transport):
        super().connection_made(transport)
        self.timer, self.reading_head, self.head_bytes, self.refused = None, True, 0, False
        limit = self.settings.max_connections
        if len(self.connections) > limit:  # this one included
            self.answer_and_close(
                errors.retry_later(f"the server holds {limit} connections: retry shortly", "overloaded", 1)
            )
            return
        self.start_clock("headers")

    def data_received(self, data):
        if self.refused:  # what is still coming of a refused request: dropped unread
            return
        if self.reading_head:
            self.head_bytes += len(data)  # exact to within the chunk that ends the head
            if self.timer is None:  # the next request on a keep-alive connection has begun
                self.start_clock("headers")
        super().data_received(data)
        limit = self.settings.max_header_bytes
        if self.reading_head and self.head_bytes > limit and not self.transport.is_closing():
            # refused as it arrives: httptools would join a long header's pieces again and again
            self.answer_and_close(
                BadInput(f"the request line and headers are over {limit:,} bytes", 431, "headers_too_large")
            )

    def on_headers_complete(self):
        self.reading_head = False
        self.start_clock("body")
        super().on_headers_complete()

    def on_message_complete(self):
        self.stop_clock()
        self.reading_head, self.head_bytes = True, 0
        super().on_message_complete()

    def connection_lost(self, exc):
        self.stop_clock()
        super().connection_lost(exc)

    def start_clock(self, part):
        self.stop_clock()
        seconds = self.settings.header_timeout_s if part == "headers" else self.settings.body_timeout_s
        self.timer = self.loop.call_later(seconds, self.time_up, part, seconds)

    def stop_clock(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def unread_bytes(self):
        """The bytes the kernel holds for this connection that the loop has not read yet."""
        if self.transport.is_closing():
            return 0
        try:
            fd = self.transport.get_extra_info("socket").fileno()
            return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, bytes(4)))[0]
        except (AttributeError, OSError, ValueError):  # closed meanwhile (a closed socket's fileno is -1)
            return 0

    def timeout_keep_alive_handler(self):
        """uvloop runs the timers that are due before it reads the sockets: after a stall (a busy
        machine, a paused VM) the next request may be here, unread. Closing then would reset it."""
        if not self.unread_bytes():
            super().timeout_keep_alive_handler()

    def time_up(self, part, seconds):
        """The request's headers or body did not arrive in time: 408 if nothing was answered yet,
        then the connection is closed; the app, if it was reading the body, sees the client gone.
        A pipelined request waits while an earlier one on its connection is being answered, and
        bytes that arrived but were not read yet (the loop was late, see above) are read first."""
        self.timer = None
        if self.unread_bytes():
            self.timer = self.loop.call_later(LATE_READ_S, self.time_up, part, seconds)
            return
        earlier = self.pipeline if part == "body" else self.cycle is not None and not self.cycle.response_complete
        if earlier:
            self.start_clock(part)
            return
        cycle = self.cycle if part == "body" else None
        error = BadInput(f"the request's {part} took longer than {seconds:g} s to arrive", 408, "request_timeout")
        self.answer_and_close(error if cycle is None or not cycle.response_started else None, cycle)

    def answer_and_close(self, error, cycle=None):
        """Sends `error` (unless None), then closes as nginx does ("lingering close"): the answer and
        the end of the stream go out, and for LINGER_S what the client still sends is read and
        dropped. Closing at once, with its request unread, would reset the connection, and a client
        still sending would never read the answer."""
        self.refused = True
        self.stop_clock()
        if cycle is not None:  # as uvicorn does when a client goes: the app's sends are dropped
            cycle.disconnected = True
            cycle.message_event.set()
        if error is not None:
            self.transport.write(raw_response(error))
        if self.transport.can_write_eof():  # TCP can; TLS cannot, and closes below
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)


def protocol(settings):
    """The LimitedHttp class held to these settings (uvicorn makes one per connection)."""
    return type("LimitedHttp", (LimitedHttp,), {"settings": settings})


def config(app, **options):
    """uvicorn's Config for the app (create_app), held to its settings' HTTP limits; options:
    uvicorn.Config's (host, port, log_level, ...)."""
    settings = app.state.moderation.settings
    return uvicorn.Config(app, http=protocol(settings), timeout_keep_alive=settings.keep_alive_s, **options)


def build_parser():
    p = cli.Parser(prog="python -m stage3_moderation.serve", description=__doc__, formatter_class=cli.RawHelp)
    p.add_argument("--host", type=cli.Text(), default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=cli.Count(0, 65535), default=8000, help="0: any free port (default 8000)")
    p.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    p.add_argument("--no-access-log", action="store_true", help="no line per request")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    app = create_app()  # MODERATION_* settings; ones that cannot work stop here in one line
    options = {"host": args.host, "port": args.port, "log_level": args.log_level, "access_log": not args.no_access_log}
    uvicorn.Server(config(app, **options)).run()


if __name__ == "__main__":
    cli.run(main)
