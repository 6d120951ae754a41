"""Looking at tokens: previews and reconstruction quality (decode, metrics), codebook usage (stats)."""
