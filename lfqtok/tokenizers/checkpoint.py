"""Restricted reader of PyTorch zip checkpoints (`torch.save`, Lightning `.ckpt`): their tensors, nothing run.

A checkpoint is untrusted input: its `data.pkl` may name any function of any module. This reader unpickles it
with a `find_class` that resolves a fixed list of names (the torch rebuild helpers, storage types, dtypes,
`OrderedDict`) to lfqtok's own inert stand-ins and every other name to an `Opaque` placeholder class: nothing
the pickle names is imported, called or even looked up. Tensors come out as `TensorRef`s (storage record,
dtype, offset, shape, stride); `Checkpoint.tensor` reads one record from the zip and checks every offset, size
and stride against its length before it builds the tensor. Legacy (pre-1.6, non-zip) files are not read.
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from ..errors import ModelError

# constants

ZIP_MAGIC = b"PK\x03\x04"
STORAGE_DTYPES = {  # legacy typed storage class name -> element dtype
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexDoubleStorage": torch.complex128,
    "ComplexFloatStorage": torch.complex64,
}
DTYPE_NAMES = (  # `torch.<name>` dtypes a pickle may name (the dtype argument of _rebuild_tensor_v3)
    "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "uint16", "uint32",
    "uint64", "bool", "complex64", "complex128", "float8_e4m3fn", "float8_e5m2",
)

# placeholders


class Opaque:
    """Stand-in for an object of a class the reader does not resolve: keeps what the pickle gave it, runs nothing."""

    qualname = "?"  # "module.name" the pickle asked for (set on the per-name subclass)

    def __new__(cls, *args: Any, **kwargs: Any) -> "Opaque":
        obj = object.__new__(cls)
        obj.__dict__.update(args=args, state=None, items={}, values=[])
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:  # dict subclasses (Lightning's AttributeDict) fill here
        self.items[key] = value

    def append(self, value: Any) -> None:  # list subclasses
        self.values.append(value)

    def extend(self, values: Any) -> None:
        self.values.extend(values)

    def __repr__(self) -> str:
        return f"<opaque {self.qualname}>"


class Sealed:
    """Base of the reader's own objects: a pickle's BUILD opcode cannot change them (it calls __setstate__)."""

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError(f"the pickle tries to set the state of a {type(self).__name__}")


@dataclass(frozen=True)
class StorageType(Sealed):
    """What a pickle's storage class name means: the element dtype (None: untyped bytes)."""

    dtype: torch.dtype | None


@dataclass(frozen=True)
class StorageRef(Sealed):
    """A storage record of the zip: `data/{key}`, `numel` elements of `dtype` (None: bytes)."""

    key: str
    dtype: torch.dtype | None
    numel: int


@dataclass(frozen=True)
class TensorRef(Sealed):
    """A tensor of the checkpoint, not read yet: a strided view of a storage record."""

    storage: StorageRef
    dtype: torch.dtype
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


# the restricted unpickler


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise pickle.UnpicklingError(f"{what} is not a tuple of integers")
    return tuple(value)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> TensorRef:
    """torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])."""
    if not isinstance(storage, StorageRef) or storage.dtype is None:
        raise pickle.UnpicklingError("tensor without a typed storage")
    return _tensor_ref(storage, storage.dtype, offset, size, stride)


def _rebuild_tensor_v3(
    storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any, dtype: Any, *rest: Any
) -> TensorRef:
    """torch._utils._rebuild_tensor_v3: the same with the dtype given apart (untyped byte storage)."""
    if not isinstance(storage, StorageRef) or not isinstance(dtype, torch.dtype):
        raise pickle.UnpicklingError("tensor v3 without a storage or a dtype")
    return _tensor_ref(storage, dtype, offset, size, stride)


def _tensor_ref(storage: StorageRef, dtype: torch.dtype, offset: Any, size: Any, stride: Any) -> TensorRef:
    shape, strides = _ints(size, "tensor size"), _ints(stride, "tensor stride")
    if not isinstance(offset, int) or len(shape) != len(strides):
        raise pickle.UnpicklingError("tensor offset or stride is malformed")
    return TensorRef(storage, dtype, offset, shape, strides)


def _rebuild_parameter(data: Any, *rest: Any) -> Any:
    """torch._utils._rebuild_parameter(_with_state)(data, requires_grad, hooks[, state]): the data alone."""
    return data


RESOLVED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): tuple,
    ("torch.storage", "UntypedStorage"): StorageType(None),
    **{("torch", name): StorageType(dtype) for name, dtype in STORAGE_DTYPES.items()},
    **{("torch", name): getattr(torch, name) for name in DTYPE_NAMES if hasattr(torch, name)},
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles `data.pkl`: listed names -> stand-ins (RESOLVED), any other name -> an Opaque subclass."""

    def __init__(self, file: Any):
        super().__init__(file)
        self.opaque: dict[str, type[Opaque]] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in RESOLVED:
            return RESOLVED[(module, name)]
        qualname = f"{module}.{name}"
        if qualname not in self.opaque:
            self.opaque[qualname] = type("Opaque", (Opaque,), {"qualname": qualname})
        return self.opaque[qualname]

    def persistent_load(self, pid: Any) -> StorageRef:
        """('storage', storage type, key, location, numel) -> a StorageRef; the location is ignored (CPU)."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {str(pid)[:60]}")
        _, kind, key, _, numel = pid
        if not isinstance(kind, StorageType) or not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError(f"unsupported storage {str(pid)[:60]}")
        return StorageRef(key, kind.dtype, numel)


