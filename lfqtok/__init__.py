"""lfqtok: stream videos through a causal 3D tokenizer with Lookup-Free Quantization into token shards.

Public names are imported lazily so that `lfqtok stats` and `lfqtok --help` start without torch.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "LFQ": "lfqtok.lfq",
    "Return": "lfqtok.lfq",
    "LossBreakdown": "lfqtok.lfq",
    "Tokenizer": "lfqtok.model",
    "TokenizerConfig": "lfqtok.model",
    "load_tokenizer": "lfqtok.model",
    "save_tokenizer": "lfqtok.model",
    "convert_checkpoint": "lfqtok.convert",
    "encode_dataset": "lfqtok.encode",
    "EncodeConfig": "lfqtok.encode",
    "decode_samples": "lfqtok.decode",
    "token_stats": "lfqtok.stats",
    "read_tokens": "lfqtok.shards",
    "TokenDataset": "lfqtok.dataset",
    "LfqtokError": "lfqtok.errors",
    "UsageError": "lfqtok.errors",
    "InputError": "lfqtok.errors",
    "VideoError": "lfqtok.errors",
    "ModelError": "lfqtok.errors",
    "OutputError": "lfqtok.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lfqtok' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
