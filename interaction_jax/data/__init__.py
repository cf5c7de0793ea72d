"""Synthetic interaction episodes: scenarios, rendering to stream windows, the clip bank, the grain pipeline."""
