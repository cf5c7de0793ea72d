"""The early-fusion MoE decoder. Knows nothing of data, training or serving (DESIGN §2)."""
