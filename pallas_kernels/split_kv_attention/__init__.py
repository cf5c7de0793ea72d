"""Split-KV causal GQA attention against a KV cache: `api.split_kv_attention`."""
