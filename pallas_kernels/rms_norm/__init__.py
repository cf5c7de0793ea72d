"""RMSNorm, one row per program: `api.rms_norm`."""
