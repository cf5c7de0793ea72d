"""interaction-jax: an early-fusion MoE interaction model in time-aligned 200 ms micro-turns."""

__version__ = "0.1.0"
