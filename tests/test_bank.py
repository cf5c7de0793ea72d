"""The clip bank: cached clips equal live synthesis bit for bit; one builder when two processes race."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from interaction_jax.audio.voices import Voice
from interaction_jax.data.bank import ClipBank, LiveClips, bank_key

ENTRIES = (
    ("Good morning.", Voice("en-us", "f3", 170, 60, 50)),
    ("Tell me when five seconds have passed.", Voice("en-gb", "m2", 150, 40, 50)),
    ("Good morning.", Voice("en-gb", "m2", 150, 40, 50)),
)


@pytest.fixture(scope="module")
def live():
    return LiveClips()


def assert_same_clip(a, b):
    assert (a.text, a.voice, a.sample_rate) == (b.text, b.voice, b.sample_rate)
    assert a.audio.dtype == b.audio.dtype == np.float32
    np.testing.assert_array_equal(a.audio, b.audio)
    assert a.words == b.words


def test_bank_clips_equal_live_synthesis_bit_for_bit(tmp_path, live):
    bank = ClipBank.open(ENTRIES, tmp_path, progress=False)
    assert bank.built and len(bank) == 3
    for text, voice in ENTRIES:
        assert (text, voice) in bank
        assert_same_clip(bank.get(text, voice), live.get(text, voice))
    assert bank.misses == 0
    # live clips are rounded to 16-bit PCM, like the bank
    clip = live.get(*ENTRIES[0])
    np.testing.assert_array_equal(np.round(clip.audio * 32768), clip.audio * 32768)


def test_bank_is_reused_and_misses_fall_back_to_live(tmp_path, live):
    first = ClipBank.open(ENTRIES, tmp_path, progress=False)
    again = ClipBank.open(ENTRIES, tmp_path, progress=False)
    assert first.built and not again.built and again.folder == first.folder
    other = Voice("en-us", "m3", 180, 50, 50)
    assert ("Good morning.", other) not in again
    assert_same_clip(again.get("Good morning.", other), live.get("Good morning.", other))
    assert again.misses == 1


def test_bank_key_depends_on_contents():
    assert bank_key(ENTRIES, 16000) == bank_key(ENTRIES, 16000)
    assert bank_key(ENTRIES, 16000) != bank_key(ENTRIES[:2], 16000)
    assert bank_key(ENTRIES, 16000) != bank_key(ENTRIES, 8000)


def test_bank_pickles_and_reopens_its_arrays(tmp_path):
    bank = ClipBank.open(ENTRIES, tmp_path, progress=False)
    before = bank.get(*ENTRIES[1])  # opens the tensorstore handle
    clone = pickle.loads(pickle.dumps(bank))
    assert_same_clip(clone.get(*ENTRIES[1]), before)


def test_two_processes_building_at_once_build_once(tmp_path):
    script = textwrap.dedent(
        f"""
        from interaction_jax.data.bank import ClipBank
        from tests.test_bank import ENTRIES
        bank = ClipBank.open(ENTRIES, {str(tmp_path / "cache")!r}, progress=False)
        clip = bank.get(*ENTRIES[1])
        print(int(bank.built), clip.audio.size, float(abs(clip.audio).sum()))
        """
    )
    root = Path(__file__).resolve().parents[1]
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=root) for _ in range(2)
    ]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(int(o[0]) for o in outs) == [0, 1]  # exactly one of them built the bank
    assert outs[0][1:] == outs[1][1:]  # and both read the same clip
    leftovers = [p.name for p in (tmp_path / "cache").iterdir() if ".tmp-" in p.name]
    assert leftovers == []
