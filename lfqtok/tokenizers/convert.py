"""Foreign tokenizer checkpoints: recognize them by their contents, load them, convert them once to safetensors.

Supported: Open-MAGVIT2 video and image tokenizers (`open_magvit2.py`) as upstream's PyTorch/Lightning `.ckpt`
(read with the restricted reader of `checkpoint.py`: nothing in the pickle is imported or run) and as the lfqtok
safetensors file `convert_checkpoint` writes from one (metadata `family: open-magvit2-video` / `-image`). Loading the
`.ckpt` directly and loading its converted file give the same model and the same sha256 (the hash of the
converted file's bytes), so token manifests made either way name the same tokenizer.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import torch

from . import open_magvit2
from ..io import storage
from .checkpoint import Checkpoint, ZIP_MAGIC, iter_opaque
from ..errors import ModelError, UsageError

# constants

FAMILIES = open_magvit2.FAMILIES
PICKLE_MAGIC = b"\x80"  # a bare pickle (torch.save before PyTorch 1.6, or with _use_new_zipfile_serialization=False)
MAX_HEADER = 100_000_000

# recognizing a file


def read_head(path: Path) -> tuple[bytes, dict[str, str] | None]:
    """(first 4 bytes, safetensors metadata or None when the file is not safetensors), reading only the header."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return head[:4], None
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER:
                return head[:4], None
            text = f.read(n)
    except OSError as exc:
        raise ModelError(f"cannot read tokenizer checkpoint {path}: {exc.strerror or exc}") from None
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return head[:4], None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return head[:4], meta if isinstance(meta, dict) else ({} if isinstance(header, dict) else None)


def load_foreign(name_or_path: str | Path, device: torch.device) -> Any | None:
    """The tokenizer of a foreign-family checkpoint file, or None when `name_or_path` is lfqtok's own kind
    ("default", a missing path, or a safetensors file without a foreign `family`): `load_tokenizer` handles those."""
    if str(name_or_path) == "default":
        return None
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        return None
    magic, meta = read_head(path)
    if magic == ZIP_MAGIC:
        return load_checkpoint(path, device=device)
    if magic.startswith(PICKLE_MAGIC):
        raise ModelError(f"{path} is a legacy (non-zip) PyTorch pickle: not read; re-save it with torch.save (PyTorch >= 1.6)")
    family = (meta or {}).get("family")
    if family is None or meta.get("format") != open_magvit2.FORMAT:
        return None  # lfqtok's own checkpoints, or a safetensors file load_tokenizer will refuse with its own message
    if family in open_magvit2.FAMILIES:
        return open_magvit2.load_file(path, meta, device)
    raise ModelError(f"{path} is a tokenizer of family {family!r}, which this lfqtok does not know (supported: {', '.join(FAMILIES)})")


# upstream checkpoints


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu", raw: bool = False, name: str | None = None,
                    window_frames: int = open_magvit2.TRAINED_WINDOW) -> open_magvit2.OpenMagvit2Tokenizer:
    """An Open-MAGVIT2 tokenizer from upstream's `.ckpt`: EMA weights when it has them (`raw`: the raw ones).

    Only the tensors the model needs are read. `name` defaults to the file's stem; `window_frames` is the video
    models' trained clip length (image models have none).
    """
    path = Path(path)
    with Checkpoint(path) as ckpt:
        return _from_checkpoint(ckpt, torch.device(device), raw, name or path.stem, window_frames)


def _from_checkpoint(
    ckpt: Checkpoint, device: torch.device, raw: bool, name: str, window_frames: int
) -> open_magvit2.OpenMagvit2Tokenizer:
    refs = ckpt.state_dict()
    config, plan = open_magvit2.plan_weights({k: r.shape for k, r in refs.items()}, ckpt.label, raw=raw)
    if not config.image:
        config = replace(config, window_frames=window_frames)
    tensors = {}
    for ours, theirs in plan.items():
        if not refs[theirs].dtype.is_floating_point:
            raise ModelError(f"{ckpt.label}: {theirs} holds {refs[theirs].dtype}, not floating point weights")
        tensors[ours] = ckpt.tensor(refs[theirs])
    ckpt.release()
    return open_magvit2.build(config, tensors, name, device)


@dataclass
class ConvertSummary:
    """What `convert_checkpoint` wrote: the CLI prints it."""

    source: str
    output: str
    family: str
    name: str
    config: dict[str, Any]
    parameters: int
    weights: str  # "ema" or "raw"
    tensors_used: int
    tensors_ignored: int  # training-only tensors of the source (raw or EMA copies, discriminator, bookkeeping)
    ignored_pickle_classes: list[str]  # classes the pickle named that were never imported (e.g. Lightning's)
    sha256: str


def convert_checkpoint(source: str | Path, out: str | Path, *, raw: bool = False, name: str | None = None,
                       window_frames: int = open_magvit2.TRAINED_WINDOW, storage_options: Mapping[str, Any] | None = None) -> ConvertSummary:
    """Convert upstream's Open-MAGVIT2 `.ckpt` (video or image) to an lfqtok safetensors checkpoint at `out`, atomically.

    The result loads with `load_tokenizer(out)` / `--model out` safely and fast; its sha256 is stable. `source` may
    be a URL: fetched once into the local cache (`storage.fetch_cached`).
    """
    shown = storage.redact(source)
    source, out = Path(storage.fetch_cached(source, storage_options)).expanduser(), Path(out).expanduser()
    if not source.is_file():
        raise ModelError(f"checkpoint not found: {source}")
    if out.resolve() == source.resolve():
        raise UsageError(f"the output {out} would overwrite the checkpoint being converted")
    magic, meta = read_head(source)
    if magic != ZIP_MAGIC:
        kind = "an lfqtok safetensors checkpoint already" if meta is not None else "not a PyTorch zip checkpoint"
        raise ModelError(f"{source} is {kind}: nothing to convert (convert reads Open-MAGVIT2 .ckpt files)")
    with Checkpoint(source) as ckpt:
        total = len(ckpt.state_dict())
        ignored_classes = sorted(set(iter_opaque(ckpt.objects)))
        tok = _from_checkpoint(ckpt, torch.device("cpu"), raw, name or source.stem, window_frames)
    sha = open_magvit2.save(tok, out)
    used = len(tok.state_dict())
    return ConvertSummary(
        source=shown if storage.is_url(shown) else str(source), output=str(out), family=tok.config.family, name=tok.name, config=tok.config.to_dict(),
        parameters=sum(p.numel() for p in tok.parameters()), weights=tok.config.weights, tensors_used=used,
        tensors_ignored=total - used, ignored_pickle_classes=ignored_classes, sha256=sha,
    )
