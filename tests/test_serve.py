"""Serving: the engine's batched tick, streaming sessions, the WebSocket transport, background agents.

The model is a small random-weight one (test_train.SMALL): what is tested is that the transport and the
session machinery add nothing and lose nothing, not what the model says.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import struct

import jax
import numpy as np
import pytest
import websockets
from websockets.asyncio.client import connect

from interaction_jax import config as config_lib
from interaction_jax import stream, tokenizer
from interaction_jax.audio import wav
from interaction_jax.model import step as step_lib
from interaction_jax.serve import protocol
from interaction_jax.serve.agents import AgentRequest, StreamClock, ToolsAgent
from interaction_jax.serve.client import Client, SessionError
from interaction_jax.serve.engine import CapacityError, ChunkInput, ChunkOutput, Engine
from interaction_jax.serve.manager import Closed, Refused, SessionManager
from interaction_jax.serve.server import Server
from interaction_jax.serve.session import ClientChunk, Session
from interaction_jax.stream import chunk_samples
from interaction_jax.testing import random_chunks
from tests.test_train import SMALL

CFG = config_lib.validate(
    config_lib.override(
        config_lib.preset("tiny"),
        [*SMALL, "serve.clock=lockstep", "serve.max_sessions=4", "serve.max_len=512", "serve.vocoder_iterations=2"],
    )
)
S = CFG.stream
N = chunk_samples(S)


@pytest.fixture(scope="module")
def params():
    """Random weights, with the zero-initialised ones (the flow head's output layer, biases) made random
    too, so that every output depends on every input."""
    params = step_lib.init_params(CFG, jax.random.key(0))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    leaves = [x if np.any(x) else 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    return jax.tree.unflatten(tree, leaves)


@pytest.fixture(scope="module")
def engine(params):
    engine = Engine(CFG, params)
    engine.warm_up()
    return engine


def client_chunks(seed: int, n: int, *, video: bool = False, texts: dict[int, str] | None = None) -> list[ClientChunk]:
    """Random chunks as a client would send them: PCM16-exact audio, frames on frame chunks, typed text."""
    rng = np.random.default_rng(seed)
    chunks = []
    for k in range(n):
        audio = wav.from_pcm16(wav.to_pcm16(0.2 * rng.standard_normal(N).clip(-4, 4) / 4))
        frame = None
        if video and stream.chunk_has_frame(S, k):
            frame = rng.integers(0, 256, (S.frame_height, S.frame_width, 3), dtype=np.uint8)
        chunks.append(ClientChunk(audio, frame, (texts or {}).get(k, ""), seq=k))
    return chunks


async def direct(engine: Engine, chunks: list[ClientChunk], seed: int, agent=None, pause: float = 0.0) -> list:
    """The chunks through a SessionManager with no transport: submit, tick, take the reply (then wait
    `pause` seconds, as a client would between chunks)."""
    manager = SessionManager(engine, clock="lockstep", agent=agent)
    live = await manager.open(seed=seed)
    replies = []
    for c in chunks:
        manager.submit(live, c)
        await manager.tick()
        replies.append(live.outbox.get_nowait())
        await asyncio.sleep(pause)
    manager.close(live, "done")
    await manager.shutdown()
    return replies


@contextlib.asynccontextmanager
async def serving(engine: Engine, **kwargs):
    server = Server(SessionManager(engine, agent=kwargs.pop("agent", None), **kwargs), auth_token=None)
    async with server.serving("127.0.0.1", 0) as listening:
        port = listening.sockets[0].getsockname()[1]
        yield server, f"ws://127.0.0.1:{port}"


async def stream_through(url: str, chunks: list[ClientChunk], seed: int, video: bool = False) -> list:
    async with await Client.connect(url, seed=seed, video=video) as client:
        replies = []
        for c in chunks:
            await client.send_chunk(c.audio, frame=c.frame, text=c.text, seq=c.seq)
            replies.append(await client.recv_reply())
        assert client.notices == []
    return replies


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert (x.chunk, x.seq, x.text, x.text_ids, x.text_in_ids, x.speaking, x.events) == (
            y.chunk,
            y.seq,
            y.text,
            y.text_ids,
            y.text_in_ids,
            y.speaking,
            y.events,
        )
        np.testing.assert_array_equal(x.audio, y.audio)


def assert_close(a, b):
    """Text, events and TEXT_IN equal; audio equal to float tolerance (batching changes summation order)."""
    assert [(x.chunk, x.text_ids, x.text_in_ids, x.events) for x in a] == [
        (y.chunk, y.text_ids, y.text_in_ids, y.events) for y in b
    ]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(wav.from_pcm16(x.audio), wav.from_pcm16(y.audio), atol=2e-3)


# ----------------------------------------------------------------------------------------------
# The engine


def _inputs(seed: int, k: int) -> ChunkInput:
    (payload,) = random_chunks(S, k, 1, seed)
    patches = (
        stream.patchify(payload.frame) if payload.frame is not None else np.zeros((S.patches_per_frame, 40, 40, 3))
    )
    return ChunkInput(payload.audio_in, payload.text_in, patches.astype(np.uint8))


INPUT_SEEDS = {"a": 1, "b": 2, "c": 3}


def test_engine_rows_are_independent_and_nothing_recompiles(engine, params):
    compiled = engine.compilations
    slots = {name: engine.open(seed=seed) for name, seed in (("a", 11), ("b", 12), ("c", 13))}
    # Each session idles at ticks of its own; `c` closes after 3 chunks and a new session `d` takes its slot.
    active = {"a": [0, 1, 2, 3, 4, 5], "b": [0, 2, 3, 5], "c": [0, 1, 3]}
    got: dict[str, list[ChunkOutput]] = {name: [] for name in active}
    counts = dict.fromkeys(active, 0)
    for t in range(6):
        inputs = {}
        for name, ticks in active.items():
            if t in ticks:
                inputs[slots[name]] = _inputs(INPUT_SEEDS[name], counts[name])
        out = engine.tick(inputs)
        for name in active:
            if t in active[name]:
                got[name].append(out[slots[name]])
                counts[name] += 1
        assert set(out) == set(inputs)  # idle rows report nothing
        if t == 3:
            engine.close(slots["c"])
            assert engine.open(seed=13) == slots["c"]  # the lowest free slot is reused, reset to chunk 0
            assert engine.chunk_index(slots["c"]) == 0
    assert engine.compilations == compiled, "the tick recompiled after warm-up"
    # Alone (a one-row engine), each session produces the same outputs from the same inputs and seed.
    alone = Engine(CFG, params, max_sessions=1)
    for name, seed in (("a", 11), ("b", 12), ("c", 13)):
        slot = alone.open(seed=seed)
        ref = [alone.tick({slot: _inputs(INPUT_SEEDS[name], k)})[slot] for k in range(len(got[name]))]
        alone.close(slot)
        assert [o.chunk for o in got[name]] == list(range(len(ref)))
        for o, r in zip(got[name], ref, strict=True):
            np.testing.assert_array_equal(o.text, r.text)
            np.testing.assert_allclose(o.mel, r.mel, atol=1e-4)
    # The reopened slot's session started from chunk 0 again and writes where a fresh one would.
    assert engine.tick({slots["c"]: _inputs(999, 0)})[slots["c"]].chunk == 0
    for slot in slots.values():
        engine.close(slot)
    assert engine.free_slots == engine.max_sessions


def test_engine_capacity_and_end_of_context(params):
    fits = stream.chunk_start(S, 3)  # exactly three chunks
    engine = Engine(CFG, params, max_sessions=2, max_len=fits)
    a, b = engine.open(), engine.open()
    with pytest.raises(CapacityError, match="all 2 session slots are in use"):
        engine.open()
    for k in range(3):
        assert engine.fits_next_chunk(a)
        engine.tick({a: _inputs(0, k)})
    assert not engine.fits_next_chunk(a) and engine.fits_next_chunk(b)
    with pytest.raises(ValueError, match="does not fit"):
        engine.tick({a: _inputs(0, 3)})
    assert int(engine.cache["length"][a]) == fits and int(engine.cache["length"][b]) == 0


# ----------------------------------------------------------------------------------------------
# The transport adds nothing


@pytest.mark.parametrize(
    "kind",
    ["audio", "video", "text"],
)
def test_server_streams_exactly_what_the_session_gives_directly(engine, kind):
    chunks = client_chunks(
        3, 7, video=kind == "video", texts={1: "hello there", 4: "é ü 漢字"} if kind == "text" else None
    )

    async def main():
        async with serving(engine) as (server, url):
            via_server = await stream_through(url, chunks, seed=5, video=kind == "video")
            assert server.errors == {}
        return via_server, await direct(engine, chunks, seed=5)

    via_server, alone = asyncio.run(main())
    assert_same(via_server, alone)
    assert [r.seq for r in via_server] == list(range(7))
    assert all(r.audio.shape == (N,) and r.audio.dtype == np.int16 for r in via_server)
    if kind == "text":  # typed text enters TEXT_IN 4 tokens a chunk, in order
        typed = [i for r in via_server for i in r.text_in_ids if i != tokenizer.PAD]
        assert tokenizer.decode(typed) == "hello thereé ü 漢字"
        assert via_server[1].text_in_ids == tuple(tokenizer.encode("hell"))
    if kind == "video":  # the frames reach the model: without them it sounds different from chunk 0 on
        blind = asyncio.run(direct(engine, [ClientChunk(c.audio, None, c.text, c.seq) for c in chunks], seed=5))
        assert not np.array_equal(via_server[0].audio, blind[0].audio)


def test_concurrent_sessions_each_get_what_they_get_alone(engine):
    inputs = {seed: client_chunks(seed, 6, texts={2: f"session {seed}"}) for seed in (21, 22, 23)}

    async def main():
        async with serving(engine) as (_, url):
            return await asyncio.gather(*(stream_through(url, c, seed) for seed, c in inputs.items()))

    together = asyncio.run(main())
    for (seed, chunks), replies in zip(inputs.items(), together, strict=True):
        assert_close(replies, asyncio.run(direct(engine, chunks, seed)))
    # Different seeds and inputs do give different sessions.
    assert not np.array_equal(together[0][0].audio, together[1][0].audio)


# ----------------------------------------------------------------------------------------------
# Session lifetimes


def test_capacity_refusal_disconnect_and_reaping(engine):
    async def main():
        async with serving(engine, idle_timeout_s=0.5) as (server, url):
            manager = server.manager
            clients = [await Client.connect(url) for _ in range(4)]
            with pytest.raises(SessionError, match="all 4 sessions are in use") as refused:
                await Client.connect(url)
            assert refused.value.code == "capacity"
            # A client that vanishes mid-stream frees its slot.
            await clients[0].send_chunk(np.zeros(N, np.float32), seq=0)
            assert (await clients[0].recv_reply()).chunk == 0
            clients[0].ws.transport.abort()
            for _ in range(100):
                if len(manager.sessions) == 3:
                    break
                await asyncio.sleep(0.02)
            assert len(manager.sessions) == 3
            late = await Client.connect(url)  # the freed slot is usable again
            # The others sent nothing for longer than the idle timeout: they are closed with a reason.
            with pytest.raises(SessionError, match=r"idle for more than 0\.5 s"):
                await asyncio.wait_for(clients[1].recv_reply(), 5)
            await asyncio.sleep(0.3)
            for c in (*clients[1:], late):
                await c.close()
            for _ in range(100):
                if manager.engine.free_slots == 4:
                    break
                await asyncio.sleep(0.02)
            assert manager.sessions == {} and manager.engine.free_slots == 4

    asyncio.run(main())


def test_end_of_context_event_then_close(params):
    engine = Engine(CFG, params, max_sessions=1, max_len=stream.chunk_start(S, 3))

    async def main():
        async with serving(engine) as (_, url):
            client = await Client.connect(url)
            assert client.ready["max_chunks"] == 3
            replies = []
            for c in client_chunks(0, 3):
                await client.send_chunk(c.audio, seq=c.seq)
                replies.append(await client.recv_reply())
            with pytest.raises(SessionError, match="end of context"):
                await client.recv_reply()
            return replies

    replies = asyncio.run(main())
    assert [e["type"] for e in replies[2].events if e["type"] == "end_of_context"] == ["end_of_context"]
    assert all(e["type"] != "end_of_context" for r in replies[:2] for e in r.events)


def test_one_chunk_in_flight(engine):
    async def main():
        manager = SessionManager(engine, clock="lockstep")
        live = await manager.open()
        manager.submit(live, ClientChunk(np.zeros(N, np.float32)))
        with pytest.raises(Refused, match="one chunk in flight") as busy:
            manager.submit(live, ClientChunk(np.zeros(N, np.float32)))
        assert busy.value.code == "busy"
        await manager.tick()
        manager.submit(live, ClientChunk(np.zeros(N, np.float32)))  # the reply is out: the next one is taken
        manager.close(live, "done")
        assert isinstance([live.outbox.get_nowait() for _ in range(2)][1], Closed)
        with pytest.raises(Refused, match="closed"):
            manager.submit(live, ClientChunk(np.zeros(N, np.float32)))
        await manager.shutdown()

    asyncio.run(main())


# ----------------------------------------------------------------------------------------------
# Malformed input


def _hello(**overrides) -> str:
    obj = {"type": "hello", "sample_rate": 16000, "chunk_ms": 200} | overrides
    return json.dumps({k: v for k, v in obj.items() if v is not None})


def _binary(header, payload: bytes = b"", raw_header: bytes | None = None) -> bytes:
    head = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<I", len(head)) + head + payload


PCM = np.zeros(N, "<i2").tobytes()
FRAME = np.zeros((S.frame_height, S.frame_width, 3), np.uint8).tobytes()

# (name, first message, error code, message fragment): each ends the connection.
BAD_HELLOS = [
    ("not JSON", "{hello", "bad_hello", "not valid JSON"),
    ("chunk before hello", _binary({}, PCM), "no_hello", "not a chunk"),
    ("not an object", "[1, 2]", "bad_hello", "must be a JSON object"),
    ("wrong type", _hello(type="helo"), "no_hello", "must have type 'hello'"),
    ("missing field", _hello(sample_rate=None), "bad_hello", "missing field 'sample_rate'"),
    ("wrong rate", _hello(sample_rate=44100), "bad_hello", "sample_rate must be 16000"),
    ("rate as text", _hello(sample_rate="16000"), "bad_hello", "'sample_rate' must be int"),
    ("wrong chunk", _hello(chunk_ms=100), "bad_hello", "200 ms chunks, not 100"),
    ("unknown field", _hello(volume=3), "bad_hello", "unknown field(s) ['volume']"),
    ("unknown format", _hello(audio_format="mp3"), "bad_hello", "audio_format must be one of"),
    ("video not bool", _hello(video=1), "bad_hello", "'video' must be bool"),
    ("seed out of range", _hello(seed=-1), "bad_hello", "seed must be in [0, 2**32)"),
    ("other version", _hello(version=2), "bad_hello", "protocol version 1, not 2"),
    ("deep nesting", "[" * 5000 + "]" * 5000, "bad_hello", "JSON nested 5000 deep (at most 4)"),
    ("huge int", _hello()[:-1] + ', "seed": 1' + "0" * 5000 + "}", "bad_hello", "a number of 5001 characters"),
    ("lone surrogate", _hello(token="\ud800"), "bad_hello", "not valid UTF-8 (a lone surrogate)"),
]

# (name, hello, message after it, error code, message fragment): the session goes on.
BAD_MESSAGES = [
    ("second hello", {}, _hello(), "second_hello", "already said hello"),
    ("control not JSON", {}, "close please", "bad_message", "not valid JSON"),
    ("unknown control", {}, json.dumps({"type": "ping"}), "bad_message", "unknown message type 'ping'"),
    ("close with fields", {}, json.dumps({"type": "close", "now": True}), "bad_message", "close takes no fields"),
    ("too short for a header", {}, b"\x01\x00", "bad_chunk", "4-byte header length"),
    ("header beyond message", {}, struct.pack("<I", 999) + b"{}", "bad_chunk", "beyond the message"),
    ("header not JSON", {}, _binary(None, PCM, raw_header=b"{seq:1}"), "bad_chunk", "not valid JSON"),
    ("header not an object", {}, _binary([1], PCM), "bad_chunk", "chunk header must be a JSON object"),
    ("unknown header field", {}, _binary({"gain": 2}, PCM), "bad_chunk", "unknown field(s) ['gain']"),
    ("seq as text", {}, _binary({"seq": "1"}, PCM), "bad_chunk", "'seq' must be int"),
    ("negative seq", {}, _binary({"seq": -1}, PCM), "bad_chunk", "seq must be >= 0"),
    ("text not a string", {}, _binary({"text": 5}, PCM), "bad_chunk", "'text' must be str"),
    ("too few samples", {}, _binary({}, PCM[:-2]), "bad_chunk", "3200 pcm16 samples (6400 bytes)"),
    ("too many samples", {}, _binary({}, PCM + b"\x00\x00"), "bad_chunk", "got 6402"),
    ("frame without video", {}, _binary({"frame": True}, PCM + FRAME), "bad_chunk", "without video"),
    ("frame wrong size", {"video": True}, _binary({"frame": True}, PCM + FRAME[:-3]), "bad_chunk", "80×80×3"),
    ("text too long", {}, _binary({"text": "x" * 600}, PCM), "bad_chunk", "limited to 512 UTF-8 bytes"),
    ("deep header", {}, _binary(None, PCM, raw_header=b"[" * 2000 + b"]" * 2000), "bad_chunk", "nested 2000 deep"),
    ("huge seq", {}, _binary(None, PCM, raw_header=b'{"seq": 1' + b"0" * 4000 + b"}"), "bad_chunk", "4001 characters"),
    (
        "non-finite samples",
        {"audio_format": "f32"},
        _binary({}, np.full(N, np.nan, "<f4").tobytes()),
        "bad_chunk",
        "NaN or infinite",
    ),
    (
        "out-of-range samples",
        {"audio_format": "f32"},
        _binary({}, np.full(N, 1.5, "<f4").tobytes()),
        "bad_chunk",
        "must lie in [-1, 1], got up to 1.5",
    ),
]


def test_malformed_input_gets_clear_errors_and_the_others_are_served_unchanged(engine):
    good_chunks = client_chunks(31, 8)

    async def bad_hellos(url):
        for name, first, code, fragment in BAD_HELLOS:
            async with connect(url) as ws:
                await ws.send(first)
                error = json.loads(await ws.recv())
                assert (error["type"], error["code"], error["fatal"]) == ("error", code, True), name
                assert fragment in error["message"], (name, error["message"])
                with pytest.raises(websockets.ConnectionClosed):
                    await ws.recv()
                assert ws.close_code == 1008, name

    async def bad_messages(url):
        for name, hello, message, code, fragment in BAD_MESSAGES:
            client = await Client.connect(url, **hello)
            await client.ws.send(message)
            await client.send_chunk(np.zeros(N, np.float32), seq=7)  # the session still works after it
            reply = await client.recv_reply()
            assert reply.seq == 7 and reply.chunk == 0, name
            ((error,),) = [client.notices]
            assert (error["code"], error["fatal"]) == (code, False), name
            assert fragment in error["message"], (name, error["message"])
            await client.close()
        # Too big for the WebSocket layer: the connection is cut with 1009, the server goes on.
        client = await Client.connect(url)
        await client.ws.send(b"\x00" * (protocol.max_message_bytes(CFG) + 1))
        with pytest.raises(SessionError):
            await client.recv_reply()
        assert client.ws.close_code == 1009

    async def main():
        compiled = engine.compilations
        async with serving(engine) as (server, url):
            good, *_ = await asyncio.gather(stream_through(url, good_chunks, 8), bad_hellos(url), bad_messages(url))
            assert sum(server.errors.values()) == len(BAD_HELLOS) + len(BAD_MESSAGES)
        assert engine.compilations == compiled  # sessions coming and going never recompile the tick
        return good

    assert len(BAD_HELLOS) + len(BAD_MESSAGES) >= 20
    good = asyncio.run(main())
    assert_close(good, asyncio.run(direct(engine, good_chunks, 8)))


def test_auth_token_and_binding_beyond_loopback(engine):
    async def main():
        server = Server(SessionManager(engine), auth_token="s3cret")
        async with server.serving("127.0.0.1", 0) as listening:
            url = f"ws://127.0.0.1:{listening.sockets[0].getsockname()[1]}"
            for token in (None, "wrong"):
                with pytest.raises(SessionError, match="missing or wrong token"):
                    await Client.connect(url, token=token)
            async with await Client.connect(url, token="s3cret") as client:
                assert client.ready["type"] == "ready"
        with pytest.raises(ValueError, match="--auth-token"):
            async with Server(SessionManager(engine)).serving("0.0.0.0", 0):
                pass

    asyncio.run(main())


# ----------------------------------------------------------------------------------------------
# Background agents


class ScriptedEngine:
    """The model replaced by a script of TEXT_OUT ids per chunk; the sessions, clock and agents are real."""

    def __init__(self, script: dict[int, list[int]]):
        self.cfg, self.script = CFG, script
        self.max_sessions, self.max_len = 2, 10**6
        self._next, self._chunks = 0, {}

    def open(self, seed: int = 0) -> int:
        slot = self._next
        self._next += 1
        self._chunks[slot] = 0
        return slot

    def close(self, slot: int) -> None:
        pass

    def fits_next_chunk(self, slot: int) -> bool:
        return True

    def tick(self, inputs):
        out = {}
        for slot in inputs:
            k = self._chunks[slot]
            ids = self.script.get(k, []) + [tokenizer.PAD] * S.text_out_slots
            mel = np.full((S.audio_slots * S.stack, S.n_mels), S.dmel_min, np.float32)
            text = np.array(ids[: S.text_out_slots], np.int32)
            speak = (text != tokenizer.PAD).astype(np.float32)
            out[slot] = ChunkOutput(k, text, mel, np.zeros((4, 2, 80), np.uint8), speak)
            self._chunks[slot] = k + 1
        return out


def _ids(text: str) -> list[int]:
    return tokenizer.encode(text)


# The model asks "17+25" across chunks 2 and 3.
DELEGATING = {2: _ids("<delegate>17+"), 3: _ids("25</delegate>")}


def _run_scripted(agent, n: int = 10, texts=None, pause: float = 0.0):
    chunks = client_chunks(0, n, texts=texts)
    return asyncio.run(direct(ScriptedEngine(DELEGATING), chunks, seed=0, agent=agent, pause=pause))


def _result_chunk(replies) -> int:
    return next(r.chunk for r in replies if tokenizer.RESULT in r.text_in_ids)


def test_tools_answer_reaches_text_in_within_the_latency_plus_one_chunk():
    latency = 0.4
    replies = _run_scripted(ToolsAgent(latency_s=latency))
    assert replies[3].events == ({"type": "delegated", "request": "17+25"},)
    request_end = (3 + 1) * 0.2  # the request's last token is in chunk 3
    k = _result_chunk(replies)
    assert k * 0.2 >= request_end + latency - 1e-9  # not before its latency
    assert k <= math.ceil((request_end + latency) / 0.2) + 1  # within the latency plus one chunk
    assert replies[k].text_in_ids == tuple(_ids("<result>42</result>"))
    assert replies[k].events == ({"type": "result", "request": "17+25", "text": "42", "error": None},)
    assert replies[3].text == "" and all(r.text == "" for r in replies)  # a request is not speech


class FailingAgent:
    async def answer(self, request, clock):
        await clock.sleep(0.2)
        raise RuntimeError("the tool fell over")
        yield  # an async generator


def test_a_failing_agent_is_an_error_result_and_the_session_goes_on():
    replies = _run_scripted(FailingAgent(), n=14)
    text_in = [i for r in replies for i in r.text_in_ids if i != tokenizer.PAD]
    assert tokenizer.decode(text_in) == "<result>error: the tool fell over</result>"
    (event,) = [e for r in replies for e in r.events if e["type"] == "result"]
    assert event == {"type": "result", "request": "17+25", "text": "", "error": "the tool fell over"}
    assert [r.chunk for r in replies] == list(range(14))


class RecordingAgent:
    def __init__(self):
        self.requests: list[AgentRequest] = []
        self.cancelled = asyncio.Event()

    async def answer(self, request, clock):
        self.requests.append(request)
        try:
            await clock.sleep(100.0)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        yield "never"


def test_the_agent_sees_the_conversation_and_is_cancelled_with_the_session():
    agent = RecordingAgent()

    async def main():
        manager = SessionManager(ScriptedEngine(DELEGATING), clock="lockstep", agent=agent)
        live = await manager.open()
        for c in client_chunks(0, 5, texts={1: "what is 17 plus 25"}):
            manager.submit(live, c)
            await manager.tick()
        await asyncio.sleep(0)
        (request,) = agent.requests
        manager.close(live, "bye")
        await asyncio.wait_for(agent.cancelled.wait(), 1)
        await manager.shutdown()
        return request

    request = asyncio.run(main())
    assert request.request == "17+25" and request.time_s == pytest.approx(0.8)
    assert [(u.speaker, u.time_s, u.text) for u in request.conversation] == [("user", 0.2, "what is 17 plus 25")]


def test_stream_clock_wakes_sleepers_in_stream_time():
    async def main():
        clock, woke = StreamClock(), []

        async def sleeper(name, seconds):
            await clock.sleep(seconds)
            woke.append((name, clock.now))

        tasks = [asyncio.create_task(sleeper(n, s)) for n, s in (("late", 0.6), ("soon", 0.2))]
        await asyncio.sleep(0)
        for t in (0.2, 0.4, 0.6):
            clock.advance(t)
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        return woke

    assert asyncio.run(main()) == [("soon", 0.2), ("late", 0.6)]


def test_realtime_clock_ticks_without_waiting_and_talk_stays_time_synchronous(engine, tmp_path):
    from interaction_jax.serve.client import talk

    async def main():
        async with serving(engine, clock="realtime") as (server, url):
            async with await Client.connect(url) as client:
                first = await asyncio.wait_for(client.recv_reply(), 2)  # nothing sent: the model hears silence
                second = await asyncio.wait_for(client.recv_reply(), 2)
            audio = np.concatenate([c.audio for c in client_chunks(4, 5)])
            result = await talk(url, audio, tmp_path / "talk", texts=[(0.3, "hi")])
            return first, second, result, server.manager.ticks

    first, second, result, ticks = asyncio.run(main())
    assert (first.seq, second.seq) == (None, None) and second.chunk == first.chunk + 1
    assert [r.seq for r in result.replies] == list(range(5))
    chunks = [r.chunk for r in result.replies]
    assert chunks == sorted(chunks) and len(set(chunks)) == 5  # one chunk per tick, in order
    assert result.output.shape == (5 * N,)
    # Time-synchronous: our chunk i's reply sits at i·chunk in output.wav, whatever session chunk took it.
    start = result.replies[0].chunk
    for r in result.replies:
        np.testing.assert_array_equal(result.output[(r.chunk - start) * N : (r.chunk - start + 1) * N], r.audio)
    assert tokenizer.encode("hi") == [i for r in result.replies for i in r.text_in_ids if i != tokenizer.PAD]
    assert ticks >= 7


def test_an_engine_row_is_one_direct_microturn(params):
    """The engine adds nothing to `microturn`: a one-row engine's tick is the jitted call on the same block,
    with the session's key `fold_in(key(seed), chunk)`."""
    from interaction_jax.model.cache import init_cache
    from interaction_jax.serve.engine import input_block

    engine = Engine(CFG, params, max_sessions=1, max_len=256)
    slot = engine.open(seed=42)
    microturn = step_lib.jit_microturn(CFG)
    cache = init_cache(CFG.model, 1, 256)
    sampling = step_lib.Sampling.from_config(CFG)
    for k in range(3):
        x = _inputs(5, k)
        got = engine.tick({slot: x})[slot]
        key = jax.random.fold_in(jax.random.key(42), k)
        out, cache = microturn(params, cache, input_block(S, [x]), key[None], sampling)
        np.testing.assert_array_equal(got.text, np.asarray(out["text"][0]))
        np.testing.assert_array_equal(got.mel, np.asarray(out["mel"][0]).reshape(got.mel.shape))


def test_lm_agent_answers_with_another_checkpoints_words(params):
    from interaction_jax.serve.agents import LMAgent

    agent = LMAgent(CFG, params, max_chunks=3)
    agent.engine.warm_up()

    async def until_the_result():  # the other model thinks in wall time: send chunks until its answer is in
        manager = SessionManager(ScriptedEngine(DELEGATING), clock="lockstep", agent=agent)
        live = await manager.open()
        replies = []
        while not replies or all(e["type"] != "result" for e in replies[-1].events):
            assert len(replies) < 1000, "no answer from the lm agent"
            manager.submit(live, ClientChunk(np.zeros(N, np.float32)))
            await manager.tick()
            replies.append(live.outbox.get_nowait())
            await asyncio.sleep(0.02)
        await manager.shutdown()
        return replies

    replies = asyncio.run(until_the_result())
    (event,) = [e for r in replies for e in r.events if e["type"] == "result"]
    # What the other model says, asked turn-based: the request typed in, then silence.
    engine = Engine(CFG, params, max_sessions=1, max_len=stream.chunk_start(S, 4))
    session = Session(CFG, "x", engine.open(0), voice=False)
    said = []
    for k in range(3):
        silence = ClientChunk(np.zeros(N, np.float32), text="17+25" if k == 0 else "")
        reply, _ = session.finish(engine.tick({session.slot: session.prepare(silence)})[session.slot])
        said.append(reply.text)
        if tokenizer.EOT in reply.text_ids and "".join(said):
            break
    assert event == {"type": "result", "request": "17+25", "text": "".join(said), "error": None}
    text_in = [i for r in replies for i in r.text_in_ids if i != tokenizer.PAD]
    assert text_in == [tokenizer.RESULT, *tokenizer.encode("".join(said), specials=False), tokenizer.END_RESULT]


def test_speak_tokens_become_the_spaces_between_the_model_s_words():
    """SPEAK starts each word: the reply text puts a space before every word but the first of a line,
    across chunk boundaries; EOT ends the line, and the next line starts without one."""
    script = {  # four TEXT_OUT slots a chunk
        1: _ids("<speak>Sur"),
        2: _ids("e,<speak>i"),
        3: _ids("t's<speak>"),
        4: _ids("four"),
        5: _ids(".<eot>"),
        7: _ids("<speak>Bye"),
        8: _ids("<eot>"),
    }
    replies = asyncio.run(direct(ScriptedEngine(script), client_chunks(0, 9), seed=0))
    assert [r.text for r in replies] == ["", "Sur", "e, i", "t's ", "four", ".", "", "Bye", ""]
    assert "".join(r.text for r in replies[:6]) == "Sure, it's four."
