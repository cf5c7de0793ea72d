"""Byte-level text tokenizer: UTF-8 bytes are ids 0–255, special tokens follow.

Text in the stream is sparse — most TEXT_IN/TEXT_OUT slots hold PAD — so the tokenizer is the
simplest one that round-trips any string and needs no vocabulary file.

SPEAK is the model's decision to start a word: it precedes every spoken word's bytes in TEXT_OUT
(`stream.py`, "The speak decision"), so whether to talk in a slot is one token against PAD.
"""

from __future__ import annotations

from collections.abc import Iterable

NUM_BYTES = 256
PAD = 256  # nothing in this slot
DELEGATE = 257  # start of a request to the background model (model → TEXT_OUT)
END_DELEGATE = 258  # end of that request
RESULT = 259  # start of a background result (arrives in TEXT_IN)
END_RESULT = 260  # end of that result
EOT = 261  # end of the model's utterance
SPEAK = 262  # the model starts a spoken word here; its bytes follow, no space between words (TEXT_OUT)

SPECIALS = {
    "<pad>": PAD,
    "<delegate>": DELEGATE,
    "</delegate>": END_DELEGATE,
    "<result>": RESULT,
    "</result>": END_RESULT,
    "<eot>": EOT,
    "<speak>": SPEAK,
}
SPECIAL_NAMES = {i: name for name, i in SPECIALS.items()}
NUM_IDS = NUM_BYTES + len(SPECIALS)


def padded_vocab_size(multiple: int = 128) -> int:
    """The vocabulary size rounded up to a multiple (for tensor-parallel sharding of the head)."""
    return -(-NUM_IDS // multiple) * multiple


def encode(text: str, specials: bool = True) -> list[int]:
    """UTF-8 bytes of `text`; with `specials`, names like `<delegate>` become their single ids."""
    if not specials:
        return list(text.encode("utf-8"))
    ids: list[int] = []
    i = 0
    while i < len(text):
        if text[i] == "<":
            for name, special_id in SPECIALS.items():
                if text.startswith(name, i):
                    ids.append(special_id)
                    i += len(name)
                    break
            else:
                ids.append(ord("<"))
                i += 1
            continue
        j = text.find("<", i + 1)
        j = len(text) if j < 0 else j
        ids.extend(text[i:j].encode("utf-8"))
        i = j
    return ids


MAX_REQUEST_BYTES = 256  # a DELEGATE run longer than this is not a request (a model that never closes one)


class RequestReader:
    """Reads DELEGATE … END_DELEGATE requests out of TEXT_OUT ids one token at a time: the one rule for
    what a request is, which the session (it sends them to the agent), the behaviour metrics and
    `spoken_text` share. A request is DELEGATE, at most MAX_REQUEST_BYTES bytes (PAD between them is
    nothing), END_DELEGATE. Any other token inside, or one byte too many, means it was not a request:
    what was read is dropped and that token counts as itself (a DELEGATE starts a new request)."""

    def __init__(self):
        self._body: bytearray | None = None

    @property
    def inside(self) -> bool:
        return self._body is not None

    def feed(self, i: int) -> tuple[bool, str | None]:
        """(taken, request): `taken` when the token belongs to a request (it is not spoken); `request`, the
        request's text, when this token completes one."""
        if self._body is None:
            if i == DELEGATE:
                self._body = bytearray()
                return True, None
            return False, None
        if i == PAD:
            return True, None
        if i == END_DELEGATE:
            text = self._body.decode("utf-8", errors="replace")
            self._body = None
            return True, text
        if i < NUM_BYTES and len(self._body) < MAX_REQUEST_BYTES:
            self._body.append(i)
            return True, None
        self._body = None  # not a request after all
        return self.feed(i)


def spoken_text(ids: Iterable[int]) -> str:
    """What the model says aloud in TEXT_OUT `ids`: its words as text, one space between them. PAD is
    dropped, SPEAK (which starts each word) and EOT are word breaks, a DELEGATE … END_DELEGATE request
    (`RequestReader`) is not spoken (it goes to the background model), and runs of whitespace become
    one space."""
    kept: list[int] = []
    requests = RequestReader()
    for i in (int(i) for i in ids):
        taken, _ = requests.feed(i)
        if taken:
            if i == DELEGATE:
                kept.append(ord(" "))
        elif i < NUM_BYTES:
            kept.append(i)
        elif i != PAD:
            kept.append(ord(" "))
    return " ".join(decode(kept).split())


def decode(ids: Iterable[int], skip_pad: bool = True) -> str:
    """Text for `ids`: bytes decoded as UTF-8 (invalid sequences replaced), specials by name.

    Ids beyond the tokenizer (the padded tail of the vocabulary) decode to `<unk>`.
    """
    out: list[str] = []
    pending = bytearray()
    for i in ids:
        i = int(i)
        if i < NUM_BYTES:
            pending.append(i)
            continue
        if i == PAD and skip_pad:
            continue  # PAD is "nothing in this slot": a character's bytes may straddle it
        if pending:
            out.append(pending.decode("utf-8", errors="replace"))
            pending.clear()
        out.append(SPECIAL_NAMES.get(i, "<unk>"))
    if pending:
        out.append(pending.decode("utf-8", errors="replace"))
    return "".join(out)
