"""Batch-invariant matmul: `api.bi_matmul`."""