# the checkpoint


class Checkpoint:
    """An opened zip checkpoint: `objects` is its unpickled tree (tensors as TensorRefs); `tensor` reads one.

    Use as a context manager (it holds the zip file open).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.label = str(path)
        try:
            self.zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise ModelError(f"{self.label}: truncated or corrupt PyTorch checkpoint ({_reason(exc)})") from None
        try:
            self.archive = self._archive()
            byteorder = self._record("byteorder", required=False)
            if byteorder not in (None, b"little"):
                raise ModelError(f"{self.label}: a {byteorder.decode(errors='replace')}-endian checkpoint is not supported")
            with self.zip.open(f"{self.archive}/data.pkl") as f:
                self.objects = RestrictedUnpickler(f).load()
        except ModelError:
            self.zip.close()
            raise
        except Exception as exc:  # any malformed pickle or zip member: one line, never a traceback
            self.zip.close()
            raise ModelError(f"{self.label}: not a readable PyTorch checkpoint ({_reason(exc)})") from None
        self._storages: dict[str, torch.Tensor] = {}

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._storages.clear()
        self.zip.close()

    def state_dict(self) -> dict[str, TensorRef]:
        """The name -> TensorRef mapping: Lightning's `state_dict` entry, or the top-level dict itself."""
        top = self.objects
        inner = top.get("state_dict") if isinstance(top, Mapping) else None
        found = inner if isinstance(inner, Mapping) else top
        if not isinstance(found, Mapping):
            raise ModelError(f"{self.label}: a PyTorch file holding {type(found).__name__}, not a state dict")
        return {k: v for k, v in found.items() if isinstance(k, str) and isinstance(v, TensorRef)}

    def tensor(self, ref: TensorRef) -> torch.Tensor:
        """Read `ref` from its storage record (cached per record while in use); ModelError when out of bounds."""
        data = self._storage(ref.storage)
        size = ref.dtype.itemsize
        if data.numel() % size:
            raise ModelError(f"{self.label}: storage {ref.storage.key} of {data.numel()} bytes is not {ref.dtype} data")
        flat = data.view(ref.dtype)
        if any(s < 0 for s in ref.shape) or any(s < 0 for s in ref.stride) or ref.offset < 0:
            raise ModelError(f"{self.label}: tensor with a negative size, stride or offset")
        last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride)) if ref.numel else ref.offset - 1
        if last >= flat.numel():
            raise ModelError(f"{self.label}: tensor reaches past the end of storage {ref.storage.key}")
        try:
            view = flat.as_strided(ref.shape, ref.stride, ref.offset)
        except (RuntimeError, TypeError, ValueError) as exc:
            raise ModelError(f"{self.label}: malformed tensor in storage {ref.storage.key} ({_reason(exc)})") from None
        return view if view.numel() == flat.numel() and view.is_contiguous() else view.clone()

    def release(self) -> None:
        """Forget the storage records read so far (their memory goes once no tensor uses it)."""
        self._storages.clear()

    # helpers

    def _archive(self) -> str:
        """The top folder holding data.pkl (torch names it after the file it saved to)."""
        roots = {n.split("/", 1)[0] for n in self.zip.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")}
        if len(roots) != 1:
            raise ModelError(f"{self.label}: a zip file but not a PyTorch checkpoint (no single */data.pkl)")
        return roots.pop()

    def _record(self, name: str, required: bool = True) -> bytes | None:
        try:
            return self.zip.read(f"{self.archive}/{name}").strip()
        except KeyError:
            if required:
                raise
            return None

    def _storage(self, ref: StorageRef) -> torch.Tensor:
        """uint8 tensor of record data/{key}, read straight into its buffer (one copy of the bytes)."""
        if ref.key not in self._storages:
            name = f"{self.archive}/data/{ref.key}"
            try:
                info = self.zip.getinfo(name)
                want = ref.numel * (ref.dtype.itemsize if ref.dtype is not None else 1)
                if info.file_size < want:
                    raise ModelError(f"{self.label}: storage {ref.key} holds {info.file_size} bytes, {want} expected")
                buf = torch.empty(info.file_size, dtype=torch.uint8)
                with self.zip.open(info) as f:
                    view = memoryview(buf.numpy())
                    got = 0
                    while got < info.file_size:
                        n = f.readinto(view[got:])
                        if not n:
                            break
                        got += n
                if got != info.file_size:
                    raise ModelError(f"{self.label}: storage {ref.key} is truncated")
            except KeyError:
                raise ModelError(f"{self.label}: storage record {ref.key} is missing (truncated checkpoint?)") from None
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
                raise ModelError(f"{self.label}: storage {ref.key} is unreadable ({_reason(exc)})") from None
            self._storages[ref.key] = buf
        return self._storages[ref.key]


def _reason(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:200]


def is_torch_zip(path: str | Path) -> bool:
    """Whether `path` starts like a zip file (every PyTorch >= 1.6 checkpoint does)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == ZIP_MAGIC
    except OSError:
        return False


def iter_opaque(obj: Any, depth: int = 0) -> Iterator[str]:
    """Qualified names of the placeholders in an unpickled tree (what the pickle named but was not resolved)."""
    if depth > 50:
        return
    if isinstance(obj, Opaque):
        yield obj.qualname
        children = [obj.args, obj.state, obj.items, obj.values]
    elif isinstance(obj, Mapping):
        children = list(obj.values())
    elif isinstance(obj, (list, tuple)):
        children = list(obj)
    else:
        return
    for child in children:
        yield from iter_opaque(child, depth + 1)
