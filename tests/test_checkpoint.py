"""checkpoint.py: the restricted reader gives torch.save's tensors back and never imports or runs what a pickle names."""

from __future__ import annotations

import io
import os
import pickle
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from lfqtok.tokenizers.checkpoint import Checkpoint, Opaque, TensorRef, iter_opaque
from lfqtok.errors import ModelError

def zip_checkpoint(path: Path, pickled: bytes, records: dict[str, bytes] | None = None) -> Path:
    """A zip laid out like torch.save's, with `pickled` as its data.pkl."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickled)
        z.writestr("archive/byteorder", "little")
        for key, data in (records or {}).items():
            z.writestr(f"archive/data/{key}", data)
    return path


class ImportRecorder:
    """A meta-path finder that records every module an import statement asks for (and finds nothing itself)."""

    def __init__(self):
        self.asked: list[str] = []

    def find_spec(self, name, path=None, target=None):
        self.asked.append(name)
        return None


@pytest.fixture
def imports():
    recorder = ImportRecorder()
    sys.meta_path.insert(0, recorder)
    yield recorder
    sys.meta_path.remove(recorder)


# what torch.save writes comes back


def test_tensors_of_torch_save_come_back_equal(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    saved = {
        "weight": torch.randn(3, 4, 5),
        "half": torch.randn(7).to(torch.bfloat16),
        "ints": torch.arange(5, dtype=torch.int32),
        "flags": torch.tensor([True, False, True]),
        "param": torch.nn.Parameter(torch.ones(2, 2)),
        "view": base[1:, ::2],  # offset and strides into a shared storage
        "same_storage": base,
        "uint16": torch.tensor([0, 1, 65535], dtype=torch.int32).to(torch.uint16),  # _rebuild_tensor_v3, untyped storage
    }
    torch.save({"state_dict": saved, "epoch": 3}, tmp_path / "model.ckpt")
    with Checkpoint(tmp_path / "model.ckpt") as ckpt:
        refs = ckpt.state_dict()
        assert set(refs) == set(saved) and all(isinstance(r, TensorRef) for r in refs.values())
        for name, want in saved.items():
            got = ckpt.tensor(refs[name])
            assert got.dtype == want.dtype and torch.equal(got, want.detach()), name
        assert ckpt.objects["epoch"] == 3


def test_a_plain_state_dict_file_is_read_too(tmp_path):
    torch.save({"a": torch.ones(2)}, tmp_path / "plain.pt")
    with Checkpoint(tmp_path / "plain.pt") as ckpt:
        assert torch.equal(ckpt.tensor(ckpt.state_dict()["a"]), torch.ones(2))


def test_the_golden_lightning_checkpoint_is_read_without_lightning(imports, omv2_golden):
    with Checkpoint(omv2_golden / "video_small.ckpt") as ckpt:
        refs = ckpt.state_dict()
        hyper = ckpt.objects["hyper_parameters"]
    assert "lightning.fabric.utilities.data" not in sys.modules and "lightning" not in sys.modules
    assert not [m for m in imports.asked if m.startswith("lightning")]
    assert isinstance(hyper, Opaque) and hyper.qualname == "lightning.fabric.utilities.data.AttributeDict"
    assert list(iter_opaque(ckpt.objects)) == ["lightning.fabric.utilities.data.AttributeDict"]
    assert refs["encoder.conv_in.conv_1.weight"].shape == (32, 3, 3, 3, 3)
    assert "model_ema.encoderconv_inconv_1weight" in refs and any(k.startswith("loss.discriminator.") for k in refs)


# nothing a pickle names is imported or called


class _RunsACommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_calling_os_system_runs_nothing(tmp_path, imports):
    marker = tmp_path / "pwned"
    path = zip_checkpoint(tmp_path / "evil.ckpt", pickle.dumps({"state_dict": {}, "payload": _RunsACommand(marker)}, protocol=2))
    with Checkpoint(path) as ckpt:
        payload = ckpt.objects["payload"]
    assert not marker.exists()
    assert isinstance(payload, Opaque) and payload.qualname in ("posix.system", "os.system")
    assert payload.args == (f"touch {marker}",)  # what it would have been called with: kept, inert
    assert not [m for m in imports.asked if m in ("posix", "os")]


@pytest.mark.parametrize("opcodes", [
    b"\x80\x02cevil_fake_module\nboom\n)R.",  # GLOBAL + REDUCE: call evil_fake_module.boom()
    b"\x80\x04\x8c\x10evil_fake_module\x8c\x04boom\x93)\x81.",  # STACK_GLOBAL + NEWOBJ
    b"(ievil_fake_module\nboom\n.",  # INST (protocol 0)
    b"\x80\x02cbuiltins\neval\nX\x0c\x00\x00\x00__import__()\x85R.",  # eval("__import__()")
])
def test_a_pickle_naming_a_module_that_does_not_exist_imports_nothing(tmp_path, imports, opcodes):
    path = zip_checkpoint(tmp_path / "evil.ckpt", opcodes)
    with Checkpoint(path) as ckpt:
        assert isinstance(ckpt.objects, Opaque)
    assert "evil_fake_module" not in sys.modules and "evil_fake_module" not in imports.asked


# broken files get one line


def test_a_truncated_checkpoint_is_one_model_error(tmp_path, omv2_golden):
    data = (omv2_golden / "video_small.ckpt").read_bytes()
    for cut in (len(data) // 2, len(data) - 100):
        (tmp_path / "cut.ckpt").write_bytes(data[:cut])
        with pytest.raises(ModelError, match="truncated or corrupt") as err:
            Checkpoint(tmp_path / "cut.ckpt")
        assert "\n" not in str(err.value)


def test_a_zip_that_is_not_a_checkpoint_and_a_missing_record(tmp_path):
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(ModelError, match="not a PyTorch checkpoint"):
        Checkpoint(tmp_path / "other.zip")
    torch.save({"a": torch.ones(3)}, tmp_path / "t.pt")
    with zipfile.ZipFile(tmp_path / "t.pt") as src, zipfile.ZipFile(tmp_path / "gone.pt", "w") as dst:
        for info in src.infolist():
            if "/data/" not in info.filename:
                dst.writestr(info, src.read(info))
    with Checkpoint(tmp_path / "gone.pt") as ckpt, pytest.raises(ModelError, match="missing"):
        ckpt.tensor(ckpt.state_dict()["a"])


def test_a_tensor_reaching_past_its_storage_is_refused(tmp_path):
    buf = io.BytesIO()
    torch.save({"a": torch.ones(4)}, buf)
    with zipfile.ZipFile(buf) as z:
        pickled = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    # same pickle, but the record holds 2 floats where the tensor needs 4
    path = zip_checkpoint(tmp_path / "short.pt", pickled, {"0": torch.ones(2).numpy().tobytes()})
    with Checkpoint(path) as ckpt, pytest.raises(ModelError, match="holds 8 bytes, 16 expected"):
        ckpt.tensor(ckpt.state_dict()["a"])


def test_garbage_in_data_pkl_is_one_model_error(tmp_path):
    path = zip_checkpoint(tmp_path / "junk.ckpt", b"\x80\x02not a pickle at all")
    with pytest.raises(ModelError, match="not a readable PyTorch checkpoint"):
        Checkpoint(path)


def test_a_pickle_cannot_set_attributes_on_the_readers_own_objects(tmp_path):
    buf = io.BytesIO()
    torch.save({"a": torch.ones(4)}, buf)
    with zipfile.ZipFile(buf) as z:
        records = {n.rsplit("/", 1)[-1]: z.read(n) for n in z.namelist() if "/data/" in n}
        pickled = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    assert pickled.endswith(b"s.")  # ... REDUCE (the tensor), SETITEM, STOP
    # before its SETITEM, BUILD the tensor with the state {"offset": -3}
    hostile = pickled[:-2] + b"}X\x06\x00\x00\x00offsetJ\xfd\xff\xff\xffsbs."
    path = zip_checkpoint(tmp_path / "build.pt", hostile, records)
    with pytest.raises(ModelError, match="not a readable PyTorch checkpoint"):
        Checkpoint(path)
