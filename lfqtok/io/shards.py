"""Write stage and reading back: the token directory format of DESIGN.md §4.

OUT/lfqtok.json (manifest, written first), OUT/{shard:05d}.tar (WebDataset, written to a `.tmp` name, then
renamed), OUT/{shard:05d}_stats.json (written last: a shard is finished exactly when it exists).
Reading needs only tarfile + numpy (webdataset, slow to import, is loaded only by the writer).
"""

from __future__ import annotations

import ast
import functools
import io
import json
import math
import os
import re
import struct
import tarfile
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .. import __version__
from .codec import token_dtype
from ..errors import InputError, OutputError, UsageError

# constants

MANIFEST_NAME = "lfqtok.json"
FORMAT = "lfqtok-tokens"
FORMAT_VERSION = 1
TOKENS_MEMBER = "tokens.npy"
FLIP_MEMBER = "tokens_flip.npy"  # --hflip: the tokens of the horizontally flipped model input (images)
META_MEMBER = "json"
RESERVED_EXTRAS = {"json": "src.json", "tokens.npy": "src.tokens.npy", FLIP_MEMBER: f"src.{FLIP_MEMBER}"}  # passthrough names that would clash
INFO_KEYS = {"lfqtok_version", "inputs", "cwd", "tokenizer.name"}  # manifest keys that may differ on a resume
STALE_TMP_SECONDS = 600.0  # a .tmp file untouched this long belongs to no live writer (others may share OUT)
SHARD_RE = re.compile(r"^\d{5}\.tar$")
OURS_RE = re.compile(r"^(\d{5}(\.tar|_stats\.json)|lfqtok\.json\.(\d+\.)?tmp)")
BIT_ORDERS = ("msb_first", "lsb_first")  # which index bit latent channel 0 is
MEMBER_MTIME = 0  # fixed member mtime: equal inputs give byte-identical tars

# helpers


def shard_path(out: Path, index: int) -> Path:
    return Path(out) / f"{index:05d}.tar"


def stats_path(out: Path, index: int) -> Path:
    return Path(out) / f"{index:05d}_stats.json"


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def _is_ours(name: str) -> bool:
    """Shard, stats and temp files this module writes (what --overwrite may delete)."""
    return bool(OURS_RE.match(name))


def _oserror(exc: OSError, path: Path) -> OutputError:
    return OutputError(f"cannot write {path}: {exc.strerror or exc}")


