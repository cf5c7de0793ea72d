"""A Python client for the server, and `talk`: stream a wav (and frames, and typed text) through a session.

    async with await Client.connect("ws://127.0.0.1:8765") as client:
        await client.send_chunk(samples)             # float32 [chunk_samples] in [-1, 1]
        reply = await client.recv_reply()            # session.Reply: text, events, int16 audio

`talk` writes `output.wav`, time-synchronous with the input (same length; the model's audio for the
client's chunk i at i·chunk), `timeline.json` (per chunk: user activity, model text, model speaking,
events) and `timeline.png`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import websockets
from websockets.asyncio.client import ClientConnection, connect

from interaction_jax.audio import resample, wav
from interaction_jax.serve import protocol
from interaction_jax.serve.session import Reply

SAMPLE_RATE = 16000  # what the protocol carries (hello.sample_rate)
USER_ACTIVE_RMS = 0.01  # an input chunk whose RMS is above this counts as the user making sound


class SessionError(RuntimeError):
    """The server answered with an error message (`code`, `message`, `fatal`) or closed the session."""

    def __init__(self, code: str, message: str, fatal: bool = True):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.fatal = code, message, fatal


class Client:
    """One session on a server."""

    def __init__(self, ws: ClientConnection, ready: dict, hello: protocol.Hello):
        self.ws, self.ready, self.hello = ws, ready, hello
        self.notices: list[dict] = []  # non-fatal errors the server sent about our messages
        self.closed_reason: str | None = None

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        token: str | None = None,
        video: bool = False,
        audio_format: str = "pcm16",
        seed: int | None = None,
        sample_rate: int = 16000,
        chunk_ms: int = 200,
    ) -> Client:
        ws = await connect(url, max_size=None)
        hello = protocol.Hello(sample_rate, chunk_ms, audio_format, video, token, seed)
        # A server at its connection cap refuses before the hello: its error is still there to read.
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.send(protocol.encode_hello(hello))
        try:
            message = json.loads(await ws.recv())
        except websockets.ConnectionClosed as e:
            raise SessionError("closed", f"the server closed the connection before ready ({e})") from None
        if message["type"] != "ready":
            await ws.close()
            raise SessionError(message.get("code", "refused"), message.get("message", str(message)))
        return cls(ws, message, hello)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def send_chunk(self, audio: np.ndarray, *, frame=None, text: str = "", seq: int | None = None) -> None:
        await self.ws.send(
            protocol.encode_chunk(audio, audio_format=self.hello.audio_format, frame=frame, text=text, seq=seq)
        )

    async def recv(self) -> Reply | dict:
        """The next reply, or a control message (error / closed) as a dict."""
        message = await self.ws.recv()
        if isinstance(message, bytes):
            return protocol.decode_reply(message)
        return json.loads(message)

    async def recv_reply(self) -> Reply:
        """The next reply; non-fatal errors are kept in `notices`; a fatal one or a close raises SessionError."""
        while True:
            try:
                item = await self.recv()
            except websockets.ConnectionClosed as e:
                raise SessionError("closed", self.closed_reason or f"connection closed ({e})") from None
            if isinstance(item, Reply):
                return item
            if item["type"] == "closed":
                self.closed_reason = item["reason"]
                raise SessionError("closed", item["reason"])
            if item["type"] == "error" and item.get("fatal"):
                raise SessionError(item["code"], item["message"])
            self.notices.append(item)

    async def close(self) -> None:
        if self.ws.state is websockets.protocol.State.OPEN:
            with_close = protocol.control("close")
            with contextlib.suppress(websockets.ConnectionClosed):
                await self.ws.send(with_close)
        await self.ws.close()


# ----------------------------------------------------------------------------------------------
# talk


@dataclasses.dataclass(frozen=True)
class TalkResult:
    replies: list[Reply]  # one per input chunk, in order (None-free: missing ones are an error)
    output: np.ndarray  # int16, as long as the input
    out_dir: Path


def parse_text_arg(arg: str) -> tuple[float, str]:
    """`--text 3.2:hello` → (3.2, "hello")."""
    time_s, sep, text = arg.partition(":")
    try:
        t = float(time_s)
    except ValueError:
        t = math.nan
    if not sep or not text or not math.isfinite(t) or t < 0:
        raise ValueError(f"--text takes SECONDS:TEXT, e.g. 3.2:hello; got {arg!r}")
    return t, text


def load_frames(folder: str | Path, shape: tuple[int, int, int]) -> list[np.ndarray]:
    """The frames of a folder (`.png` or `.npy`, sorted by name), each uint8 `shape`."""
    import matplotlib.image

    files = sorted(p for p in Path(folder).iterdir() if p.suffix in (".png", ".npy"))
    if not files:
        raise ValueError(f"no .png or .npy frames in {folder}")
    frames = []
    for f in files:
        x = np.load(f) if f.suffix == ".npy" else matplotlib.image.imread(f)
        if x.dtype != np.uint8:
            x = np.clip(np.rint(np.asarray(x, np.float64) * 255), 0, 255).astype(np.uint8)
        x = x[..., :3]
        if x.shape != tuple(shape):
            raise ValueError(f"{f}: a frame must be {shape[0]}×{shape[1]}×3 for this model, got {x.shape}")
        frames.append(x)
    return frames


def read_input(path: str | Path, sample_rate: int) -> np.ndarray:
    """float32 mono samples of a wav at `sample_rate` (mixed down and resampled when needed)."""
    x, rate = wav.read_wav(path)
    x = np.asarray(x, np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1)
    return resample.resample(x, rate, sample_rate) if rate != sample_rate else x


async def talk(
    url: str,
    audio: np.ndarray,
    out_dir: str | Path,
    *,
    frames: list[np.ndarray] | str | Path | None = None,
    texts: list[tuple[float, str]] = (),
    token: str | None = None,
    seed: int | None = None,
    realtime: bool | None = None,
) -> TalkResult:
    """Stream `audio` (float32 at the server's rate) chunk by chunk and write the outputs to `out_dir`.

    frames: frame i is sent with the i-th frame chunk (chunk i·video_every); a folder is read with
    `load_frames` at the size the server asks for. texts: (seconds, text) typed at
    the chunk covering those seconds. realtime (default: as the server's clock) paces the chunks at
    one per chunk_ms; otherwise each chunk waits for the reply to the one before.
    """
    client = await Client.connect(url, token=token, video=frames is not None, seed=seed)
    ready = client.ready
    if isinstance(frames, (str, Path)):
        try:
            frames = load_frames(frames, tuple(ready["frame_shape"]))
        except ValueError:
            await client.close()
            raise
    n = ready["chunk_samples"]
    chunk_s = ready["chunk_ms"] / 1000
    num_chunks = max(1, -(-audio.size // n))
    padded = np.zeros(num_chunks * n, np.float32)
    padded[: audio.size] = audio
    typed: dict[int, list[str]] = {}
    for t, text in texts:
        typed.setdefault(int(t / chunk_s + 1e-9), []).append(text)
    realtime = ready["clock"] == "realtime" if realtime is None else realtime

    def chunk_args(i: int) -> dict:
        frame = None
        if frames is not None and i % ready["video_every"] == 0 and i // ready["video_every"] < len(frames):
            frame = frames[i // ready["video_every"]]
        return {"frame": frame, "text": " ".join(typed.get(i, [])), "seq": i}

    replies: dict[int, Reply] = {}
    first_chunk: int | None = None  # the session chunk that took our chunk 0 (realtime: after some silence)
    silent_after: list[Reply] = []
    async with client:
        if realtime:

            async def send_all():
                start = time.monotonic()
                for i in range(num_chunks):
                    await asyncio.sleep(max(0.0, start + i * chunk_s - time.monotonic()))
                    await client.send_chunk(padded[i * n : (i + 1) * n], **chunk_args(i))

            sender = asyncio.create_task(send_all())
            while len(replies) < num_chunks:
                reply = await asyncio.wait_for(client.recv_reply(), timeout=30 + 2 * chunk_s * num_chunks)
                _refused(client)
                if reply.seq is not None:
                    replies[reply.seq] = reply
                    first_chunk = reply.chunk if reply.seq == 0 else first_chunk
                elif first_chunk is not None:
                    silent_after.append(reply)
            await sender
        else:
            for i in range(num_chunks):
                await client.send_chunk(padded[i * n : (i + 1) * n], **chunk_args(i))
                reply = await client.recv_reply()
                _refused(client)
                replies[reply.seq] = reply
            first_chunk = replies[0].chunk
    ordered = [replies[i] for i in range(num_chunks)]
    # Time-synchronous output: every reply at its session chunk's time since our first chunk.
    output = np.zeros(num_chunks * n, np.int16)
    for r in (*ordered, *silent_after):
        k = r.chunk - first_chunk
        if 0 <= k < num_chunks:
            output[k * n : (k + 1) * n] = r.audio
    output = output[: audio.size]
    out_dir = Path(out_dir)
    write_talk_outputs(out_dir, padded[: audio.size], output, ordered, chunk_s, ready)
    return TalkResult(ordered, output, out_dir)


def _refused(client: Client) -> None:
    """A chunk the server refused leaves a hole in the stream: stop with the server's reason."""
    if client.notices:
        notice = client.notices[0]
        raise SessionError(notice["code"], f"the server refused a chunk: {notice['message']}", fatal=False)


def write_talk_outputs(
    out_dir: Path, user: np.ndarray, output: np.ndarray, replies: list[Reply], chunk_s: float, ready: dict
):
    from interaction_jax import timeline

    out_dir.mkdir(parents=True, exist_ok=True)
    rate = ready["sample_rate"]
    n = ready["chunk_samples"]
    wav.write_wav(out_dir / "output.wav", output, rate)
    rows = []
    for i, r in enumerate(replies):
        piece = user[i * n : (i + 1) * n]
        rows.append(
            {
                "chunk": i,
                "time_s": round(i * chunk_s, 6),
                "session_chunk": r.chunk,
                "user_active": bool(piece.size and np.sqrt(np.mean(np.square(piece))) > USER_ACTIVE_RMS),
                "model_text": r.text,
                "model_text_ids": list(r.text_ids),
                "text_in_ids": list(r.text_in_ids),
                "model_speaking": r.speaking,
                "events": list(r.events),
            }
        )
    (out_dir / "timeline.json").write_text(json.dumps({"session": ready["session"], "chunks": rows}, indent=1))
    markers = [(row["time_s"], e["type"]) for row in rows for e in row["events"] if e["type"] != "speaking"]
    timeline.plot_timeline(
        out_dir / "timeline.png",
        chunk_s=chunk_s,
        sample_rate=rate,
        user_audio=user,
        model_audio=wav.from_pcm16(output),
        text_in=np.array([r.text_in_ids for r in replies]),
        text_out=np.array([r.text_ids for r in replies]),
        markers=markers,
        title=f"session {ready['session']}",
    )
