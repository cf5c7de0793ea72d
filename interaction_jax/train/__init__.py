"""Training (DESIGN §10): optimizer, train state and step, checkpoints, the loop, metrics, multi-host.

from interaction_jax.train import loop
result = loop.train(cfg, "runs/tiny")      # resumes from runs/tiny if it holds a checkpoint
"""
