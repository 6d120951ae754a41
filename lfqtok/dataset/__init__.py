"""Training on tokens: `TokenDataset` over token shards and `collate`, whose batches cross from DataLoader
workers through reused shared memory (`handoff`)."""

from .token_dataset import TokenDataset, collate

__all__ = ["TokenDataset", "collate"]
