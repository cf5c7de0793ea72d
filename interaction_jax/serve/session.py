"""One live session's host side: the client's chunk → the engine's input block → the reply.

Input: PCM audio is analysed chunk by chunk with the same causal log-mel the training data was
rendered with (`LogMelStream`, bit-identical to the whole-clip analysis), so a session feeds the
model exactly the dMel tokens training saw for the same samples. Typed text and background results
wait in one FIFO and enter the TEXT_IN slots a few tokens per chunk, as the renderer places them.
The latest frame the client sent is the one a frame chunk shows (black before the first).

Output: text ids are decoded incrementally (a UTF-8 character may straddle chunks); DELEGATE … END_DELEGATE
becomes a request for the background agent instead of text; the mel is vocoded chunk by chunk
(`StreamingVocoder`, 25 ms behind) to PCM16; events mark the model starting and stopping to speak,
delegations and results entering the model's input.
"""

from __future__ import annotations

import codecs
import collections
import dataclasses

import numpy as np

from interaction_jax import stream, tokenizer
from interaction_jax.audio import activity, features, vocoder, wav
from interaction_jax.config import PATCH_SIZE, Config
from interaction_jax.serve.engine import ChunkInput, ChunkOutput
from interaction_jax.stream import chunk_seconds


@dataclasses.dataclass(frozen=True)
class ClientChunk:
    """One chunk as a client sends it: float32 audio [chunk_samples] in [-1, 1], optionally a frame
    (uint8 [H, W, 3]) and typed text; `seq` is the client's own chunk counter, echoed in the reply."""

    audio: np.ndarray
    frame: np.ndarray | None = None
    text: str = ""
    seq: int | None = None


@dataclasses.dataclass(frozen=True)
class Utterance:
    """A line of the conversation: `speaker` is "user" (typed), "model" or "result" (a background answer)."""

    speaker: str
    time_s: float
    text: str


@dataclasses.dataclass(frozen=True)
class Reply:
    """What a session gets back for one chunk.

    text: what the model said this chunk (spoken text; requests are events); text_ids / text_in_ids:
    the chunk's TEXT_OUT and TEXT_IN slots; audio: int16 [chunk_samples] of the model's voice;
    events: dicts with a "type" of speaking, delegated, result or end_of_context.
    """

    chunk: int
    seq: int | None
    text: str
    text_ids: tuple[int, ...]
    text_in_ids: tuple[int, ...]
    speaking: bool
    events: tuple[dict, ...]
    audio: np.ndarray