def _discard(path: Path) -> None:
    """Remove a temp file if it is there; a failure to remove leaves it for the next run's cleanup."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def write_json_atomic(path: Path, obj: Any, shared: bool = False) -> None:
    """JSON to `path` via a `.tmp` file, fsync and rename: readers see the old file or the whole new one.

    `shared`: several processes may write it at once (the manifest, with --num-shards parts starting together),
    so each gets its own temp name."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp") if shared else _tmp(path)
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _discard(tmp)
        raise _oserror(exc, path) from None


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: manifest settings compared key by key."""
    flat: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    a, b = _flatten(old), _flatten(new)
    keys = sorted((set(a) | set(b)) - INFO_KEYS)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


# manifest


def build_manifest(
    *,
    codebook_size: int,
    num_codebooks: int,
    tokenizer_name: str,
    tokenizer_sha256: str,
    tokenizer_config: dict,
    clip_frames: int,
    size: int | Sequence[int],
    token_shape: Sequence[int] | None,
    extra: dict,
    bit_order: str = "msb_first",
    window_frames: int | None = None,
) -> dict:
    """The DESIGN §4 manifest (format_version 1); `extra` adds keys (clip settings, version, ...).

    `bit_order` is the tokenizer's ("lsb_first" for Open-MAGVIT2). A non-causal tokenizer names the clip length
    it encodes as independent windows: the manifest then says `"causal": false, "window_frames": N` (absent: causal).
    `size` is S (`--size S`) or [H, W]; `token_shape` is None when videos get shapes of their own (buckets, fit).
    """
    if bit_order not in BIT_ORDERS:
        raise UsageError(f"bit_order must be one of {', '.join(BIT_ORDERS)}, got {bit_order!r}")
    core = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "codebook_size": int(codebook_size),
        "num_codebooks": int(num_codebooks),
        "token_dtype": token_dtype(codebook_size).name,
        "bit_order": bit_order,
        "tokenizer": {"name": tokenizer_name, "sha256": tokenizer_sha256, "config": tokenizer_config},
        "clip_frames": int(clip_frames),
        "size": int(size) if isinstance(size, int) else [int(n) for n in size],
        "token_shape": [int(n) for n in token_shape] if token_shape is not None else None,
        **({"causal": False, "window_frames": int(window_frames)} if window_frames is not None else {}),
    }
    clash = sorted(set(extra) & set(core))
    if clash:
        raise UsageError(f"manifest extra keys would replace fixed keys: {', '.join(clash)}")
    return {**core, "lfqtok_version": __version__, **extra}


def read_manifest(path_or_dir: str | Path) -> dict | None:
    """The manifest of a token dir, of the dir holding a shard, or a manifest file itself; None when absent."""
    path = Path(path_or_dir)
    if path.is_dir():
        path = path / MANIFEST_NAME
    elif path.name != MANIFEST_NAME:
        path = path.parent / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read manifest {path}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputError(f"{path} is not an lfqtok token manifest (format={manifest.get('format') if isinstance(manifest, dict) else None!r})")
    return manifest


def finished_shards(out: Path) -> set[int]:
    """Indices of the shards of `out` that are finished (their `_stats.json` exists)."""
    return {int(p.name[:5]) for p in Path(out).glob("[0-9][0-9][0-9][0-9][0-9]_stats.json")}


def prepare_output(out: Path, manifest: dict, overwrite: bool) -> set[int]:
    """Create OUT with its manifest (written first) or check the one there; returns the finished shard indices.

    Other settings in an existing OUT -> OutputError naming them, unless `overwrite` (then old shards go).
    """
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        names = [p.name for p in out.iterdir()]
    except OSError as exc:
        raise _oserror(exc, out) from None
    path = out / MANIFEST_NAME
    old = _existing_manifest(path, overwrite)
    if old is not None and old != manifest:
        diff = _differences(old, manifest)
        if diff and not overwrite:
            raise OutputError(
                f"{out} holds tokens made with other settings ({'; '.join(diff)}): "
                "use --overwrite to replace them, or another output directory"
            )
        if diff:
            old = None
    if old is None and not overwrite and any(SHARD_RE.match(n) or n.endswith("_stats.json") for n in names):
        raise OutputError(f"{out} holds token shards but no readable {MANIFEST_NAME}: use --overwrite to replace them")
    if old is None:
        _remove(out, [n for n in names if _is_ours(n)])
        write_json_atomic(path, manifest, shared=True)
    else:
        now = time.time()
        _remove(out, [n for n in names if ".tmp" in n and _is_ours(n) and now - _mtime(out / n) > STALE_TMP_SECONDS])
    return finished_shards(out)


def _existing_manifest(path: Path, overwrite: bool) -> dict | None:
    if not path.exists():
        return None
    try:
        return read_manifest(path)
    except InputError:
        if overwrite:
            return None
        raise OutputError(f"{path} is unreadable or not an lfqtok manifest: use --overwrite to replace it") from None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return time.time()


def _remove(out: Path, names: Sequence[str]) -> None:
    for name in names:
        try:
            (out / name).unlink(missing_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot remove {out / name}: {exc.strerror or exc}") from None


# writing


class ShardWriter:
    """One token shard: samples go to `{index:05d}.tar.tmp`; `finish` renames it and then writes `_stats.json`.

    Nothing is opened before the first sample; `abort` (or leaving the context without `finish`) removes the temp file.
    """

    def __init__(self, out: Path, index: int, token_dtype: np.dtype):
        self.out, self.index, self.dtype = Path(out), int(index), np.dtype(token_dtype)
        self.path = shard_path(self.out, self.index)
        self.tmp = _tmp(self.path)
        self.keys: set[str] = set()
        self.finished = False
        self._file = None
        self._tar = None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.abort()
        return False

    def write(self, key: str, tokens: np.ndarray, meta: dict, extras: dict[str, bytes] | None = None,
              flip_tokens: np.ndarray | None = None) -> None:
        """One sample: `{key}.tokens.npy` (clips, t, h, w) [+ (c)], `{key}.json` (meta), `{key}.{ext}` extras, and
        with `flip_tokens` (the same shape) `{key}.tokens_flip.npy`."""
        if not key or "." in key or key in self.keys:
            raise UsageError(f"sample key {key!r} is empty, has a dot or is already in shard {self.index:05d}")
        arr = self._storage(np.asarray(tokens), key)
        sample = {"__key__": key, TOKENS_MEMBER: _npy(arr)}
        if flip_tokens is not None:
            flip = self._storage(np.asarray(flip_tokens), key)
            if flip.shape != arr.shape:
                raise UsageError(f"flipped tokens of {key!r} are {flip.shape}, not the tokens' {arr.shape}")
            sample[FLIP_MEMBER] = _npy(flip)
        sample[META_MEMBER] = json.dumps({**meta, "tokens_shape": list(arr.shape)}).encode()
        for ext, data in (extras or {}).items():
            sample[RESERVED_EXTRAS.get(ext, ext)] = bytes(data)
        try:
            self._open().write(sample)
        except OSError as exc:
            self.abort()
            raise _oserror(exc, self.tmp) from None
        self.keys.add(key)

    def finish(self, stats: dict) -> None:
        """Close the tar, fsync, rename .tmp -> final, then write `{index:05d}_stats.json` (the 'finished' mark)."""
        try:
            self._open().close()
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self.tmp, self.path)
        except OSError as exc:
            self.abort()
            raise _oserror(exc, self.path) from None
        self.finished = True
        write_json_atomic(stats_path(self.out, self.index), {"shard": self.index, **stats})

    def abort(self) -> None:
        """Give the shard up (a failed or interrupted run): close and remove its temp file; finished shards stay."""
        if self.finished:
            return
        for closable in (self._tar, self._file):
            try:
                if closable is not None:
                    closable.close()  # closed once here, so nothing flushes into a removed file later
            except (OSError, ValueError):
                pass  # the temp file goes anyway
        _discard(self.tmp)
        self.finished = True  # nothing left to clean up

    # helpers

    def _storage(self, arr: np.ndarray, key: str) -> np.ndarray:
        if arr.dtype.kind not in "iu":
            raise UsageError(f"tokens of {key!r} must be integers, got {arr.dtype}")
        if arr.dtype != self.dtype and arr.size and (int(arr.min()) < 0 or int(arr.max()) > np.iinfo(self.dtype).max):
            raise UsageError(f"tokens of {key!r} span [{arr.min()}, {arr.max()}], more than {self.dtype} holds")
        return np.ascontiguousarray(arr, dtype=self.dtype)

    def _open(self):
        if self._tar is None:
            from webdataset import TarWriter

            try:
                self._file = open(self.tmp, "wb")
            except OSError as exc:
                raise _oserror(exc, self.tmp) from None
            self._tar = TarWriter(self._file, encoder=False, mtime=MEMBER_MTIME)
        return self._tar


def _npy(arr: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, arr, allow_pickle=False)
    return buffer.getvalue()


# reading


def split_member(name: str) -> tuple[str, str]:
    """'dir/key.tokens.npy' -> ('dir/key', 'tokens.npy'): webdataset's rule, the first dot of the base name."""
    head, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext


