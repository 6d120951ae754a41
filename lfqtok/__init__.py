"""lfqtok: stream videos through a causal 3D tokenizer with Lookup-Free Quantization into token shards.

Public names are imported lazily so that `lfqtok stats` and `lfqtok --help` start without torch.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "LFQ": "lfqtok.tokenizers.lfq",
    "Return": "lfqtok.tokenizers.lfq",
    "LossBreakdown": "lfqtok.tokenizers.lfq",
    "Tokenizer": "lfqtok.tokenizers.model",
    "TokenizerConfig": "lfqtok.tokenizers.model",
    "load_tokenizer": "lfqtok.tokenizers.model",
    "save_tokenizer": "lfqtok.tokenizers.model",
    "convert_checkpoint": "lfqtok.tokenizers.convert",
    "encode_dataset": "lfqtok.pipeline.encode",
    "EncodeConfig": "lfqtok.pipeline.encode",
    "TableOptions": "lfqtok.pipeline.tables",
    "decode_samples": "lfqtok.inspect.decode",
    "token_stats": "lfqtok.inspect.stats",
    "read_tokens": "lfqtok.io.shards",
    "TokenDataset": "lfqtok.dataset",
    "LfqtokError": "lfqtok.errors",
    "UsageError": "lfqtok.errors",
    "InputError": "lfqtok.errors",
    "VideoError": "lfqtok.errors",
    "ModelError": "lfqtok.errors",
    "OutputError": "lfqtok.errors",
    "OutputRefused": "lfqtok.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lfqtok' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