class Session:
    """The host-side state of one session in slot `slot` of the engine.

    `voice=False` skips the vocoder (the reply's audio is silence): for agents that only read the text.
    """

    def __init__(self, cfg: Config, session_id: str, slot: int, *, voice: bool = True):
        s = cfg.stream
        self.cfg, self.id, self.slot, self.voice = cfg, session_id, slot, voice
        self.chunk = 0  # the next chunk's index
        self._features = features.LogMelStream(s)
        self._vocoder = vocoder.StreamingVocoder(s, n_iter=cfg.serve.vocoder_iterations)
        self._frame = np.zeros((s.frame_height, s.frame_width, 3), np.uint8)
        self._text_in: collections.deque[int] = collections.deque()
        self._taken = 0  # TEXT_IN tokens taken from the queue so far
        self._queued = 0  # … and put in it
        self._result_events: collections.deque[tuple[int, dict]] = collections.deque()  # (queued mark, event)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._requests = tokenizer.RequestReader()  # DELEGATE … END_DELEGATE runs, across chunks
        self._speaking = False
        self._model_line: list[str] = []
        self._model_line_start = 0.0
        self._text_in_ids: tuple[int, ...] = ()
        self._prepared_seq: int | None = None
        self._events: list[dict] = []
        self.conversation: list[Utterance] = []

    @property
    def time_s(self) -> float:
        """Stream time at the start of the next chunk."""
        return self.chunk * chunk_seconds(self.cfg.stream)

    # -- TEXT_IN

    @property
    def text_backlog(self) -> int:
        """TEXT_IN tokens (typed text, results) waiting to enter the model, `text_in_slots` a chunk."""
        return len(self._text_in)

    def _enqueue(self, ids: list[int]) -> None:
        self._text_in.extend(ids)
        self._queued += len(ids)

    def begin_result(self) -> None:
        self._enqueue([tokenizer.RESULT])

    def add_result_text(self, text: str) -> None:
        self._enqueue(tokenizer.encode(text, specials=False))

    def end_result(self, request: str, text: str, error: str | None = None) -> None:
        """Close a result; its `result` event goes out with the chunk whose TEXT_IN takes END_RESULT."""
        self._enqueue([tokenizer.END_RESULT])
        self._result_events.append((self._queued, {"type": "result", "request": request, "text": text, "error": error}))
        self.conversation.append(Utterance("result", self.time_s, text if error is None else f"error: {error}"))

    # -- one chunk

    def prepare(self, chunk: ClientChunk | None) -> ChunkInput:
        """The engine's input block for the next chunk; `None` is a chunk of silence (nothing arrived)."""
        s = self.cfg.stream
        samples = np.zeros(self._features.chunk_samples, np.float32) if chunk is None else chunk.audio
        logmel = np.clip(self._features.push(samples), s.dmel_min, s.dmel_max)
        audio = stream.quantize_dmel(features.to_tokens(logmel, s), s)
        if chunk is not None and chunk.text:
            self._enqueue(tokenizer.encode(chunk.text, specials=False))
            self.conversation.append(Utterance("user", self.time_s, chunk.text))
        if chunk is not None and chunk.frame is not None:
            self._frame = np.asarray(chunk.frame, np.uint8)
        take = [self._text_in.popleft() for _ in range(min(s.text_in_slots, len(self._text_in)))]
        self._taken += len(take)
        text = np.full(s.text_in_slots, tokenizer.PAD, np.int32)
        text[: len(take)] = take
        self._text_in_ids = tuple(int(i) for i in text)
        self._prepared_seq = None if chunk is None else chunk.seq
        while self._result_events and self._result_events[0][0] <= self._taken:
            self._events.append(self._result_events.popleft()[1])
        patches = None
        if stream.chunk_has_frame(s, self.chunk):
            patches = stream.patchify(self._frame)
        elif s.video:
            patches = np.zeros((s.patches_per_frame, PATCH_SIZE, PATCH_SIZE, 3), np.uint8)
        return ChunkInput(audio=audio, text=text, patches=patches)

    def finish(self, out: ChunkOutput) -> tuple[Reply, list[str]]:
        """The reply to the chunk just ticked, and the delegation requests the model completed in it."""
        s = self.cfg.stream
        if out.chunk != self.chunk:
            raise RuntimeError(f"session {self.id}: the engine ticked chunk {out.chunk}, expected {self.chunk}")
        events, self._events = self._events, []
        spoken, requests, said = bytearray(), [], []

        def flush() -> None:  # the bytes spoken so far this chunk join the model's current line
            text = self._decoder.decode(bytes(spoken))
            spoken.clear()
            if text:
                if not self._model_line:
                    self._model_line_start = self.time_s
                self._model_line.append(text)
                said.append(text)

        for i in (int(t) for t in out.text):
            taken, request = self._requests.feed(i)
            if request is not None:
                requests.append(request)
                events.append({"type": "delegated", "request": request})
            if taken or i == tokenizer.PAD:
                continue
            if i < tokenizer.NUM_BYTES:
                spoken.append(i)
            elif i == tokenizer.SPEAK:  # a new word: a space, unless it starts the line
                if spoken or self._model_line:
                    spoken.append(ord(" "))
            elif i == tokenizer.EOT:
                flush()
                self._end_model_line()
        flush()
        text = "".join(said)

        mel = np.clip(out.mel, s.dmel_min, s.dmel_max)
        speaking = bool(activity.audio_active(activity.chunk_energy(mel[None], s), s)[0])
        if speaking != self._speaking:
            events.append({"type": "speaking", "on": speaking})
            self._speaking = speaking
        if self.voice:
            audio = wav.to_pcm16(np.clip(self._vocoder.push(mel), -1.0, 1.0))
        else:
            audio = np.zeros(self._vocoder.chunk_samples, np.int16)
        reply = Reply(
            chunk=self.chunk,
            seq=self._prepared_seq,
            text=text,
            text_ids=tuple(int(i) for i in out.text),
            text_in_ids=self._text_in_ids,
            speaking=speaking,
            events=tuple(events),
            audio=audio,
        )
        self.chunk += 1
        return reply, requests

    def _end_model_line(self) -> None:
        if self._model_line:
            self.conversation.append(Utterance("model", self._model_line_start, "".join(self._model_line)))
            self._model_line = []

    def transcript(self) -> tuple[Utterance, ...]:
        """The conversation so far, in time order, the model's unfinished line included."""
        lines = list(self.conversation)
        if self._model_line:
            lines.append(Utterance("model", self._model_line_start, "".join(self._model_line)))
        return tuple(sorted(lines, key=lambda u: u.time_s))
