"""Mixture-of-experts SwiGLU FFN kernels: `api.moe_gemv` (few tokens) and `api.moe_gmm` (many)."""
