"""A fault-injecting HTTP proxy for the S3 tests.

:class:`FaultProxy` listens on 127.0.0.1 and forwards every request to an
upstream S3 server (the moto server of the test session).  A test points a
mount's ``endpoint=`` at :attr:`FaultProxy.url` and, while the mount works,
switches the proxy between behaviours from its own thread:

* rules (:class:`Rule`), each with a *kind* of fault applied to a request
  with a probability (drawn from one seeded ``random.Random``) or to every
  Nth request it matches, optionally only for some HTTP methods;
* :meth:`FaultProxy.down`: every connection is reset as soon as it is
  accepted or sends a request (a server that is not there);
* :meth:`FaultProxy.hang`: every request is read and never answered until
  the proxy leaves that state (a server that accepts and stalls);
* :meth:`FaultProxy.rewrite`: every answer is passed through a function
  that may change its status, headers and body (a garbled header, an
  entry of a listing whose fields do not parse: answers moto never gives);
* :meth:`FaultProxy.clear`: everything passes again.

The kinds of fault, and what each one looks like to the client:

``drop``
    the request is read and the connection closed without an answer; the
    request never reached the server.
``lost_reply``
    the request is forwarded and carried out by the server, then the
    connection is closed without an answer (the client cannot tell whether
    its write happened).
``reset``
    the answer's headers (with the full Content-Length) and half its body
    are sent, then the connection is reset (RST).
``truncate``
    as ``reset``, but the connection is closed cleanly (FIN) after half the
    body: a short read.
``delay``
    the request is held :attr:`Rule.delay` seconds before it is forwarded
    (forwarded even if the client gave up meanwhile, as a server may carry
    out a request whose client has gone).
``error500``, ``error503``, ``slowdown``
    an S3 error answer (XML body, as S3 sends it) without forwarding:
    ``500 InternalError``, ``503 ServiceUnavailable``, ``503 SlowDown``.

``reset`` and ``truncate`` need an answer with a body of at least two
bytes (GET of an object, a listing, a multipart completion); other answers
pass untouched and are not counted.  :attr:`FaultProxy.counts` counts the
faults actually injected, per kind (and ``down`` / ``hang`` per request or
connection refused), for reports.

Only the standard library is used.  The proxy binds the loopback interface
only and forwards only to the upstream it was given.

The proxy runs in threads of the test process, so its sockets are that
process's: a fork of the test process (``subprocess``) holds copies of
them until the child execs.  While the proxy is ``down`` or ``hang``-ing
and the test process has files of a FUSE mount open, a fork can deadlock
for a while: the child's exec flushes those files, the daemon's upload
waits for an answer on a connection whose reset the child's copy of the
socket holds back, until the client's read timeout.  Do not fork in that
window (unmount with umount2(2) from the test process, for instance).
"""

from __future__ import annotations

import http.client
import http.server
import random
import socket
import socketserver
import struct
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self
from urllib.parse import urlsplit

KINDS = ("drop", "lost_reply", "reset", "truncate", "delay", "error500", "error503", "slowdown")
#: The kinds that cut an answer's body short.
BODY_KINDS = frozenset({"reset", "truncate"})
_ERRORS = {
    "error500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "error503": (503, "ServiceUnavailable", "Service is unable to handle request."),
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
}
#: Headers that belong to one hop of a connection, not to the request.
_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
    }
)
#: An idle client connection is closed after this many seconds.
IDLE_TIMEOUT = 120.0
#: How long the proxy waits for the upstream server's answer.
UPSTREAM_TIMEOUT = 120.0


#: See :meth:`FaultProxy.rewrite`.
Rewrite = Callable[[str, str, int, list[tuple[str, str]], bytes], tuple[int, list[tuple[str, str]], bytes]]


