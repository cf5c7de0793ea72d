"""The WebSocket server: one connection per session, the protocol of docs/protocol.md.

    server = Server(manager)                 # a SessionManager over an Engine
    async with server.serving("127.0.0.1", 8765):
        ...                                  # clients connect; the manager ticks in the background

A connection says hello, gets `ready` (or a refusal), then sends binary chunks and gets one binary
reply per tick it takes part in. A malformed message gets an error and the session goes on; a bad
hello or token ends the connection; none of it touches the other sessions. Messages above
`protocol.max_message_bytes` are cut off by the WebSocket layer (close code 1009).

Everything a client can hold is bounded (`serve.*`, docs/protocol.md "Limits"): open connections,
handshakes in flight, wrong tokens per address, its outbox, its typed-text backlog, and the time one
message to it may take. `GET /healthz` and `GET /metrics` (Prometheus text) on the same port show the
server's state.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import ipaddress
import time
from collections.abc import AsyncIterator

import numpy as np
import websockets
from absl import logging
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from interaction_jax import stream
from interaction_jax.serve import protocol
from interaction_jax.serve.manager import Closed, EngineFailed, LiveSession, Notice, Refused, SessionManager
from interaction_jax.serve.protocol import ProtocolError
from interaction_jax.stream import chunk_samples

MAX_THROTTLED_ADDRESSES = 4096  # addresses whose wrong tokens are remembered (the oldest are forgotten)
TICK_QUANTILES = (0.5, 0.9, 0.99)


class ServerFailed(RuntimeError):
    """The server stopped because its engine failed (`interaction-jax serve` exits non-zero)."""


def check_bind(host: str, auth_token: str | None) -> None:
    """Refuse to expose a token-less server beyond this machine (the CLI asks before loading the model)."""
    if not is_loopback(host) and not auth_token:
        raise ValueError(f"binding {host} exposes the model beyond this machine: pass an auth token (--auth-token)")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def max_chunks(cfg, max_len: int) -> int:
    """How many chunks of the stream fit in `max_len` cache slots."""
    k = 0
    while stream.chunk_start(cfg.stream, k + 1) <= max_len:
        k += 1
    return k


class Server:
    def __init__(
        self, manager: SessionManager, *, auth_token: str | None = None, allowed_origins: tuple[str, ...] | None = None
    ):
        self.manager, self.cfg = manager, manager.cfg
        self.limits = self.cfg.serve  # the serve.* limits the server enforces (tests narrow them)
        self.auth_token = auth_token
        self.allowed_origins = tuple(self.limits.allowed_origins if allowed_origins is None else allowed_origins)
        self.connections = 0  # accepted so far
        self.open_connections = 0
        self.handshakes = 0  # connections between accept and ready (or refusal)
        self.errors: collections.Counter[str] = collections.Counter()  # error code sent → count
        self._token_failures: dict[str, collections.deque[float]] = {}  # address → times of wrong tokens
        self._senders: set[asyncio.Task] = set()  # each session's outbox sender
        self.failed = asyncio.Event()  # the engine failed: the server stops (see serve_until_stopped)

    @contextlib.asynccontextmanager
    async def serving(self, host: str | None = None, port: int | None = None) -> AsyncIterator[websockets.Server]:
        """Warm the engine up, then listen on host:port (serve.host / serve.port by default) and tick until
        the block exits. No session is accepted before the engine is warm."""
        host = self.cfg.serve.host if host is None else host
        port = self.cfg.serve.port if port is None else port
        check_bind(host, self.auth_token)
        await self.manager.warm_up()
        ticking = asyncio.get_running_loop().create_task(self.manager.run())
        ticking.add_done_callback(self._ticking_done)
        try:
            async with serve(
                self.handle,
                host,
                port,
                max_size=protocol.max_message_bytes(self.cfg),
                # None: a client that sends no Origin (not a browser) may connect; browsers send one.
                origins=[None, *self.allowed_origins],
                process_request=self._http,
            ) as server:
                try:
                    yield server
                finally:  # tell the sessions before the WebSocket server closes their connections (1001)
                    self.manager.close_all("server shutting down", "shutdown")
                    if self._senders:
                        await asyncio.wait(self._senders, timeout=self.limits.send_timeout_s)
        finally:
            ticking.cancel()
            with contextlib.suppress(asyncio.CancelledError, EngineFailed):  # a failure is in manager.failure
                await ticking
            await self.manager.shutdown()

    def _ticking_done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            if not isinstance(task.exception(), EngineFailed):  # anything else is a bug of the loop itself
                self.manager.fail(EngineFailed(f"the tick loop stopped: {task.exception()!r}"))
            self.failed.set()

    # -- the handshake

    async def _refuse(self, ws: ServerConnection, error: ProtocolError, close_code: int = 1008) -> None:
        self.errors[error.code] += 1
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.send(error.to_message())
            await ws.close(close_code, error.code)

    def _address(self, ws: ServerConnection) -> str:
        return str(ws.remote_address[0]) if ws.remote_address else "?"

    def _throttled(self, address: str, now: float) -> float:
        """Seconds until `address` may try a token again (0: it may now)."""
        sv = self.limits
        failures = self._token_failures.get(address)
        if failures is None:
            return 0.0
        while failures and failures[0] <= now - sv.token_window_s:
            failures.popleft()
        if not failures:
            del self._token_failures[address]
            return 0.0
        return failures[0] + sv.token_window_s - now if len(failures) >= sv.token_failures else 0.0

    def _token_ok(self, address: str, token: str | None) -> bool:
        if hmac.compare_digest((token or "").encode(), self.auth_token.encode()):
            return True
        failures = self._token_failures.setdefault(address, collections.deque(maxlen=self.limits.token_failures))
        failures.append(time.monotonic())
        if len(self._token_failures) > MAX_THROTTLED_ADDRESSES:
            del self._token_failures[next(iter(self._token_failures))]
        return False

    async def handle(self, ws: ServerConnection) -> None:
        sv = self.limits
        self.connections += 1
        if self.open_connections >= sv.max_connections:
            await self._refuse(
                ws, ProtocolError("capacity", f"{sv.max_connections} connections are open; try again later", True), 1013
            )
            return
        if self.handshakes >= sv.max_handshakes:
            message = f"{sv.max_handshakes} connections are saying hello; try again later"
            await self._refuse(ws, ProtocolError("capacity", message, True), 1013)
            return
        self.open_connections += 1
        self.handshakes += 1
        live = None
        try:
            try:
                live, hello = await self._handshake(ws)
            finally:
                self.handshakes -= 1
            if live is not None:
                await self._session(ws, live, hello)
        finally:
            self.open_connections -= 1
            if live is not None:  # every path out of a session that got a slot gives the slot back
                self.manager.close(live, "the client disconnected", kind="disconnect")

    async def _handshake(self, ws: ServerConnection) -> tuple[LiveSession | None, protocol.Hello | None]:
        """hello → ready: the session, or (None, None) when the connection ended or was refused."""
        sv = self.limits
        address = self._address(ws)
        try:
            message = await asyncio.wait_for(ws.recv(), sv.hello_timeout_s)
        except TimeoutError:
            await self._refuse(ws, ProtocolError("no_hello", f"no hello within {sv.hello_timeout_s:g} s", True))
            return None, None
        except websockets.ConnectionClosed:
            return None, None
        if self.auth_token and (wait := self._throttled(address, time.monotonic())):
            # Before the token is even compared: a guesser learns nothing more until the window passes.
            message = f"too many wrong tokens from {address}: try again in {wait:.0f} s"
            await self._refuse(ws, ProtocolError("throttled", message, True))
            return None, None
        try:
            hello = protocol.decode_hello(
                message,
                self.cfg,
                video_available=self.cfg.stream.video,
                token_ok=(lambda token: self._token_ok(address, token)) if self.auth_token else None,
            )
        except ProtocolError as e:
            await self._refuse(ws, e)
            return None, None
        try:
            live = await self.manager.open(seed=hello.seed)
        except Refused as r:
            await self._refuse(ws, ProtocolError(r.code, r.message, True), 1013)  # 1013: try again later
            return None, None
        try:
            await ws.send(self._ready(live, hello))
        except BaseException as e:  # gone (or cancelled) before ready: the slot must not wait for the idle timeout
            self.manager.close(live, "the client disconnected during the handshake", kind="disconnect")
            if isinstance(e, websockets.ConnectionClosed):
                return None, None
            raise
        return live, hello

    async def _session(self, ws: ServerConnection, live: LiveSession, hello: protocol.Hello) -> None:
        sender = asyncio.create_task(self._send_outbox(ws, live))
        self._senders.add(sender)
        sender.add_done_callback(self._senders.discard)
        reason, kind = "the client disconnected", "disconnect"
        try:
            async for message in ws:
                try:
                    if isinstance(message, str):
                        protocol.decode_control(message)  # a close: the only control message after hello
                        reason, kind = "the client closed the session", "client"
                        break
                    self.manager.submit(live, protocol.decode_chunk(message, self.cfg, hello))
                except ProtocolError as e:
                    self.errors[e.code] += 1
                    self.manager.deliver(live, Notice(e.to_message()))
                except Refused as r:
                    self.errors[r.code] += 1
                    self.manager.deliver(
                        live, Notice(protocol.control("error", code=r.code, message=r.message, fatal=False))
                    )
        except websockets.ConnectionClosed:
            pass
        finally:
            self.manager.close(live, reason, kind)
            await sender

    def _ready(self, live: LiveSession, hello: protocol.Hello) -> str:
        s = self.cfg.stream
        return protocol.control(
            "ready",
            session=live.id,
            version=protocol.VERSION,
            sample_rate=s.sample_rate,
            chunk_ms=s.chunk_ms,
            chunk_samples=chunk_samples(s),
            audio_format=hello.audio_format,
            video=hello.video,
            frame_shape=[s.frame_height, s.frame_width, 3] if hello.video else None,
            video_every=s.video_every if s.video else None,
            clock=self.manager.clock_mode,
            max_chunks=max_chunks(self.cfg, self.manager.engine.max_len),
            max_text_bytes=protocol.MAX_TEXT_BYTES,
            max_text_backlog=self.manager.max_text_backlog,
            max_message_bytes=protocol.max_message_bytes(self.cfg),
        )

    async def _send_outbox(self, ws: ServerConnection, live: LiveSession) -> None:
        """Forward the session's replies, notices and finally its close, in order. A message the client does
        not take within serve.send_timeout_s (it stopped reading) drops the client."""
        timeout = self.limits.send_timeout_s
        try:
            while True:
                item = await live.outbox.get()
                if isinstance(item, Closed):
                    await asyncio.wait_for(ws.send(protocol.control("closed", reason=item.reason)), timeout)
                    await ws.close(item.code, item.kind)
                    return
                text = item.text if isinstance(item, Notice) else protocol.encode_reply(item)
                await asyncio.wait_for(ws.send(text), timeout)
        except TimeoutError:
            self.manager.close(live, f"the client took no message for {timeout:g} s", kind="slow_client")
            logging.info("session %s: dropped, the client does not read", live.id)
            await ws.close(1008, "slow_client")
        except websockets.ConnectionClosed:
            logging.info("session %s: connection gone before its outbox was sent", live.id)

    # -- status

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        """GET /healthz and /metrics; anything else goes on to the WebSocket handshake."""
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            if self.manager.failure is not None:
                return connection.respond(503, f"engine failed: {self.manager.failure}\n")
            return connection.respond(200, "ok\n")
        if path == "/metrics":
            response = connection.respond(200, self.metrics())
            del response.headers["Content-Type"]  # respond() set text/plain; Prometheus wants its version too
            response.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
            return response
        return None

    def metrics(self) -> str:
        """The server's state in Prometheus text format (docs/protocol.md, "Status")."""
        m, engine = self.manager, self.manager.engine
        lines: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: dict[str, float] | float) -> None:
            lines.extend((f"# HELP interaction_jax_{name} {help_}", f"# TYPE interaction_jax_{name} {kind}"))
            for labels, value in samples.items() if isinstance(samples, dict) else [("", samples)]:
                lines.append(f"interaction_jax_{name}{labels} {value:g}")

        metric("up", "gauge", "1 while the engine ticks, 0 once it has failed", float(m.failure is None))
        metric("sessions_open", "gauge", "open sessions", len(m.sessions))
        metric("slots_free", "gauge", "free session slots of the engine", engine.max_sessions - len(m.sessions))
        metric("connections_open", "gauge", "open WebSocket connections", self.open_connections)
        metric("handshakes_in_flight", "gauge", "connections between accept and ready", self.handshakes)
        metric("connections_total", "counter", "connections accepted", self.connections)
        metric("ticks_total", "counter", "engine ticks", m.ticks)
        metric("replies_total", "counter", "replies handed to sessions", m.answered)
        seconds = np.asarray(m.tick_seconds, np.float64)
        metric(
            "tick_seconds",
            "summary",
            f"tick latency over the last {m.tick_seconds.maxlen} ticks",
            {
                f'{{quantile="{q:g}"}}': float(np.quantile(seconds, q)) if seconds.size else float("nan")
                for q in TICK_QUANTILES
            },
        )
        metric("errors_total", "counter", "errors sent to clients, by code", _labelled("code", self.errors))
        metric("chunks_refused_total", "counter", "chunks refused, by code", _labelled("code", m.refused))
        metric("sessions_closed_total", "counter", "sessions closed, by reason", _labelled("reason", m.closed_by_kind))
        metric("compilations", "gauge", "programs the engine's tick has compiled", getattr(engine, "compilations", 0))
        return "\n".join(lines) + "\n"


