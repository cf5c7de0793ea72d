"""Background agents: what answers when the model writes DELEGATE request END_DELEGATE.

An agent is an object with `answer(request, clock)`, an async iterator of text pieces. The session
manager runs it as a task beside the session, places the pieces in the session's later TEXT_IN slots
between RESULT and END_RESULT (first come, first served, a few tokens per chunk), cancels it when the
session closes, and turns an exception into an error result (`RESULT error: … END_RESULT`), never a
dead session.

The agent sees the whole conversation (`AgentRequest.conversation`: the user's typed text, the model's
words and earlier results, with stream times; user *speech* is not transcribed: the project has no
speech recogniser). Time for an agent is the session's stream time (`StreamClock`): in realtime mode
that is wall time, in lockstep mode it advances tick by tick, so a lockstep evaluation is
reproducible however fast the client sends.

Built-ins: `ToolsAgent` (calculator, clock, unit conversion, `serve/tools.py`; deterministic, with a
configurable latency) and `LMAgent` (another checkpoint, asked turn-based: the request as typed text,
then silence until it has said its piece).
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import itertools
from collections.abc import AsyncIterator
from typing import Protocol

import numpy as np

from interaction_jax import tokenizer
from interaction_jax.config import Config
from interaction_jax.serve import tools
from interaction_jax.serve.session import ClientChunk, Session, Utterance


@dataclasses.dataclass(frozen=True)
class AgentRequest:
    session_id: str
    request: str  # the text between DELEGATE and END_DELEGATE
    time_s: float  # stream time of the chunk that completed the request
    conversation: tuple[Utterance, ...]


class StreamClock:
    """A session's stream time, advanced by the session manager after every tick of the session."""

    def __init__(self):
        self.now = 0.0
        self._waiters: list[tuple[float, int, asyncio.Future]] = []
        self._order = itertools.count()

    def advance(self, now: float) -> None:
        self.now = now
        while self._waiters and self._waiters[0][0] <= now + 1e-9:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)

    async def sleep(self, seconds: float) -> None:
        """Return once the stream has advanced by `seconds`."""
        if seconds <= 0:
            return
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (self.now + seconds, next(self._order), future))
        await future


class Agent(Protocol):
    def answer(self, request: AgentRequest, clock: StreamClock) -> AsyncIterator[str]: ...


class ToolsAgent:
    """Calculator, clock and unit conversion (`tools.answer`), answering `latency_s` of stream time later.

    The clock reads `clock_start` at the session's start and runs in stream time.
    """

    def __init__(self, latency_s: float = 0.4, clock_start: str = "12:00"):
        self.latency_s, self.clock_start = latency_s, clock_start

    async def answer(self, request: AgentRequest, clock: StreamClock) -> AsyncIterator[str]:
        await clock.sleep(self.latency_s)
        yield tools.answer(request.request, stream_time_s=clock.now, clock_start=self.clock_start)


class LMAgent:
    """Another checkpoint answering turn-based: the request goes in as typed text, then silence, and the
    text it says (up to its end of turn or `max_chunks`) streams back. One request at a time.

    It computes in wall time, on a thread of its own, so in lockstep mode the chunk its answer lands
    in depends on how fast the client sends (unlike `ToolsAgent`, which waits in stream time).
    """

    def __init__(self, cfg: Config, params: dict, *, max_chunks: int = 50):
        from interaction_jax import stream
        from interaction_jax.serve.engine import Engine

        self.cfg, self.max_chunks = cfg, max_chunks
        self.engine = Engine(cfg, params, max_sessions=1, max_len=stream.chunk_start(cfg.stream, max_chunks + 1))
        self._lock = asyncio.Lock()
        self._runs = itertools.count()

    @classmethod
    def from_workdir(cls, workdir: str, **kwargs) -> LMAgent:
        from interaction_jax.train import checkpoint

        cfg, params, _ = checkpoint.load_params(workdir)
        return cls(cfg, params, **kwargs)

    def _chunk(self, session: Session, text: str) -> tuple[str, bool]:
        silence = np.zeros(round(self.cfg.stream.sample_rate * self.cfg.stream.chunk_ms / 1000), np.float32)
        block = session.prepare(ClientChunk(silence, text=text))
        out = self.engine.tick({session.slot: block})[session.slot]
        reply, _ = session.finish(out)
        return reply.text, tokenizer.EOT in reply.text_ids

    async def answer(self, request: AgentRequest, clock: StreamClock) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        async with self._lock:
            slot = self.engine.open(seed=next(self._runs))
            session = Session(self.cfg, f"{request.session_id}-agent", slot, voice=False)
            try:
                said = False
                for k in range(self.max_chunks):
                    text, ended = await loop.run_in_executor(
                        None, self._chunk, session, request.request if k == 0 else ""
                    )
                    if text:
                        said = True
                        yield text
                    if said and ended:
                        return
            finally:
                self.engine.close(slot)


def make_agent(cfg: Config) -> Agent | None:
    """The agent `serve.agent` names (None for "none")."""
    s = cfg.serve
    if s.agent == "tools":
        return ToolsAgent(s.agent_latency_s, s.tools_clock)
    if s.agent == "lm":
        agent = LMAgent.from_workdir(s.agent_workdir)
        agent.engine.warm_up()  # compile now, not while the first request waits
        return agent
    return None
