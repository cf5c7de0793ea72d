"""The wire format of a session (docs/protocol.md): JSON control messages and binary chunk messages.

Control messages are WebSocket text frames holding one JSON object with a "type". Chunks and replies
are binary frames: a little-endian uint32 N, N bytes of a UTF-8 JSON header, then the payload (the
chunk's audio, then its frame when the header says so; a reply's PCM16 audio). Every decoder here
checks everything (types, sizes, ranges, unknown fields) and raises `ProtocolError` with a code and a
message a client author can act on.
"""

from __future__ import annotations

import dataclasses
import json
import re
import struct
from collections.abc import Callable
from typing import Any

import numpy as np

from interaction_jax.audio import wav
from interaction_jax.config import Config
from interaction_jax.serve.session import ClientChunk, Reply
from interaction_jax.stream import chunk_samples

VERSION = 1
AUDIO_FORMATS = {"pcm16": np.dtype("<i2"), "f32": np.dtype("<f4")}
MAX_HEADER_BYTES = 4096
MAX_TEXT_BYTES = 512  # typed text per chunk
# Every message of the protocol is a flat object; the bounds keep a hostile one from reaching the JSON
# parser's recursion limit or Python's int-from-string limit (both raise past the usual decode errors).
MAX_JSON_DEPTH = 4
MAX_NUMBER_CHARS = 24  # digits (and sign, point, exponent) of one JSON number: every field fits in 20
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^][{}]")
_LENGTH = struct.Struct("<I")


class ProtocolError(ValueError):
    """A message that breaks the protocol. `fatal`: the connection cannot go on (bad hello, bad token)."""

    def __init__(self, code: str, message: str, fatal: bool = False):
        super().__init__(message)
        self.code, self.message, self.fatal = code, message, fatal

    def to_message(self) -> str:
        return json.dumps({"type": "error", "code": self.code, "message": self.message, "fatal": self.fatal})


@dataclasses.dataclass(frozen=True)
class Hello:
    sample_rate: int
    chunk_ms: int
    audio_format: str = "pcm16"
    video: bool = False
    token: str | None = None
    seed: int | None = None
    version: int = VERSION


def _check_fields(obj: Any, what: str, required: dict[str, tuple], optional: dict[str, tuple], code: str, fatal: bool):
    if not isinstance(obj, dict):
        raise ProtocolError(code, f"{what} must be a JSON object, got {type(obj).__name__}", fatal)
    unknown = sorted(set(obj) - set(required) - set(optional))
    if unknown:
        raise ProtocolError(
            code, f"{what}: unknown field(s) {unknown}; known: {sorted({**required, **optional})}", fatal
        )
    for name in required:
        if name not in obj:
            raise ProtocolError(code, f"{what}: missing field {name!r}", fatal)
    for name, types in {**required, **optional}.items():
        if name in obj and (not isinstance(obj[name], types) or (isinstance(obj[name], bool) and bool not in types)):
            names = "/".join(t.__name__ for t in types)
            raise ProtocolError(code, f"{what}: field {name!r} must be {names}, got {obj[name]!r}", fatal)


def _number(kind: type):
    def parse(digits: str):
        if len(digits) > MAX_NUMBER_CHARS:
            raise _TooLong(f"a number of {len(digits)} characters (at most {MAX_NUMBER_CHARS})")
        return kind(digits)

    return parse


class _TooLong(ValueError):
    pass


class _NotUtf8(ValueError):
    pass


def _json_depth(text: str) -> int:
    """The deepest nesting of objects and arrays in `text` (brackets inside strings do not count)."""
    depth = deepest = 0
    for c in _NOT_BRACKET.sub("", _JSON_STRING.sub("", text)):
        if c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
    return deepest


def _check_utf8(obj: Any) -> None:
    """Strict UTF-8: a \\ud800 escape decodes to a lone surrogate, which no UTF-8 encoder (the tokenizer's,
    json.dumps(ensure_ascii=False)'s) accepts later; it is refused here, at the boundary."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        for s in (key, value):
            if isinstance(s, str):
                try:
                    s.encode("utf-8")
                except UnicodeEncodeError:
                    raise _NotUtf8(f"a string is not valid UTF-8 (a lone surrogate): {s[:40]!r}") from None
        _check_utf8(value)


def parse_json(text: str | bytes, code: str, fatal: bool) -> Any:
    """`text` as JSON, nested at most MAX_JSON_DEPTH deep, numbers of at most MAX_NUMBER_CHARS, strict UTF-8."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        if (depth := _json_depth(text)) > MAX_JSON_DEPTH:
            raise ProtocolError(code, f"JSON nested {depth} deep (at most {MAX_JSON_DEPTH})", fatal)
        obj = json.loads(text, parse_int=_number(int), parse_float=_number(float))
        _check_utf8(obj)
        return obj
    except (json.JSONDecodeError, UnicodeDecodeError, _TooLong) as e:
        raise ProtocolError(code, f"not valid JSON ({e})", fatal) from None
    except _NotUtf8 as e:
        raise ProtocolError(code, str(e), fatal) from None