def expand_paths(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """Token dirs (their finished shards, in order), tar files and brace patterns -> tar paths."""
    from braceexpand import braceexpand

    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    tars: list[Path] = []
    for item in items:
        for name in braceexpand(str(item)):
            path = Path(name)
            if path.is_dir():
                tars.extend(_dir_shards(path))
            elif path.is_file():
                tars.append(path)
            else:
                raise InputError(f"token input not found: {path}")
    return tars


def _dir_shards(path: Path) -> list[Path]:
    if (path / MANIFEST_NAME).is_file():
        return [shard_path(path, i) for i in sorted(finished_shards(path)) if shard_path(path, i).is_file()]
    return sorted(p for p in path.glob("*.tar") if p.is_file())


def iter_members(path: Path, want: set[str] | None = None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {ext: bytes}) per sample of one tar, streamed; only the extensions in `want` are read when given."""
    key, sample = None, {}
    try:
        with tarfile.open(path, "r|*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                k, ext = split_member(info.name)
                if k != key:
                    if sample:
                        yield key, sample
                    key, sample = k, {}
                if want is None or ext in want:
                    sample[ext] = tar.extractfile(info).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InputError(f"cannot read token shard {path}: {exc}") from None
    if sample:
        yield key, sample


@functools.lru_cache(maxsize=64)
def _npy_header(header: bytes) -> tuple[np.dtype, tuple[int, ...], bool]:
    """Parsed .npy header dict (cached: every sample of a shard has the same few headers)."""
    d = ast.literal_eval(header.decode("latin1"))
    return np.dtype(d["descr"]), tuple(d["shape"]), bool(d["fortran_order"])


def load_npy(data: bytes, where: str, copy: bool = True) -> np.ndarray:
    """.npy bytes -> a writable array, as np.load would (pickled object arrays refused), with the header parse cached.

    `copy=False`: a read-only view of `data`, for callers that convert the array anyway."""
    try:
        if data[:6] != b"\x93NUMPY" or data[6] not in (1, 2, 3):
            raise ValueError("no .npy magic")
        size, start = (struct.unpack("<H", data[8:10])[0], 10) if data[6] == 1 else (struct.unpack("<I", data[8:12])[0], 12)
        dtype, shape, fortran = _npy_header(bytes(data[start : start + size]))
        if dtype.hasobject:
            raise ValueError("object arrays are not token arrays")
        flat = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=start + size)
        arr = flat.reshape(shape, order="F" if fortran else "C")
        return arr.copy() if copy else arr
    except (ValueError, SyntaxError, KeyError, TypeError, struct.error) as exc:
        raise InputError(f"{where}: not a readable .npy array ({exc})") from None


def read_tokens(paths: str | Path | Sequence[str | Path]) -> Iterator[tuple[str, np.ndarray, dict]]:
    """(key, tokens (clips, t, h, w) [+ (c)], meta) over token dirs, tar files or brace patterns, in order."""
    for path in expand_paths(paths):
        for key, sample in iter_members(path, {TOKENS_MEMBER, META_MEMBER}):
            if TOKENS_MEMBER not in sample:
                continue
            where = f"{path}:{key}"
            try:
                meta = json.loads(sample[META_MEMBER]) if META_MEMBER in sample else {}
            except ValueError as exc:
                raise InputError(f"{where}.json is not JSON ({exc})") from None
            yield key, load_npy(sample[TOKENS_MEMBER], where), meta
