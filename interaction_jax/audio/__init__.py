"""Audio front and back end: log-mel and dMel features, the mel vocoder, wav files, resampling, voices."""