def decode_hello(
    message: str | bytes, cfg: Config, *, video_available: bool, token_ok: Callable[[str | None], bool] | None = None
) -> Hello:
    """The client's first message; every problem is fatal (there is no session to keep yet).

    `token_ok` (a server with a token) is asked first, before any field is checked, so that a client
    without the token learns nothing about the stream from the errors: only that its token is wrong.
    """
    if isinstance(message, bytes):
        raise ProtocolError("no_hello", "the first message must be a hello (a JSON text message), not a chunk", True)
    obj = parse_json(message, "bad_hello", True)
    if token_ok is not None:
        token = obj.get("token") if isinstance(obj, dict) else None
        if not token_ok(token if isinstance(token, str) else None):
            raise ProtocolError("bad_token", "missing or wrong token", True)
    _check_fields(
        obj,
        "hello",
        {"type": (str,), "sample_rate": (int,), "chunk_ms": (int,)},
        {"audio_format": (str,), "video": (bool,), "token": (str,), "seed": (int,), "version": (int,)},
        "bad_hello",
        True,
    )
    if obj["type"] != "hello":
        raise ProtocolError("no_hello", f"the first message must have type 'hello', got {obj['type']!r}", True)
    s = cfg.stream
    if obj["sample_rate"] != s.sample_rate:
        raise ProtocolError(
            "bad_hello", f"sample_rate must be {s.sample_rate} (resample first), got {obj['sample_rate']}", True
        )
    if obj["chunk_ms"] != s.chunk_ms:
        raise ProtocolError("bad_hello", f"this model runs {s.chunk_ms} ms chunks, not {obj['chunk_ms']}", True)
    audio_format = obj.get("audio_format", "pcm16")
    if audio_format not in AUDIO_FORMATS:
        raise ProtocolError(
            "bad_hello", f"audio_format must be one of {sorted(AUDIO_FORMATS)}, got {audio_format!r}", True
        )
    if obj.get("version", VERSION) != VERSION:
        raise ProtocolError("bad_hello", f"this server speaks protocol version {VERSION}, not {obj['version']}", True)
    if obj.get("video", False) and not video_available:
        raise ProtocolError("bad_hello", "this model takes no video: say video: false", True)
    if "seed" in obj and not 0 <= obj["seed"] < 2**32:
        raise ProtocolError("bad_hello", f"seed must be in [0, 2**32), got {obj['seed']}", True)
    return Hello(
        obj["sample_rate"], obj["chunk_ms"], audio_format, obj.get("video", False), obj.get("token"), obj.get("seed")
    )


def encode_hello(hello: Hello) -> str:
    obj = {k: v for k, v in dataclasses.asdict(hello).items() if v is not None}
    return json.dumps({"type": "hello", **obj})


def frame_bytes(cfg: Config) -> int:
    return cfg.stream.frame_height * cfg.stream.frame_width * 3


def max_message_bytes(cfg: Config) -> int:
    """The largest binary message a client may send: header + float32 audio + a frame."""
    return _LENGTH.size + MAX_HEADER_BYTES + chunk_samples(cfg.stream) * 4 + frame_bytes(cfg)


def _frame_message(header: dict, payload: bytes) -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    return _LENGTH.pack(len(head)) + head + payload


def _split_message(message: bytes, code: str) -> tuple[Any, memoryview]:
    view = memoryview(message)
    if len(view) < _LENGTH.size:
        raise ProtocolError(code, f"a binary message starts with a 4-byte header length; got {len(view)} bytes")
    (n,) = _LENGTH.unpack_from(view)
    if n > MAX_HEADER_BYTES or _LENGTH.size + n > len(view):
        raise ProtocolError(
            code, f"header length {n} is beyond the message ({len(view)} bytes; at most {MAX_HEADER_BYTES})"
        )
    header = parse_json(bytes(view[_LENGTH.size : _LENGTH.size + n]), code, False)
    return header, view[_LENGTH.size + n :]