def _labelled(label: str, counts: collections.Counter) -> dict[str, float]:
    return {f'{{{label}="{k}"}}': v for k, v in sorted(counts.items())}


async def serve_until_stopped(server: Server, stop: asyncio.Event, host=None, port=None, on_listening=None) -> None:
    """Serve until `stop` is set; raise ServerFailed when the engine fails first (every client has been
    told why and closed)."""
    async with server.serving(host, port) as listening:
        if on_listening is not None:
            on_listening(listening)
        waits = [asyncio.create_task(stop.wait()), asyncio.create_task(server.failed.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
    if server.manager.failure is not None:
        raise ServerFailed(f"the engine failed: {server.manager.failure}")


async def serve_forever(cfg, params, *, host: str | None = None, port: int | None = None, auth_token=None) -> None:
    """`interaction-jax serve`: warm the engine up, listen, and serve until SIGINT or SIGTERM."""
    import signal

    from interaction_jax.serve.agents import make_agent
    from interaction_jax.serve.engine import Engine

    check_bind(cfg.serve.host if host is None else host, auth_token)
    engine = Engine(cfg, params)
    engine.warm_up()  # compile before the first client waits for it
    server = Server(SessionManager(engine, agent=make_agent(cfg)), auth_token=auth_token)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def banner(listening) -> None:
        bound_host, bound_port = listening.sockets[0].getsockname()[:2]
        s = cfg.serve
        print(
            f"serving ws://{bound_host}:{bound_port} · {engine.max_sessions} sessions × {engine.max_len} tokens · "
            f"clock {server.manager.clock_mode} · agent {s.agent}{' · token required' if auth_token else ''}"
            f" · status http://{bound_host}:{bound_port}/metrics",
            flush=True,
        )

    try:
        await serve_until_stopped(server, stop, host, port, on_listening=banner)
    finally:
        print(f"stopped after {server.manager.ticks} ticks; {server.connections} connection(s)", flush=True)
