"""Serving that cannot be knocked over (issue 16): the supervised tick, the bounds on everything a client
can hold, the handshake's paths, the security defaults and the status endpoint.

The tiny random-weight model of tests/test_serve.py; an Engine of the same config shares its compiled tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import socket
import time
import urllib.error
import urllib.request

import jax
import numpy as np
import pytest
import websockets
from websockets.asyncio.client import connect

from interaction_jax.serve.client import Client, SessionError
from interaction_jax.serve.engine import Engine
from interaction_jax.serve.manager import Closed, Refused, SessionManager
from interaction_jax.serve.server import Server, ServerFailed, serve_until_stopped
from interaction_jax.serve.session import ClientChunk
from tests import test_serve
from tests.test_serve import CFG, N, _binary, _hello, client_chunks, serving

# test_serve's module fixtures, shared by name: the same random weights and warm engine.
params, engine = test_serve.params, test_serve.engine

PCM = np.zeros(N, "<i2").tobytes()
SILENCE = ClientChunk(np.zeros(N, np.float32))


class Wrapped:
    """The real engine with one method replaced (a slow open, a failing tick)."""

    def __init__(self, engine: Engine, **methods):
        self._engine, self._methods = engine, methods

    def __getattr__(self, name):
        return self._methods.get(name) or getattr(self._engine, name)


async def settled(server: Server, slots: int = 4, timeout: float = 2.0) -> None:
    """Wait until every slot is free and no connection or handshake is counted (well before any timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (
            server.manager.engine.free_slots == slots
            and not server.manager.sessions
            and (server.open_connections, server.handshakes) == (0, 0)
        ):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(
        f"not settled: {server.manager.engine.free_slots} free slots, sessions {list(server.manager.sessions)}, "
        f"{server.open_connections} connections, {server.handshakes} handshakes"
    )


# ----------------------------------------------------------------------------------------------
# Bug 1: one chunk killed the tick for everyone; the tick is supervised


def test_a_lone_surrogate_is_a_bad_chunk_and_every_session_goes_on(engine):
    async def main():
        async with serving(engine) as (server, url):
            good, bad = await Client.connect(url), await Client.connect(url)
            await bad.ws.send(_binary({"text": "\ud800"}, PCM))  # json.dumps writes it as the escape \ud800
            await bad.send_chunk(np.zeros(N, np.float32), seq=1)
            await good.send_chunk(np.zeros(N, np.float32), seq=2)
            replies = await asyncio.wait_for(asyncio.gather(bad.recv_reply(), good.recv_reply()), 5)
            for c in (good, bad):
                await c.close()
            return [r.seq for r in replies], bad.notices, server.manager.ticks

    seqs, notices, ticks = asyncio.run(main())
    assert seqs == [1, 2] and ticks >= 1
    ((notice,),) = [notices]
    assert (notice["code"], notice["fatal"]) == ("bad_chunk", False)
    assert "not valid UTF-8 (a lone surrogate)" in notice["message"]


@pytest.mark.parametrize("where", ["prepare", "finish"])
def test_an_error_in_one_session_s_tick_closes_that_session_only(engine, where, caplog):
    async def main():
        manager = SessionManager(engine, clock="lockstep")
        victim, other = await manager.open(), await manager.open()

        def broken(*args):
            raise RuntimeError(f"broken {where}")

        setattr(victim.session, where, broken)
        for x in (victim, other):
            manager.submit(x, SILENCE)
        with caplog.at_level(logging.ERROR):
            replies = await manager.tick()
        manager.submit(other, SILENCE)  # the next tick goes on for the other session
        await manager.tick()
        got = [other.outbox.get_nowait().chunk for _ in range(2)]
        closed = victim.outbox.get_nowait()
        await manager.shutdown()  # closes the other session; the victim's slot must be free already
        free = engine.free_slots
        return [x.id for x, _ in replies], other.id, victim.id, got, closed, free, dict(manager.closed_by_kind)

    ids, other_id, victim_id, got, closed, free, kinds = asyncio.run(main())
    assert ids == [other_id] and got == [0, 1]
    assert isinstance(closed, Closed) and (closed.kind, closed.code) == ("internal_error", 1011)
    assert f"RuntimeError: broken {where}" in closed.reason
    assert free == engine.max_sessions
    assert kinds == {"internal_error": 1, "shutdown": 1}
    assert any(victim_id in r.getMessage() and f"broken {where}" in r.getMessage() for r in caplog.records)


def test_an_engine_failure_tells_every_client_closes_them_and_stops_the_server(engine):
    def failing_tick(inputs):
        raise RuntimeError("device lost")

    async def main():
        server = Server(SessionManager(Wrapped(engine, tick=failing_tick), clock="lockstep"))
        stop, urls = asyncio.Event(), []
        running = asyncio.create_task(
            serve_until_stopped(
                server, stop, "127.0.0.1", 0, on_listening=lambda s: urls.append(s.sockets[0].getsockname()[1])
            )
        )
        while not urls:
            await asyncio.sleep(0.01)
        url = f"ws://127.0.0.1:{urls[0]}"
        clients = [await Client.connect(url) for _ in range(2)]
        await clients[0].send_chunk(np.zeros(N, np.float32))
        errors = []
        for c in clients:
            with pytest.raises(SessionError) as e:
                await asyncio.wait_for(c.recv_reply(), 5)
            await asyncio.wait_for(c.ws.wait_closed(), 5)
            errors.append((e.value.message, c.ws.close_code, c.ws.close_reason))
        with pytest.raises(ServerFailed, match="device lost"):
            await asyncio.wait_for(running, 5)
        assert not stop.is_set()
        return errors, dict(server.manager.closed_by_kind), engine.free_slots

    errors, kinds, free = asyncio.run(main())
    for message, code, reason in errors:
        assert message == "the server's engine failed: RuntimeError: device lost"
        assert (code, reason) == (1011, "engine_failed")
    assert kinds == {"engine_failed": 2} and free == engine.max_sessions


# ----------------------------------------------------------------------------------------------
# Bug 2: ghost slots: every path out of the handshake frees what it held


def test_a_connection_killed_at_each_point_of_the_handshake_frees_its_slot(engine):
    """Each await of hello → ready, with the client gone there; the idle timeout (30 s) never has to act."""

    def slow_open(seed=0):
        time.sleep(0.3)  # on the engine's thread: the client is gone before the server sends ready
        return engine.open(seed)

    async def main():
        async with serving(Wrapped(engine, open=slow_open)) as (server, url):
            assert server.manager.idle_timeout_s == 30
            # before hello
            ws = await connect(url)
            ws.transport.abort()
            await settled(server)
            # after hello, while the slot is being opened (the ready then goes nowhere)
            ws = await connect(url)
            await ws.send(_hello())
            await asyncio.sleep(0.05)
            ws.transport.abort()
            await settled(server)
            # after ready, before the first chunk
            ws = await connect(url)
            await ws.send(_hello())
            assert json.loads(await ws.recv())["type"] == "ready"
            ws.transport.abort()
            await settled(server)
            # a bad hello and a refusal leave nothing behind either
            async with connect(url) as ws:
                await ws.send(_hello(sample_rate=8000))
                assert json.loads(await ws.recv())["code"] == "bad_hello"
            await settled(server)
            # and the server still serves
            async with await Client.connect(url) as client:
                await client.send_chunk(np.zeros(N, np.float32), seq=3)
                assert (await client.recv_reply()).seq == 3
            await settled(server)
            return dict(server.manager.closed_by_kind)

    kinds = asyncio.run(main())
    assert kinds == {"disconnect": 2, "client": 1}


# ----------------------------------------------------------------------------------------------
# Bug 4: the outbox and the typed-text backlog are bounded


def test_a_client_that_does_not_read_is_dropped_with_a_reason(engine):
    async def main():
        manager = SessionManager(engine, clock="lockstep")
        manager.outbox_messages = 4
        live = await manager.open()
        k = 0
        while not live.closed and k < 6:
            manager.submit(live, SILENCE)
            await manager.tick()
            k += 1
        items = [live.outbox.get_nowait() for _ in range(live.outbox.qsize())]
        await manager.shutdown()  # the session is no longer the manager's: only its own close frees its slot
        free = engine.free_slots
        return k, items, free, dict(manager.closed_by_kind)

    k, items, free, kinds = asyncio.run(main())
    assert k == 5  # four replies fit; the fifth found the outbox full
    (closed,) = items  # what it did not read is dropped with it: the reason is all that waits
    assert (closed.kind, closed.code) == ("slow_client", 1008)
    assert closed.reason == "the client is not reading: 4 messages are waiting for it"
    assert free == engine.max_sessions and kinds == {"slow_client": 1}


def test_typed_text_beyond_the_backlog_is_refused_as_busy(engine):
    async def main():
        manager = SessionManager(engine, clock="lockstep")
        live = await manager.open()
        taken, refusal = 0, None
        for _ in range(5):
            try:
                manager.submit(live, ClientChunk(np.zeros(N, np.float32), text="x" * 100))
            except Refused as r:
                refusal = r
                break
            taken += 1
            await manager.tick()
            live.outbox.get_nowait()
        backlog = live.session.text_backlog
        manager.submit(live, SILENCE)  # a chunk without text is still taken
        await manager.shutdown()
        return taken, refusal, backlog, dict(manager.refused)

    taken, refusal, backlog, refused = asyncio.run(main())
    # 100 tokens a chunk, 4 leave a chunk: 96, 192, then 288 would pass the 256 the config allows
    assert taken == 2 and backlog == 192
    assert refusal.code == "busy" and "192 tokens already wait" in refusal.message
    assert "at most 256 may wait" in refusal.message and refused == {"busy": 1}


# ----------------------------------------------------------------------------------------------
# Bug 5: warm-up leaves the engine as a real tick does; nothing is accepted before warm


def test_warm_up_leaves_the_compile_count_constant_over_the_first_ten_ticks(params):
    # Params restored from a checkpoint are committed to a device; the first real tick then recompiled.
    committed = jax.device_put(params, jax.devices()[0])
    cold = Engine(CFG, committed)

    async def main():
        async with serving(cold) as (server, url):
            warm = cold.compilations  # serving() warmed the engine before it listened
            counts = []
            async with await Client.connect(url) as client:
                for c in client_chunks(5, 10):
                    await client.send_chunk(c.audio, seq=c.seq)
                    await client.recv_reply()
                    counts.append(cold.compilations)
            return warm, counts, server.manager.ticks

    warm, counts, ticks = asyncio.run(main())
    assert ticks == 10 and counts == [warm] * 10
    assert cold.warm


# ----------------------------------------------------------------------------------------------
# Security defaults


def test_the_token_is_checked_first_and_wrong_tokens_are_throttled_per_address(engine):
    async def main():
        server = Server(SessionManager(engine), auth_token="s3cret")
        async with server.serving("127.0.0.1", 0) as listening:
            url = f"ws://127.0.0.1:{listening.sockets[0].getsockname()[1]}"
            async with connect(url) as ws:  # a wrong stream parameter without the token: nothing but the token
                await ws.send(_hello(sample_rate=8000))
                error = json.loads(await ws.recv())
            codes = [error["code"]]
            for _ in range(server.limits.token_failures - 1):
                with pytest.raises(SessionError) as e:
                    await Client.connect(url, token="guess")
                codes.append(e.value.code)
            with pytest.raises(SessionError) as e:  # now even the right token waits for the window
                await Client.connect(url, token="s3cret")
            server._token_failures.clear()  # the window has passed
            async with await Client.connect(url, token="s3cret") as client:
                ok = client.ready["type"]
            return error, codes, e.value, ok

    error, codes, throttled, ok = asyncio.run(main())
    assert (error["code"], error["message"]) == ("bad_token", "missing or wrong token")
    assert codes == ["bad_token"] * 5
    assert throttled.code == "throttled" and "too many wrong tokens from 127.0.0.1: try again in 60 s" in str(throttled)
    assert ok == "ready"


def test_browser_origins_are_refused_unless_allowed(engine):
    async def main():
        results = {}
        for allowed in ((), ("http://localhost:3000",)):
            manager = SessionManager(engine, clock="lockstep")
            async with Server(manager, allowed_origins=allowed).serving("127.0.0.1", 0) as listening:
                url = f"ws://127.0.0.1:{listening.sockets[0].getsockname()[1]}"
                for origin in ("http://evil.example", "http://localhost:3000", None):
                    try:
                        async with connect(url, origin=origin) as ws:
                            await ws.send(_hello())
                            results[allowed, origin] = json.loads(await ws.recv())["type"]
                    except websockets.InvalidStatus as e:
                        results[allowed, origin] = e.response.status_code
        return results

    results = asyncio.run(main())
    assert results == {
        ((), "http://evil.example"): 403,
        ((), "http://localhost:3000"): 403,
        ((), None): "ready",  # a client that is not a browser sends no Origin
        (("http://localhost:3000",), "http://evil.example"): 403,
        (("http://localhost:3000",), "http://localhost:3000"): "ready",
        (("http://localhost:3000",), None): "ready",
    }


def test_caps_on_open_connections_and_handshakes_in_flight(engine):
    async def main():
        async with serving(engine) as (server, url):
            server.limits = dataclasses.replace(server.limits, max_connections=2, max_handshakes=1)
            first = await connect(url)  # connected, no hello yet: the one handshake in flight
            await asyncio.sleep(0.05)
            async with connect(url) as ws:
                handshake_refusal = (json.loads(await ws.recv()), await ws.wait_closed(), ws.close_code)[::2]
            await first.send(_hello())
            assert json.loads(await first.recv())["type"] == "ready"
            second = await Client.connect(url)
            async with connect(url) as ws:
                connection_refusal = (json.loads(await ws.recv()), await ws.wait_closed(), ws.close_code)[::2]
            await first.close()
            await second.close()
            await settled(server)
            third = await Client.connect(url)  # what the refused ones never held is not missing now
            await third.close()
            return handshake_refusal, connection_refusal

    (h, h_code), (c, c_code) = asyncio.run(main())
    assert (h["code"], h["fatal"], h_code) == ("capacity", True, 1013)
    assert h["message"] == "1 connections are saying hello; try again later"
    assert (c["code"], c_code) == ("capacity", 1013) and c["message"] == "2 connections are open; try again later"


# ----------------------------------------------------------------------------------------------
# Status


def test_healthz_and_metrics_on_the_same_port(engine):
    def get(url: str) -> tuple[int, str, str]:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.status, r.headers["Content-Type"], r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.headers["Content-Type"], e.read().decode()

    async def main():
        async with serving(engine) as (server, url):
            http = url.replace("ws://", "http://")
            health = await asyncio.to_thread(get, f"{http}/healthz")
            async with await Client.connect(url) as client:
                await client.ws.send(_binary({"seq": -1}, PCM))
                for k in range(3):
                    await client.send_chunk(np.zeros(N, np.float32), seq=k)
                    await client.recv_reply()
                during = await asyncio.to_thread(get, f"{http}/metrics")
            await settled(server)
            after = await asyncio.to_thread(get, f"{http}/metrics")
            return health, during, after

    health, during, after = asyncio.run(main())
    assert health[0] == 200 and health[2] == "ok\n"
    status, content_type, text = during
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    lines = set(text.splitlines())
    for line in (
        "interaction_jax_up 1",
        "interaction_jax_sessions_open 1",
        "interaction_jax_slots_free 3",
        "interaction_jax_connections_open 1",
        "interaction_jax_ticks_total 3",
        "interaction_jax_replies_total 3",
        'interaction_jax_errors_total{code="bad_chunk"} 1',
        "# TYPE interaction_jax_tick_seconds summary",
    ):
        assert line in lines, (line, text)
    assert any(x.startswith('interaction_jax_tick_seconds{quantile="0.99"} ') for x in lines)
    assert f"interaction_jax_compilations {engine.compilations}" in lines
    after_lines = set(after[2].splitlines())
    assert {
        "interaction_jax_sessions_open 0",
        'interaction_jax_sessions_closed_total{reason="client"} 1',
    } <= after_lines


def test_a_server_shutting_down_tells_its_sessions_why(engine):
    async def main():
        async with serving(engine) as (server, url):
            client = await Client.connect(url)
        with pytest.raises(SessionError, match="server shutting down"):
            await client.recv_reply()
        await client.ws.wait_closed()
        return client.ws.close_code, client.ws.close_reason, dict(server.manager.closed_by_kind)

    assert asyncio.run(main()) == (1000, "shutdown", {"shutdown": 1})


def test_a_client_that_floods_and_never_reads_is_dropped_over_the_wire(engine):
    """Issue 16's flood: malformed chunks, one error each, never read; the server drops the client (outbox
    bound or send timeout, whichever comes first) instead of queueing errors for it without end."""

    async def main():
        async with serving(engine) as (server, url):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # so that the server's sends back up soon
            sock.connect(("127.0.0.1", int(url.rsplit(":", 1)[1])))
            ws = await connect(url, sock=sock, max_queue=1)
            await ws.send(_hello())
            sent = 0
            with contextlib.suppress(websockets.ConnectionClosed):
                while server.manager.closed_by_kind["slow_client"] == 0 and sent < 50_000:
                    await ws.send(b"\x01\x00")
                    sent += 1
                    if sent % 100 == 0:
                        await asyncio.sleep(0)
            ws.transport.abort()
            await settled(server)
            return sent, dict(server.manager.closed_by_kind), server.errors["bad_chunk"]

    sent, kinds, errors = asyncio.run(main())
    assert kinds == {"slow_client": 1}
    assert errors <= sent < 50_000
