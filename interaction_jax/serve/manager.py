"""Streaming sessions over one engine: open → append chunks → close, ticked by a clock (DESIGN §11).

Like SGLang's streaming sessions, a session is append-only with one chunk in flight: `submit` hands
in the next chunk and the tick that consumes it puts the reply in the session's `outbox`. The clock:

- `realtime`: a tick every `chunk_ms` of wall time over every open session; a session whose chunk is
  not in by then gets a chunk of silence (as in life), and the model's reply to it is sent all the same.
- `lockstep`: a tick as soon as a chunk is in, over every session whose chunk is in (evaluation,
  tests): nothing is ever silence, so a session's outputs follow from its inputs alone, however fast
  or slowly its client sends (and a stalled client holds up no one else).

Every engine call (open, close, tick) runs on one worker thread, in order, so the engine is never
touched by two threads and the asyncio loop stays free for the sockets while a tick computes. Between
ticks, on the loop, background-agent text is moved into the sessions' TEXT_IN queues; sessions idle
for `serve.idle_timeout_s` are closed; a session whose next chunk would overflow its cache row ends
with an `end_of_context` event on its last reply.

The tick is supervised: an error while preparing or finishing one session's chunk closes that session
(reason logged with its id) and the tick goes on for the others; an error of the engine itself closes
every session with the reason and ends `run` with `EngineFailed`. What a client can make wait here is
bounded: `serve.outbox_messages` replies and notices (a client that does not read is dropped) and
`serve.max_text_backlog` typed-text tokens (more is refused as `busy`).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import itertools
import time
import uuid
from collections.abc import Callable

from absl import logging

from interaction_jax import tokenizer
from interaction_jax.serve.agents import Agent, AgentRequest, StreamClock
from interaction_jax.serve.engine import CapacityError, Engine
from interaction_jax.serve.session import ClientChunk, Reply, Session
from interaction_jax.stream import chunk_seconds

# Realtime: chunks that may wait for their ticks (in flight + jitter buffer), 1 s of stream at 200 ms: a
# chunk that arrived late and the ones after it on time land between the same ticks until a pause.
REALTIME_JITTER_CHUNKS = 5


class Refused(Exception):
    """A session could not be opened (`code` "capacity") or a chunk not taken ("busy", "closed")."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class EngineFailed(RuntimeError):
    """The engine's tick raised: no session can go on (the server tells them all and stops)."""


@dataclasses.dataclass(frozen=True)
class Closed:
    """The last item of a session's outbox: the reason for the client, why in one word (`kind`, a metrics
    label and the WebSocket close reason) and the WebSocket close code."""

    reason: str
    kind: str = "client"
    code: int = 1000


# Close kinds whose WebSocket close code is not 1000: the client broke a limit, or the server failed.
CLOSE_CODES = {"slow_client": 1008, "internal_error": 1011, "engine_failed": 1011}


@dataclasses.dataclass(frozen=True)
class Notice:
    """An out-of-band message for the session's client (an error about one of its messages)."""

    text: str


@dataclasses.dataclass(eq=False)
class LiveSession:
    session: Session
    clock: StreamClock
    outbox: asyncio.Queue
    last_seen: float
    pending: collections.deque[ClientChunk] = dataclasses.field(default_factory=collections.deque)
    closed: bool = False
    incoming: list[Callable[[Session], None]] = dataclasses.field(default_factory=list)
    tasks: set[asyncio.Task] = dataclasses.field(default_factory=set)

    @property
    def id(self) -> str:
        return self.session.id


