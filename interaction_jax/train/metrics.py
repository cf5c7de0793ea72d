"""Metrics: one JSON object per line in `<workdir>/metrics.jsonl`, and TensorBoard events where a writer is installed.

Lines look like `{"step": 120, "split": "train", "loss": 2.31, …}`. On resume the file is cut back to the
restored step, so after a crash and restart it reads as if the run had never stopped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jax
from absl import logging


def _tensorboard_writer(folder: Path) -> Any | None:
    """A SummaryWriter from tensorboardX or PyTorch when one is installed, else None (JSONL only)."""
    for module in ("tensorboardX", "torch.utils.tensorboard"):
        try:
            mod = __import__(module, fromlist=["SummaryWriter"])
        except ImportError:
            continue
        return mod.SummaryWriter(str(folder))
    return None


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsLog:
    """Appends metric records; only process 0 writes (every process computes the same global values)."""

    def __init__(self, workdir: str | Path, resume_step: int = 0, tensorboard: bool = True):
        self.path = Path(workdir) / "metrics.jsonl"
        self.writes = jax.process_index() == 0
        self.tb = None
        if not self.writes:
            return
        kept = [r for r in read_jsonl(self.path) if r["step"] <= resume_step]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self._file = self.path.open("a")
        if tensorboard:
            self.tb = _tensorboard_writer(Path(workdir) / "tensorboard")
            if self.tb is None:
                logging.info("no TensorBoard writer (tensorboardX or torch) installed: metrics in %s only", self.path)

    def write(self, step: int, split: str, values: dict[str, float]) -> None:
        if not self.writes:
            return
        record = {"step": int(step), "split": split} | {k: _number(v) for k, v in values.items()}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self.tb is not None:
            for k, v in record.items():
                if k not in ("step", "split") and isinstance(v, float) and math.isfinite(v):
                    self.tb.add_scalar(f"{split}/{k}", v, step)

    def close(self) -> None:
        if self.writes:
            self._file.close()
            if self.tb is not None:
                self.tb.close()


def _number(v: Any) -> float | int | None:
    v = float(v)
    return v if math.isfinite(v) else None  # JSON has no NaN; a missing value reads as null
