"""The WebSocket server: one connection per session, the protocol of docs/protocol.md.

    server = Server(manager)                 # a SessionManager over an Engine
    async with server.serving("127.0.0.1", 8765):
        ...                                  # clients connect; the manager ticks in the background

A connection says hello, gets `ready` (or a refusal), then sends binary chunks and gets one binary
reply per tick it takes part in. A malformed message gets an error and the session goes on; a bad
hello or token ends the connection; none of it touches the other sessions. Messages above
`protocol.max_message_bytes` are cut off by the WebSocket layer (close code 1009).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
from collections.abc import AsyncIterator

import websockets
from absl import logging
from websockets.asyncio.server import ServerConnection, serve

from interaction_jax import stream
from interaction_jax.data.episode import chunk_samples
from interaction_jax.serve import protocol
from interaction_jax.serve.manager import Closed, LiveSession, Notice, Refused, SessionManager
from interaction_jax.serve.protocol import ProtocolError

HELLO_TIMEOUT_S = 10.0


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
    def __init__(self, manager: SessionManager, *, auth_token: str | None = None):
        self.manager, self.cfg = manager, manager.cfg
        self.auth_token = auth_token
        self.connections = 0
        self.errors: dict[str, int] = {}  # error code → count, for tests and logs

    @contextlib.asynccontextmanager
    async def serving(self, host: str | None = None, port: int | None = None) -> AsyncIterator[websockets.Server]:
        """Listen on host:port (serve.host / serve.port by default) and tick until the block exits."""
        host = self.cfg.serve.host if host is None else host
        port = self.cfg.serve.port if port is None else port
        if not is_loopback(host) and not self.auth_token:
            raise ValueError(f"binding {host} exposes the model beyond this machine: pass an auth token (--auth-token)")
        ticking = asyncio.get_running_loop().create_task(self.manager.run())
        try:
            async with serve(self.handle, host, port, max_size=protocol.max_message_bytes(self.cfg)) as server:
                yield server
        finally:
            ticking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticking
            await self.manager.shutdown()

    async def _error(self, ws: ServerConnection, error: ProtocolError) -> None:
        self.errors[error.code] = self.errors.get(error.code, 0) + 1
        await ws.send(error.to_message())
        if error.fatal:
            await ws.close(1008, error.code)

    async def handle(self, ws: ServerConnection) -> None:
        self.connections += 1
        try:
            message = await asyncio.wait_for(ws.recv(), HELLO_TIMEOUT_S)
        except TimeoutError:
            await self._error(ws, ProtocolError("no_hello", f"no hello within {HELLO_TIMEOUT_S:g} s", True))
            return
        except websockets.ConnectionClosed:
            return
        try:
            hello = protocol.decode_hello(message, self.cfg, video_available=self.cfg.stream.video)
            if self.auth_token and not hmac.compare_digest((hello.token or "").encode(), self.auth_token.encode()):
                raise ProtocolError("bad_token", "missing or wrong token", True)
        except ProtocolError as e:
            await self._error(ws, e)
            return
        try:
            live = await self.manager.open(seed=hello.seed)
        except Refused as r:
            self.errors[r.code] = self.errors.get(r.code, 0) + 1
            await ws.send(protocol.control("error", code=r.code, message=r.message, fatal=True))
            await ws.close(1013, r.code)  # 1013: try again later
            return
        await ws.send(self._ready(live, hello))
        sender = asyncio.create_task(self._send_outbox(ws, live))
        reason = "the client disconnected"
        try:
            async for message in ws:
                try:
                    if isinstance(message, str):
                        protocol.decode_control(message)  # a close: the only control message after hello
                        reason = "the client closed the session"
                        break
                    self.manager.submit(live, protocol.decode_chunk(message, self.cfg, hello))
                except ProtocolError as e:
                    self.errors[e.code] = self.errors.get(e.code, 0) + 1
                    live.outbox.put_nowait(Notice(e.to_message()))
                except Refused as r:
                    self.errors[r.code] = self.errors.get(r.code, 0) + 1
                    live.outbox.put_nowait(
                        Notice(protocol.control("error", code=r.code, message=r.message, fatal=False))
                    )
        except websockets.ConnectionClosed:
            pass
        finally:
            self.manager.close(live, reason)
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
            max_message_bytes=protocol.max_message_bytes(self.cfg),
        )

    async def _send_outbox(self, ws: ServerConnection, live: LiveSession) -> None:
        """Forward the session's replies, notices and finally its close, in order."""
        try:
            while True:
                item = await live.outbox.get()
                if isinstance(item, Closed):
                    await ws.send(protocol.control("closed", reason=item.reason))
                    await ws.close(1000, "session closed")
                    return
                await ws.send(item.text if isinstance(item, Notice) else protocol.encode_reply(item))
        except websockets.ConnectionClosed:
            logging.info("session %s: connection gone before its outbox was sent", live.id)


async def serve_forever(cfg, params, *, host: str | None = None, port: int | None = None, auth_token=None) -> None:
    """`interaction-jax serve`: warm the engine up, listen, and serve until SIGINT or SIGTERM."""
    import signal

    from interaction_jax.serve.agents import make_agent
    from interaction_jax.serve.engine import Engine

    engine = Engine(cfg, params)
    engine.warm_up()  # compile before the first client waits for it
    server = Server(SessionManager(engine, agent=make_agent(cfg)), auth_token=auth_token)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server.serving(host, port) as listening:
        bound_host, bound_port = listening.sockets[0].getsockname()[:2]
        s = cfg.serve
        print(
            f"serving ws://{bound_host}:{bound_port} · {engine.max_sessions} sessions × {engine.max_len} tokens · "
            f"clock {server.manager.clock_mode} · agent {s.agent}{' · token required' if auth_token else ''}",
            flush=True,
        )
        await stop.wait()
    print(f"stopped after {server.manager.ticks} ticks; {server.connections} connection(s)", flush=True)