class SessionManager:
    """Sessions, their clock and their background agent over one `Engine`. Use from one asyncio loop."""

    def __init__(
        self,
        engine: Engine,
        *,
        clock: str | None = None,
        agent: Agent | None = None,
        idle_timeout_s: float | None = None,
    ):
        self.engine, self.cfg = engine, engine.cfg
        self.clock_mode = clock or self.cfg.serve.clock
        if self.clock_mode not in ("realtime", "lockstep"):
            raise ValueError(f"clock must be realtime or lockstep, got {self.clock_mode!r}")
        self.idle_timeout_s = self.cfg.serve.idle_timeout_s if idle_timeout_s is None else idle_timeout_s
        self.max_pending = REALTIME_JITTER_CHUNKS if self.clock_mode == "realtime" else 1
        self.agent = agent
        self.sessions: dict[str, LiveSession] = {}
        self.outbox_messages = self.cfg.serve.outbox_messages
        self.max_text_backlog = self.cfg.serve.max_text_backlog
        self.failure: EngineFailed | None = None
        self.closed_by_kind: collections.Counter[str] = collections.Counter()  # sessions closed, by Closed.kind
        self.refused: collections.Counter[str] = collections.Counter()  # chunks `submit` refused, by code
        self.answered = 0  # replies put in outboxes
        self.ticks = 0
        self.tick_seconds: collections.deque[float] = collections.deque(maxlen=10_000)  # recent ticks, seconds
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="engine")
        self._wake = asyncio.Event()
        self._seeds = itertools.count(1)

    async def warm_up(self) -> None:
        """Compile the engine's tick (on the engine's thread) unless it is warm already."""
        if not getattr(self.engine, "warm", True):
            await self._on_worker(self.engine.warm_up)

    async def _on_worker(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    # -- sessions

    async def open(self, *, seed: int | None = None) -> LiveSession:
        if self.failure is not None:
            raise Refused("engine_failed", f"the engine has failed: {self.failure}")
        opening = asyncio.get_running_loop().run_in_executor(
            self._worker, self.engine.open, next(self._seeds) if seed is None else seed
        )
        try:
            slot = await asyncio.shield(opening)
        except CapacityError:
            n = self.engine.max_sessions
            raise Refused("capacity", f"all {n} sessions are in use; try again when one closes") from None
        except asyncio.CancelledError:
            # The caller went away while the worker opened the slot: give the slot back once it is open.
            opening.add_done_callback(lambda f: f.exception() or self._worker.submit(self.engine.close, f.result()))
            raise
        live = LiveSession(
            Session(self.cfg, uuid.uuid4().hex[:12], slot),
            StreamClock(),
            asyncio.Queue(maxsize=self.outbox_messages),
            time.monotonic(),
        )
        self.sessions[live.id] = live
        self._wake.set()
        return live

    def submit(self, live: LiveSession, chunk: ClientChunk) -> None:
        """Hand in the session's next chunk; Refused("busy") while the previous one is not ticked yet.

        In realtime mode up to REALTIME_JITTER_CHUNKS may wait (a jitter buffer: a chunk that arrived
        late, after its tick, and the next ones on time land between the same ticks).
        """
        try:
            self._check_submit(live, chunk)
        except Refused as r:
            self.refused[r.code] += 1
            raise
        live.pending.append(chunk)
        live.last_seen = time.monotonic()
        self._wake.set()

    def _check_submit(self, live: LiveSession, chunk: ClientChunk) -> None:
        if live.closed:
            raise Refused("closed", "this session is closed")
        if len(live.pending) >= self.max_pending:
            if self.max_pending == 1:
                raise Refused("busy", "one chunk in flight per session: wait for the reply before sending the next")
            raise Refused("busy", f"{self.max_pending} chunks already wait for their ticks: send in real time")
        if chunk.text:
            waiting = live.session.text_backlog + sum(
                len(tokenizer.encode(c.text, specials=False)) for c in live.pending
            )
            new = len(tokenizer.encode(chunk.text, specials=False))
            if waiting + new > self.max_text_backlog:
                per_chunk = self.cfg.stream.text_in_slots
                raise Refused(
                    "busy",
                    f"typed text: {waiting} tokens already wait to enter the model ({per_chunk} a chunk) and this "
                    f"chunk adds {new}; at most {self.max_text_backlog} may wait: send text more slowly",
                )

    def deliver(self, live: LiveSession, item: Reply | Notice) -> None:
        """Put a reply or notice in the session's outbox; a client that lets `serve.outbox_messages` pile up
        (it does not read) is dropped, so it holds neither memory nor its slot."""
        if live.closed:
            return
        try:
            live.outbox.put_nowait(item)
        except asyncio.QueueFull:
            self.close(
                live,
                f"the client is not reading: {self.outbox_messages} messages are waiting for it",
                kind="slow_client",
            )

    def close(self, live: LiveSession, reason: str, kind: str = "client") -> None:
        if live.closed:
            return
        live.closed = True
        self.sessions.pop(live.id, None)
        self.closed_by_kind[kind] += 1
        for task in live.tasks:
            task.cancel()
        if kind in CLOSE_CODES:  # the client learns the reason first; what it has not read is moot now
            while not live.outbox.empty():
                live.outbox.get_nowait()
        if live.outbox.full():  # a normal close behind a full outbox: the last reply gives way to it
            live.outbox.get_nowait()
        live.outbox.put_nowait(Closed(reason, kind, CLOSE_CODES.get(kind, 1000)))
        asyncio.get_running_loop().run_in_executor(self._worker, self.engine.close, live.session.slot)
        self._wake.set()

    def reap(self, now: float | None = None) -> list[str]:
        """Close the sessions idle for longer than serve.idle_timeout_s; their ids."""
        now = time.monotonic() if now is None else now
        timeout = self.idle_timeout_s
        idle = [x for x in self.sessions.values() if not x.pending and now - x.last_seen > timeout]
        for x in idle:
            self.close(x, f"idle for more than {timeout:g} s", kind="idle")
        return [x.id for x in idle]

    # -- ticks

    def ready(self) -> bool:
        """Whether a lockstep tick has anything to do: some session's chunk is in."""
        return any(x.pending for x in self.sessions.values())

    async def tick(self) -> list[tuple[LiveSession, Reply]]:
        """One tick: realtime — every open session (silence where nothing came); lockstep — those with input.

        Raises EngineFailed (after closing every session with the reason) when the engine's tick raises.
        """
        await asyncio.sleep(0)  # agents woken by the last tick's clock advance hand in their text first
        members = [x for x in self.sessions.values() if self.clock_mode == "realtime" or x.pending]
        if not members:
            return []
        chunks = []
        for x in members:
            incoming, x.incoming = x.incoming, []
            chunks.append((incoming, x.pending.popleft() if x.pending else None))

        def work():
            # Per session, what can only be its own fault (its input, its decoding) fails that session
            # alone; the engine's call, over every row, is the one thing that fails them all.
            start = time.perf_counter()
            failed: dict[str, BaseException] = {}
            inputs = {}
            for x, (incoming, chunk) in zip(members, chunks, strict=True):
                try:
                    for apply in incoming:
                        apply(x.session)
                    inputs[x.session.slot] = x.session.prepare(chunk)
                except Exception as e:
                    failed[x.id] = e
            try:
                outputs = self.engine.tick(inputs)
            except Exception as e:
                raise EngineFailed(f"{type(e).__name__}: {e}") from e
            done = []
            for x in members:
                if x.id in failed:
                    continue
                try:
                    done.append((x, *x.session.finish(outputs[x.session.slot])))
                except Exception as e:
                    failed[x.id] = e
            ends = {x.id for x in members if x.id not in failed and not self.engine.fits_next_chunk(x.session.slot)}
            return done, ends, failed, time.perf_counter() - start

        try:
            done, ends, failed, seconds = await self._on_worker(work)
        except EngineFailed as e:
            self.fail(e)
            raise
        self.ticks += 1
        self.tick_seconds.append(seconds)
        for x in members:
            if x.id in failed:
                self._internal_error(x, failed[x.id])
        replies = []
        for x, reply, requests in done:
            if x.closed:  # closed while its tick ran
                continue
            try:
                x.clock.advance(x.session.time_s)
                for request in requests:
                    self._delegate(x, request)
            except Exception as e:
                self._internal_error(x, e)
                continue
            if x.id in ends:
                reply = dataclasses.replace(
                    reply, events=(*reply.events, {"type": "end_of_context", "chunks": x.session.chunk})
                )
            self.answered += 1
            self.deliver(x, reply)
            replies.append((x, reply))
            if x.id in ends:
                self.close(
                    x,
                    f"end of context: the session's {self.engine.max_len} cache slots are full",
                    kind="end_of_context",
                )
        return replies

    def _internal_error(self, live: LiveSession, error: BaseException) -> None:
        logging.error(
            "session %s: closed by an internal error in its tick: %s",
            live.id,
            error,
            exc_info=(type(error), error, error.__traceback__),
        )
        self.close(live, f"internal error in this session's tick: {type(error).__name__}: {error}", "internal_error")

    def fail(self, error: EngineFailed) -> None:
        """The engine failed: log it, close every session with the reason, refuse new ones."""
        logging.error("the engine failed: %s", error, exc_info=(type(error), error, error.__traceback__))
        self.failure = error
        self.close_all(f"the server's engine failed: {error}", "engine_failed")

    def close_all(self, reason: str, kind: str) -> None:
        for x in list(self.sessions.values()):
            self.close(x, reason, kind)

    async def run(self) -> None:
        """Tick forever by the clock (cancel the task to stop)."""
        period = chunk_seconds(self.cfg.stream)
        if self.clock_mode == "realtime":
            deadline = time.monotonic()
            while True:
                deadline += period
                await asyncio.sleep(max(0.0, deadline - time.monotonic()))
                self.reap()
                await self.tick()
                if time.monotonic() > deadline + period:  # fell behind: carry on from now, not in a burst
                    deadline = time.monotonic()
        else:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=min(1.0, self.idle_timeout_s))
                self._wake.clear()
                self.reap()
                if self.ready():
                    await self.tick()

    async def shutdown(self) -> None:
        self.close_all("server shutting down", "shutdown")
        await self._on_worker(lambda: None)  # the last engine call has finished
        self._worker.shutdown(wait=True)

    # -- background agents

    def _delegate(self, live: LiveSession, request: str) -> None:
        if self.agent is None:
            live.incoming.append(lambda s: _error_result(s, request, "no background agent on this server"))
            return
        task = asyncio.get_running_loop().create_task(self._run_agent(live, request))
        live.tasks.add(task)
        task.add_done_callback(live.tasks.discard)

    async def _run_agent(self, live: LiveSession, request: str) -> None:
        s = live.session
        query = AgentRequest(s.id, request, s.time_s, s.transcript())
        pieces: list[str] = []
        try:
            async for piece in self.agent.answer(query, live.clock):
                if not pieces:
                    live.incoming.append(lambda s: s.begin_result())
                pieces.append(piece)
                live.incoming.append(lambda s, p=piece: s.add_result_text(p))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # an agent failure is an error result, never a dead session
            logging.warning("agent failed on %r for session %s: %s", request, s.id, e)
            message = str(e) or type(e).__name__
            if pieces:
                live.incoming.append(lambda s: s.end_result(request, "".join(pieces), message))
            else:
                live.incoming.append(lambda s: _error_result(s, request, message))
            return
        if not pieces:
            live.incoming.append(lambda s: s.begin_result())
        live.incoming.append(lambda s: s.end_result(request, "".join(pieces)))


def _error_result(session: Session, request: str, message: str) -> None:
    session.begin_result()
    session.add_result_text(f"error: {message}")
    session.end_result(request, "", message)
