"""Top-k: is a second routed expert per token worth its compute (top-1 vs top-2 of tiny's 4 experts)?

Top-2 doubles the expert FLOPs per token. Both runs keep the raw router probabilities as the expert
weights (`model.normalize_topk=false`): renormalised, the single top-1 weight would always be 1 and
the router would learn only from the load-balancing loss, which would make top-1 look worse than it
is (Switch Transformer routing scales by the probability for the same reason).
"""

from __future__ import annotations

PRESET = "tiny"
BASE = {"train.steps": 300, "model.normalize_topk": False}

TOP_K = (1, 2)


def runs():
    for k in TOP_K:
        yield {"model.top_k": k}
