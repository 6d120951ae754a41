"""Tokenizers: the interface every family shares, the default causal 3D model, LFQ, Open-MAGVIT2,
and the safe reading and conversion of foreign checkpoints. Never imports the pipeline."""