def encode_chunk(
    audio: np.ndarray, *, audio_format: str = "pcm16", frame: np.ndarray | None = None, text: str = "", seq=None
) -> bytes:
    """A chunk message: audio (float in [-1, 1] or int16) in `audio_format`, an optional frame and text."""
    if audio_format == "pcm16":
        payload = wav.to_pcm16(audio).astype("<i2").tobytes()
    else:
        payload = np.asarray(audio, "<f4").tobytes()
    header: dict[str, Any] = {}
    if seq is not None:
        header["seq"] = int(seq)
    if text:
        header["text"] = text
    if frame is not None:
        header["frame"] = True
        payload += np.ascontiguousarray(frame, np.uint8).tobytes()
    return _frame_message(header, payload)


def decode_chunk(message: bytes, cfg: Config, hello: Hello) -> ClientChunk:
    """A client's chunk, checked; ProtocolError (not fatal: the session goes on) when it is malformed."""
    header, payload = _split_message(message, "bad_chunk")
    _check_fields(header, "chunk header", {}, {"seq": (int,), "text": (str,), "frame": (bool,)}, "bad_chunk", False)
    if header.get("seq", 0) < 0:
        raise ProtocolError("bad_chunk", f"seq must be >= 0, got {header['seq']}")
    text = header.get("text", "")
    if len(text.encode("utf-8")) > MAX_TEXT_BYTES:  # parse_json has refused what is not strict UTF-8
        raise ProtocolError("bad_chunk", f"typed text is limited to {MAX_TEXT_BYTES} UTF-8 bytes per chunk")
    n = chunk_samples(cfg.stream)
    dtype = AUDIO_FORMATS[hello.audio_format]
    audio_bytes = n * dtype.itemsize
    has_frame = header.get("frame", False)
    if has_frame and not hello.video:
        raise ProtocolError("bad_chunk", "a frame came in a session without video (say video: true in hello)")
    expected = audio_bytes + (frame_bytes(cfg) if has_frame else 0)
    if len(payload) != expected:
        s = cfg.stream
        frame = f" + a {s.frame_height}×{s.frame_width}×3 uint8 frame = {expected} bytes" if has_frame else ""
        raise ProtocolError(
            "bad_chunk",
            f"the payload must be {n} {hello.audio_format} samples ({audio_bytes} bytes){frame}, got {len(payload)}",
        )
    samples = np.frombuffer(payload[:audio_bytes], dtype)
    if hello.audio_format == "pcm16":
        audio = wav.from_pcm16(samples.astype(np.int16))
    else:
        if not np.all(np.isfinite(samples)):
            raise ProtocolError("bad_chunk", "audio holds NaN or infinite samples")
        if np.max(np.abs(samples)) > 1.0:
            raise ProtocolError(
                "bad_chunk", f"f32 samples must lie in [-1, 1], got up to {np.max(np.abs(samples)):.3g}"
            )
        audio = samples.astype(np.float32)
    frame = None
    if has_frame:
        s = cfg.stream
        frame = np.frombuffer(payload[audio_bytes:], np.uint8).reshape(s.frame_height, s.frame_width, 3).copy()
    return ClientChunk(audio=audio, frame=frame, text=text, seq=header.get("seq"))


def encode_reply(reply: Reply) -> bytes:
    header = {
        "type": "reply",
        "chunk": reply.chunk,
        "seq": reply.seq,
        "text": reply.text,
        "text_ids": list(reply.text_ids),
        "text_in_ids": list(reply.text_in_ids),
        "speaking": reply.speaking,
        "events": list(reply.events),
    }
    return _frame_message(header, np.asarray(reply.audio, "<i2").tobytes())


def decode_reply(message: bytes) -> Reply:
    header, payload = _split_message(message, "bad_reply")
    return Reply(
        chunk=header["chunk"],
        seq=header["seq"],
        text=header["text"],
        text_ids=tuple(header["text_ids"]),
        text_in_ids=tuple(header["text_in_ids"]),
        speaking=header["speaking"],
        events=tuple(header["events"]),
        audio=np.frombuffer(payload, "<i2").astype(np.int16),
    )


def control(type_: str, **fields) -> str:
    return json.dumps({"type": type_, **fields})


def decode_control(message: str) -> dict:
    """A text message after hello: {"type": "close"} is the only one a client sends."""
    obj = parse_json(message, "bad_message", False)
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise ProtocolError("bad_message", "a text message must be a JSON object with a string 'type'")
    if obj["type"] == "hello":
        raise ProtocolError("second_hello", "this session already said hello")
    if obj["type"] != "close":
        raise ProtocolError(
            "bad_message", f"unknown message type {obj['type']!r}; after hello a client sends chunks or close"
        )
    if set(obj) - {"type"}:
        raise ProtocolError("bad_message", f"close takes no fields, got {sorted(set(obj) - {'type'})}")
    return obj