@dataclass(frozen=True)
class Rule:
    """Inject ``kind`` into the requests this rule matches.

    ``rate``: probability per matching request; ``every``: every Nth
    matching request instead (1 = all of them).  ``methods``: only these
    HTTP methods (``None``: all).  ``delay``: seconds, for ``kind="delay"``.
    ``limit``: fire at most this many times (``None``: no limit).
    """

    kind: str
    rate: float | None = None
    every: int | None = None
    methods: frozenset[str] | None = None
    delay: float = 0.0
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {', '.join(KINDS)}")
        if (self.rate is None) == (self.every is None):
            raise ValueError("a rule needs exactly one of rate= or every=")
        if self.rate is not None and not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"rate must be within 0..1, not {self.rate}")
        if self.every is not None and self.every < 1:
            raise ValueError(f"every must be at least 1, not {self.every}")
        if self.methods is not None:
            object.__setattr__(self, "methods", frozenset(m.upper() for m in self.methods))


class FaultProxy:
    """The proxy; see the module's docstring.  Every public method is
    thread-safe.  Use as a context manager, or call :meth:`close`."""

    def __init__(self, upstream: str, *, seed: int = 0):
        parts = urlsplit(upstream)
        if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"the upstream must be a plain http:// server on loopback, not {upstream}")
        self.upstream = (parts.hostname, parts.port or 80)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._random = random.Random(seed)
        self._rules: list[Rule] = []
        self._matched: Counter[int] = Counter()  # rule index -> matching requests seen
        self._fired: Counter[int] = Counter()  # rule index -> times it fired
        self._down = False
        self._hang = False
        self._closed = False
        self._rewrite: Rewrite | None = None
        #: Faults injected, per kind (plus ``down`` and ``hang``).
        self.counts: Counter[str] = Counter()
        #: Requests that reached the rules, per HTTP method (not those
        #: refused while down or held while hanging).
        self.requests: Counter[str] = Counter()
        #: The last faults injected: (monotonic time, method, path, kind).
        self.events: list[tuple[float, str, str, str]] = []
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self._thread = threading.Thread(target=self._server.serve_forever, name="faultproxy", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- switching ----------------------------------------------------------------
    def set_rules(self, *rules: Rule) -> None:
        """Replace the rules (and leave the down/hang states)."""
        with self._changed:
            self._rules = list(rules)
            self._matched.clear()
            self._fired.clear()
            self._down = self._hang = False
            self._changed.notify_all()

    def clear(self) -> None:
        """Let everything pass."""
        self.set_rules()
        self.rewrite(None)

    def rewrite(self, fn: Rewrite | None) -> None:
        """Pass every answer from upstream through ``fn(method, path,
        status, headers, body)``, which returns the (status, headers, body)
        to send instead (headers as a list of (name, value)); None: stop."""
        with self._lock:
            self._rewrite = fn

    def down(self) -> None:
        """Reset every connection and request from now on."""
        with self._changed:
            self._down, self._hang = True, False
            self._changed.notify_all()

    def hang(self) -> None:
        """Read every request and never answer it (until the state changes)."""
        with self._changed:
            self._hang, self._down = True, False
            self._changed.notify_all()

    def injected(self) -> int:
        with self._lock:
            return sum(self.counts.values())

    def report(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- used by the handler ------------------------------------------------------
    def _count(self, kind: str, method: str = "", path: str = "") -> None:
        with self._lock:
            self.counts[kind] += 1
            self.events.append((time.monotonic(), method, path, kind))
            del self.events[:-1000]

    def _is_down(self) -> bool:
        with self._lock:
            return self._down and not self._closed

    def _choose(self, method: str) -> Rule | None:
        """The rule that fires for this request, if any (first match wins)."""
        with self._lock:
            self.requests[method] += 1
            for i, rule in enumerate(self._rules):
                if rule.methods is not None and method not in rule.methods:
                    continue
                if rule.limit is not None and self._fired[i] >= rule.limit:
                    continue
                self._matched[i] += 1
                if rule.every is not None:
                    fires = self._matched[i] % rule.every == 0
                else:
                    fires = self._random.random() < rule.rate
                if fires:
                    self._fired[i] += 1
                    return rule
            return None

    def _wait_while_hanging(self) -> None:
        with self._changed:
            while self._hang and not self._closed:
                self._changed.wait()


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64
    proxy: FaultProxy

    def handle_error(self, request, client_address) -> None:
        pass  # a client that went away is part of the game


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT
    server: _Server

    def log_message(self, format: str, *args) -> None:
        pass

    # -- the connection -----------------------------------------------------------
    def handle(self) -> None:
        self._upstream: http.client.HTTPConnection | None = None
        try:
            if self.server.proxy._is_down():
                self.server.proxy._count("down")
                self._reset()
                return
            super().handle()
        except OSError:
            self.close_connection = True
        finally:
            if self._upstream is not None:
                self._upstream.close()

    def _reset(self) -> None:
        """Abort the connection with a RST (SO_LINGER 0)."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass

    def _hangup(self) -> None:
        """Close the connection cleanly (FIN), without a further byte."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- one request --------------------------------------------------------------
    def __getattr__(self, name: str):
        if name.startswith("do_"):
            return self._proxy_request
        raise AttributeError(name)

    def _proxy_request(self) -> None:
        proxy = self.server.proxy
        method = self.command
        if proxy._is_down():
            proxy._count("down", method, self.path)
            self._reset()
            return
        body = self._read_body()
        with proxy._lock:
            hanging = proxy._hang
        if hanging:
            proxy._count("hang", method, self.path)
            proxy._wait_while_hanging()
            self._reset()
            return
        rule = proxy._choose(method)
        kind = rule.kind if rule is not None else None
        if kind == "drop":
            proxy._count(kind, method, self.path)
            self._hangup()
            return
        if kind in _ERRORS:
            proxy._count(kind, method, self.path)
            self._send_error(*_ERRORS[kind])
            return
        if kind == "delay":
            proxy._count(kind, method, self.path)
            time.sleep(rule.delay)  # the injected delay itself
        status, reason, headers, answer = self._forward(method, body)
        with proxy._lock:
            rewrite = proxy._rewrite
        if rewrite is not None:
            status, headers, answer = rewrite(method, self.path, status, headers, answer)
        if kind == "lost_reply":
            proxy._count(kind, method, self.path)
            self._hangup()
            return
        cut = kind in BODY_KINDS and method != "HEAD" and len(answer) >= 2
        self.send_response_only(status, reason)
        for name, value in headers:
            self.send_header(name, value)
        if method != "HEAD":
            self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        if not cut:
            self.wfile.write(answer)
            self.wfile.flush()
            return
        proxy._count(kind, method, self.path)
        self.wfile.write(answer[: len(answer) // 2])
        self.wfile.flush()
        if kind == "reset":
            self._reset()
        else:
            self._hangup()

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _forward(self, method: str, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        """Send the request upstream (once more on a fresh connection if a
        kept-alive one turned out closed) and read the whole answer."""
        while True:
            fresh = self._upstream is None
            if fresh:
                self._upstream = http.client.HTTPConnection(*self.server.proxy.upstream, timeout=UPSTREAM_TIMEOUT)
            conn = self._upstream
            try:
                conn.putrequest(method, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    if name.lower() not in _HOP_HEADERS and name.lower() != "content-length":
                        conn.putheader(name, value)
                if body or method in ("PUT", "POST"):
                    conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body or None)
                response = conn.getresponse()
                answer = response.read()
                headers = [
                    (k, v)
                    for k, v in response.getheaders()
                    if k.lower() not in _HOP_HEADERS and (k.lower() != "content-length" or method == "HEAD")
                ]
                if response.will_close:
                    conn.close()
                    self._upstream = None
                return response.status, response.reason, headers, answer
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                conn.close()
                self._upstream = None
                if fresh:
                    raise

    def _send_error(self, status: int, code: str, message: str) -> None:
        request_id = uuid.uuid4().hex[:16].upper()
        body = (
            b""
            if self.command == "HEAD"
            else (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                f"<Error><Code>{code}</Code><Message>{message}</Message>"
                f"<RequestId>{request_id}</RequestId><HostId>faultproxy</HostId></Error>"
            ).encode()
        )
        self.send_response_only(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amz-request-id", request_id)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
