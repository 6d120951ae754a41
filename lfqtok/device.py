"""Which torch device a `--device` value names: the one resolver behind encode, decode, training and
`load_tokenizer`, so every command accepts the same values and rejects the same mistakes in the same words."""

from __future__ import annotations

import torch

from .errors import UsageError

CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> the first GPU when there is one, else the CPU; 'cpu', 'cuda', 'cuda:N' (or a torch.device) as given.

    A malformed value, or a GPU this machine does not have, is a UsageError: found before any work starts.
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise UsageError(f"--device must be {CHOICES}, got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"--device must be {CHOICES}, got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) visible")
    return dev
