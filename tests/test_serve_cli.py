"""`interaction-jax serve` and `interaction-jax talk` as a user runs them: a checkpoint, a server process, a wav."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import websockets
import websockets.sync.client

from interaction_jax import config as config_lib
from interaction_jax import tokenizer
from interaction_jax.audio import wav
from interaction_jax.train import loop
from tests.test_train import SMALL


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "interaction_jax.cli", *args]


@pytest.mark.slow
def test_serve_and_talk_from_a_checkpoint(tmp_path):
    workdir = tmp_path / "run"
    cfg = config_lib.override(config_lib.preset("tiny"), [*SMALL, "train.steps=1", "train.eval_every=0"])
    loop.train(cfg, workdir, progress=False)

    port = _free_port()
    server = subprocess.Popen(
        _cli(
            "serve",
            "--workdir",
            str(workdir),
            "--port",
            str(port),
            "--set",
            "serve.clock=lockstep",
            "--allow-origin",
            "https://app.example",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        banner = ""
        while "serving ws://" not in banner:
            assert server.poll() is None, server.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "the server did not come up"
            banner = server.stdout.readline()
        assert f"ws://127.0.0.1:{port}" in banner and "clock lockstep" in banner and "agent tools" in banner

        # 2.1 s of stereo noise at 22.05 kHz: talk mixes it down and resamples it to 16 kHz.
        rng = np.random.default_rng(0)
        wav.write_wav(tmp_path / "in.wav", 0.1 * rng.standard_normal((46305, 2)).clip(-3, 3) / 3, 22050)
        frames = tmp_path / "frames"
        frames.mkdir()
        for i in range(2):
            np.save(frames / f"{i:03d}.npy", rng.integers(0, 256, (80, 80, 3), dtype=np.uint8))
        out = tmp_path / "out"
        talk = subprocess.run(
            _cli(
                "talk",
                "--server",
                f"ws://127.0.0.1:{port}",
                "--wav",
                str(tmp_path / "in.wav"),
                "--frames",
                str(frames),
                "--text",
                "0.45:hello",
                "--out",
                str(out),
            ),
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert talk.returncode == 0, talk.stderr[-3000:]
        assert "11 chunks" in talk.stdout

        output, rate = wav.read_wav(out / "output.wav")
        assert rate == 16000 and output.shape == (33600,)  # as long as the input at 16 kHz
        timeline = json.loads((out / "timeline.json").read_text())
        chunks = timeline["chunks"]
        assert [c["chunk"] for c in chunks] == list(range(11))
        assert tokenizer.decode(i for c in chunks for i in c["text_in_ids"] if i != tokenizer.PAD) == "hello"
        assert chunks[2]["text_in_ids"] == tokenizer.encode("hell")  # typed at 0.45 s: the chunk covering it
        assert all(c["user_active"] for c in chunks)
        assert (out / "timeline.png").read_bytes()[:4] == b"\x89PNG"

        # The live counters, on the server's own port (what `curl http://127.0.0.1:PORT/metrics` shows).
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
            assert r.read() == b"ok\n"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            metrics = set(r.read().decode().splitlines())
        for line in (
            "interaction_jax_ticks_total 11",
            "interaction_jax_replies_total 11",
            "interaction_jax_sessions_open 0",
            'interaction_jax_sessions_closed_total{reason="client"} 1',
            "interaction_jax_compilations 1",
        ):
            assert line in metrics, line

        # --allow-origin takes effect: that browser page may open a session, any other is refused (403)
        with websockets.sync.client.connect(f"ws://127.0.0.1:{port}", origin="https://app.example", open_timeout=10):
            pass
        with pytest.raises(websockets.InvalidStatus, match="403"):
            websockets.sync.client.connect(f"ws://127.0.0.1:{port}", origin="https://evil.example", open_timeout=10)

        bad = subprocess.run(
            _cli("talk", "--server", f"ws://127.0.0.1:{port}", "--wav", str(tmp_path / "in.wav"), "--text", "soon"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert bad.returncode != 0 and "--text takes SECONDS:TEXT" in bad.stderr
    finally:
        server.send_signal(signal.SIGTERM)
        rest, err = server.communicate(timeout=60)
    assert server.returncode == 0, err[-3000:]
    # talk, and the allowed browser origin; the refused origin and the bad --text never connected
    assert "stopped after 11 ticks; 2 connection(s)" in rest


def test_serve_refuses_a_public_bind_without_a_token_before_loading_the_model(tmp_path):
    # The workdir holds no checkpoint at all: the refusal comes before anything tries to load one.
    refused = subprocess.run(
        _cli("serve", "--workdir", str(tmp_path / "no-run"), "--host", "0.0.0.0"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 1
    last = refused.stderr.strip().splitlines()[-1]
    assert last == "binding 0.0.0.0 exposes the model beyond this machine: pass an auth token (--auth-token)"
    assert "no checkpoint in" not in refused.stderr
