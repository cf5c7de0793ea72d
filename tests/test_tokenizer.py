"""Byte-level tokenizer: round trips, special tokens, PAD handling, vocabulary size."""

import pytest

from interaction_jax import tokenizer
from interaction_jax.tokenizer import DELEGATE, END_DELEGATE, END_RESULT, EOT, PAD, RESULT


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello, world",
        "The quick brown fox.\n\tTabs & newlines!",
        "héllo wörld",
        "日本語のテキスト",
        "ok 🎉👍🏽 done",
    ],
)
def test_round_trip(text):
    ids = tokenizer.encode(text)
    assert ids == list(text.encode("utf-8"))  # no specials in the text: ids are exactly its bytes
    assert all(0 <= i < 256 for i in ids)
    assert tokenizer.decode(ids) == text


def test_multibyte_ids():
    assert tokenizer.encode("é") == [0xC3, 0xA9]
    assert tokenizer.encode("🎉") == [0xF0, 0x9F, 0x8E, 0x89]
    assert tokenizer.encode("A") == [65]


def test_specials_inline():
    text = "hi<delegate>2+2</delegate>"
    ids = tokenizer.encode(text)
    assert ids == [ord("h"), ord("i"), DELEGATE, ord("2"), ord("+"), ord("2"), END_DELEGATE]
    assert tokenizer.decode(ids) == text
    text = "<result>4</result><eot>"
    assert tokenizer.encode(text) == [RESULT, ord("4"), END_RESULT, EOT]
    assert tokenizer.decode(tokenizer.encode(text)) == text
    # Without specials the names are plain bytes.
    assert tokenizer.encode("<eot>", specials=False) == list(b"<eot>")


def test_literal_angle_bracket_is_a_byte():
    for text in ("a < b", "1<2 and 3>2", "<", "<delegat", "<Delegate>", "x <<result>> y"):
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text
    assert tokenizer.encode("a<b") == [ord("a"), ord("<"), ord("b")]
    assert tokenizer.encode("<<eot>") == [ord("<"), EOT]
    assert tokenizer.encode("é<delegate>ü") == [0xC3, 0xA9, DELEGATE, 0xC3, 0xBC]


def test_decode_skips_pad():
    ids = [ord("h"), PAD, PAD, ord("i"), PAD]
    assert tokenizer.decode(ids) == "hi"
    assert tokenizer.decode(ids, skip_pad=False) == "h<pad><pad>i<pad>"
    assert tokenizer.decode([PAD] * 5) == ""


def test_skipped_pad_does_not_split_a_character():
    # PAD means "nothing in this slot": a character whose bytes land in slots around PADs must survive.
    assert tokenizer.decode([0xC3, PAD, 0xA9]) == "é"


def test_decode_unknown_and_invalid():
    assert tokenizer.decode([ord("a"), 300, ord("b")]) == "a<unk>b"
    assert tokenizer.decode([0xFF]) == "\ufffd"


def test_vocabulary_size():
    assert tokenizer.NUM_IDS == 263
    assert len(set(tokenizer.SPECIALS.values())) == len(tokenizer.SPECIALS)
    assert all(256 <= i < tokenizer.NUM_IDS for i in tokenizer.SPECIALS.values())
    assert tokenizer.padded_vocab_size() == 384
    assert tokenizer.padded_vocab_size(256) == 512


def test_spoken_text_reads_the_words_back():
    """SPEAK starts each word (and is the break between words), EOT ends a line, PAD is nothing, and a
    DELEGATE … END_DELEGATE request is not spoken."""
    SPEAK, EOT, D, ED = tokenizer.SPEAK, tokenizer.EOT, tokenizer.DELEGATE, tokenizer.END_DELEGATE
    words = lambda w: [SPEAK, *w.encode()]
    ids = [PAD, *words("Sure,"), PAD, PAD, *words("it's"), PAD, *words("four."), EOT, PAD]
    assert tokenizer.spoken_text(ids) == "Sure, it's four."
    assert tokenizer.spoken_text([*words("hi"), D, *b"2+2", ED, *words("there"), EOT, *words("ok")]) == "hi there ok"
    assert tokenizer.spoken_text([PAD, PAD, EOT]) == ""
    # bytes of one character straddling PAD still decode; without SPEAK, words run together
    assert tokenizer.spoken_text([SPEAK, 0xC3, PAD, 0xA9, *b"t\xc3\xa9"]) == "\u00e9t\u00e9"
    assert tokenizer.spoken_text([*b"ab", *b"cd"]) == "abcd"
    # round trip through the names: SPEAK is a special like the others
    assert tokenizer.encode(tokenizer.decode(ids)) == ids[:0] + [i for i in ids if i != PAD]


def read_requests(ids):
    reader, out = tokenizer.RequestReader(), []
    for i in ids:
        taken, request = reader.feed(i)
        out.append((taken, request))
    return out, reader.inside


def test_request_reader_is_the_one_rule_for_what_a_request_is():
    D, ED, SPEAK = DELEGATE, END_DELEGATE, tokenizer.SPEAK
    # DELEGATE, bytes (PAD between them is nothing), END_DELEGATE: every token taken, the text at the end
    out, inside = read_requests([D, *b"17", PAD, *b"+25", ED])
    assert all(taken for taken, _ in out) and out[-1] == (True, "17+25") and not inside
    assert [r for _, r in out[:-1]] == [None] * 7
    # outside a request nothing is taken
    assert read_requests([*b"hi", SPEAK, EOT]) == ([(False, None)] * 4, False)
    # another special inside: not a request; what was read is dropped and the special counts as itself
    out, inside = read_requests([D, *b"2+", SPEAK, *b"ok"])
    assert out == [(True, None)] * 3 + [(False, None)] * 3 and not inside
    # a DELEGATE inside starts a new request
    out, _ = read_requests([D, *b"x", D, *b"y", ED])
    assert out[-1] == (True, "y")
    # one byte past MAX_REQUEST_BYTES: not a request, and that byte is spoken
    n = tokenizer.MAX_REQUEST_BYTES
    out, inside = read_requests([D, *([ord("a")] * (n + 1)), ED])
    assert all(taken for taken, _ in out[: n + 1]) and out[n + 1] == (False, None) and out[-1] == (False, None)
    out, _ = read_requests([D, *([ord("a")] * n), ED])
    assert out[-1] == (True, "a" * n)


def test_spoken_text_drops_a_broken_request_but_keeps_what_broke_it():
    D, SPEAK = DELEGATE, tokenizer.SPEAK
    assert tokenizer.spoken_text([D, *b"2+2", SPEAK, *b"four", EOT]) == "four"
    assert tokenizer.spoken_text([SPEAK, *b"hi", D, *b"never closed"]) == "hi"
