"""Where scenarios get speech: live eSpeak NG synthesis, and the clip bank that caches it on disk.

Synthesis is deterministic (same text and voice → same samples). The bank stores 16-bit PCM, and clips
that miss it are rounded the same way (`as_pcm16_clip`), so a clip read from the bank and one synthesised
live are identical: the bank only saves time.
"""

from __future__ import annotations

import collections
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorstore as ts
import tqdm

from interaction_jax.audio import wav
from interaction_jax.audio.clip import Clip, Word


def as_pcm16_clip(clip: Clip) -> Clip:
    """The clip with its samples rounded to 16-bit PCM: what the bank stores, so live and cached agree."""
    audio = wav.from_pcm16(wav.to_pcm16(clip.audio))
    return dataclasses.replace(clip, audio=audio)


class LiveClips:
    """Synthesise on demand (rounded to 16-bit PCM), memoising the most recent `max_entries` clips."""

    def __init__(self, sample_rate: int = 16000, max_entries: int = 4096):
        self.sample_rate = sample_rate
        self.max_entries = max_entries
        self._cache: collections.OrderedDict[tuple[str, str], Clip] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.synthesised = 0  # how many clips this source had to synthesise (cache misses)

    def __getstate__(self):  # picklable for grain workers: each process starts with an empty memo
        state = dict(self.__dict__)
        state["_cache"], state["_lock"] = collections.OrderedDict(), None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def get(self, text: str, voice) -> Clip:
        from interaction_jax.audio import voices  # the C library loads on first use, not at import

        key = (text, voice.name)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        clip = as_pcm16_clip(voices.synthesize(text, voice, self.sample_rate))
        with self._lock:
            self.synthesised += 1
            self._cache[key] = clip
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return clip


# ----------------------------------------------------------------------------------------------
# The clip bank: every (text, voice) of the corpus, synthesised once, cached as tensorstore arrays

BANK_FORMAT = 1  # bump when the stored layout or the synthesis recipe changes; old banks are rebuilt
_CHUNK_SAMPLES = 1 << 18  # zarr chunk: 16 s of audio, a few clips per read


def default_cache_dir() -> Path:
    """$INTERACTION_JAX_CACHE/clips, else ~/.cache/interaction-jax/clips."""
    root = os.environ.get("INTERACTION_JAX_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "interaction-jax") / "clips"


def bank_key(entries: Sequence[tuple[str, Any]], sample_rate: int) -> str:
    """A fingerprint of what a bank holds and how it was made; names its folder."""
    import espeakng_loader

    h = hashlib.sha256()
    h.update(f"format={BANK_FORMAT};rate={sample_rate};espeak={_package_version(espeakng_loader)}\n".encode())
    for text, voice in entries:
        h.update(f"{voice.name}\t{text}\n".encode())
    return h.hexdigest()[:16]


def _package_version(module) -> str:
    from importlib import metadata

    try:
        return metadata.version(module.__name__.replace("_", "-"))
    except metadata.PackageNotFoundError:
        return "unknown"


def _audio_spec(path: Path, total: int | None = None) -> dict:
    spec: dict[str, Any] = {
        "driver": "zarr3",
        "kvstore": {"driver": "file", "path": str(path)},
        "context": {"cache_pool": {"total_bytes_limit": 64 << 20}},
        "recheck_cached_data": False,  # written once, never modified: no need to stat on every read
    }
    if total is not None:
        spec["metadata"] = {
            "shape": [total],
            "data_type": "int16",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [_CHUNK_SAMPLES]}},
            "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "zstd"}],
        }
    return spec


def build_bank(
    folder: Path, entries: Sequence[tuple[str, Any]], sample_rate: int = 16000, progress: bool = True
) -> None:
    """Synthesise `entries` into `folder` (samples.zarr + manifest.json), atomically.

    Writes into a temporary sibling and renames it into place, so a reader sees a complete bank or none.
    """
    folder = Path(folder)
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    source = LiveClips(sample_rate, max_entries=1)
    pieces, manifest, offset = [], [], 0
    for text, voice in tqdm.tqdm(entries, desc="clip bank", unit="clip", disable=not progress, leave=False):
        clip = source.get(text, voice)
        pieces.append(wav.to_pcm16(clip.audio))
        words = [[w.text, w.start_s, w.end_s] for w in clip.words]
        manifest.append(
            {"text": text, "voice": voice.name, "offset": offset, "length": clip.audio.size, "words": words}
        )
        offset += clip.audio.size
    samples = np.concatenate(pieces) if pieces else np.zeros(0, np.int16)
    store = ts.open(_audio_spec(tmp / "samples.zarr", max(samples.size, 1)), create=True).result()
    if samples.size:
        store[: samples.size].write(samples).result()
    (tmp / "manifest.json").write_text(json.dumps({"sample_rate": sample_rate, "clips": manifest}))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


class ClipBank:
    """A `ClipSource` over a bank on disk; requests outside it fall back to live synthesis (counted).

    Open it with `ClipBank.open(entries)`: the first process to ask builds the bank (with a progress
    bar) under an exclusive file lock; others wait on the lock and then read what it built. Picklable:
    a grain worker reopens the arrays in its own process.
    """

    def __init__(self, folder: Path, sample_rate: int = 16000):
        self.folder = Path(folder)
        self.sample_rate = sample_rate
        manifest = json.loads((self.folder / "manifest.json").read_text())
        if manifest["sample_rate"] != sample_rate:
            raise ValueError(f"clip bank {self.folder} is at {manifest['sample_rate']} Hz, expected {sample_rate}")
        self._index = {(c["text"], c["voice"]): c for c in manifest["clips"]}
        self._store = None
        self._live = LiveClips(sample_rate)
        self.misses = 0  # requests the bank did not hold (synthesised live instead)
        self.built = False  # whether this process built the bank when opening it

    @classmethod
    def open(
        cls,
        entries: Sequence[tuple[str, Any]],
        cache_dir: str | Path | None = None,
        sample_rate: int = 16000,
        progress: bool = True,
    ) -> ClipBank:
        cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        folder = cache_dir / bank_key(entries, sample_rate)
        built = False
        if not (folder / "manifest.json").exists():
            cache_dir.mkdir(parents=True, exist_ok=True)
            with open(cache_dir / f"{folder.name}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # a second builder waits here, then finds the bank built
                if not (folder / "manifest.json").exists():
                    build_bank(folder, entries, sample_rate, progress)
                    built = True
        bank = cls(folder, sample_rate)
        bank.built = built
        return bank

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: tuple[str, Any]) -> bool:
        text, voice = key
        return (text, voice.name) in self._index

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_store"] = None  # tensorstore handles do not cross processes; reopen lazily
        return state

    def get(self, text: str, voice) -> Clip:
        entry = self._index.get((text, voice.name))
        if entry is None:
            self.misses += 1
            return self._live.get(text, voice)
        if self._store is None:
            self._store = ts.open(_audio_spec(self.folder / "samples.zarr"), open=True, read=True).result()
        start = entry["offset"]
        pcm = self._store[start : start + entry["length"]].read().result()
        words = tuple(Word(t, s, e) for t, s, e in entry["words"])
        return Clip(text, voice.name, wav.from_pcm16(pcm), self.sample_rate, words)
