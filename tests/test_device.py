"""device.py: the one meaning of --device, shared by encode, decode, training and load_tokenizer."""

from __future__ import annotations

import pytest
import torch

from lfqtok.device import resolve_device
from lfqtok.errors import UsageError
from lfqtok.tokenizers.model import load_tokenizer


def test_auto_is_the_gpu_when_there_is_one_else_the_cpu():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize(
    "value, message", [("nonsense", "--device must be auto, cpu, cuda or cuda:N"), ("meta", "--device must be"), ("cuda:99", "cuda:99")]
)
def test_what_this_machine_cannot_run_on_is_one_usage_error(value, message):
    with pytest.raises(UsageError, match=message):
        resolve_device(value)


def test_every_caller_takes_the_same_values(model):
    assert next(load_tokenizer(model, device="auto").parameters()).device.type == resolve_device("auto").type
    with pytest.raises(UsageError, match="--device must be"):
        load_tokenizer(model, device="nonsense")
