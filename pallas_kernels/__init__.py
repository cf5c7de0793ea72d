"""Pallas kernels, one package per op (reference, TPU, GPU, api, bench); independent of interaction_jax."""
