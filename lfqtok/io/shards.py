"""Write stage and reading back: the token directory format (docs/format.md).

OUT/lfqtok.json (manifest, written first), OUT/{shard:05d}.tar (WebDataset, written to a `.tmp` name, then
renamed), OUT/{shard:05d}_stats.json (written last: a shard is finished exactly when it exists).
OUT may be a URL (`storage.py`): object stores have no rename, so the tar is streamed to its final key in parts
of storage.PART_SIZE (the memory it takes) and completed on `finish`; its `_stats.json`, one PUT written after
it, is still what says the shard is finished. Readers take URLs too.
Reading needs only tarfile + numpy (webdataset, slow to import, is loaded only by the writer).
"""

from __future__ import annotations

import ast
import functools
import gzip
import hashlib
import io
import json
import math
import os
import re
import struct
import tarfile
import time
from dataclasses import dataclass
from json.encoder import encode_basestring
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .. import __version__
from . import storage
from .codec import token_dtype
from ..errors import InputError, OutputError, OutputRefused, UsageError
from .storage import Location, Options

# constants

MANIFEST_NAME = "lfqtok.json"
LISTING_KEY = "listing"  # the manifest entry of the listing's identity: {"count", "sha256"} (+ "segments" after --append)
FORMAT = "lfqtok-tokens"
FORMAT_VERSION = 1
TOKENS_MEMBER = "tokens.npy"
FLIP_MEMBER = "tokens_flip.npy"  # --hflip: the tokens of the horizontally flipped model input (images)
META_MEMBER = "json"
CAPTION_MEMBER = "txt"  # a sample's text (a table's caption), UTF-8: webdataset, HF datasets and video2dataset read it so
RESERVED_EXTRAS = {"json": "src.json", "tokens.npy": "src.tokens.npy", FLIP_MEMBER: f"src.{FLIP_MEMBER}"}  # passthrough names that would clash
INFO_KEYS = {"lfqtok_version", "inputs", "cwd", "tokenizer.name"}  # manifest keys that may differ on a resume
INFO_ENTRIES = {"listing", "images_left_out"}  # manifest entries (all their keys) that are not settings: the listing is
# compared on its own (`prepare_output`), and the images left out follow from it
STALE_TMP_SECONDS = 600.0  # a .tmp file untouched this long belongs to no live writer (others may share OUT)
STALE_UPLOAD_SECONDS = 86400.0  # an S3 multipart upload started this long ago belongs to no live writer (its start
# time never changes however long its shard takes; a bucket lifecycle rule can abort them sooner)
SHARD_RE = re.compile(r"^\d{5}\.tar$")
TMP_RE = re.compile(r"^(\d{5}\.tar|lfqtok\.json|lfqtok\.listing\.[0-9a-f]{16}\.gz)\.(\d+\.)?tmp$")  # temp files this module writes
LISTING_RE = re.compile(r"^lfqtok\.listing\.[0-9a-f]{16}\.gz$")
BIT_ORDERS = ("msb_first", "lsb_first")  # which index bit latent channel 0 is
MEMBER_MTIME = 0  # fixed member mtime: equal inputs give byte-identical tars

# helpers


def shard_path(out: Location, index: int) -> Location:
    return storage.join(out, f"{index:05d}.tar")


def stats_path(out: Location, index: int) -> Location:
    return storage.join(out, f"{index:05d}_stats.json")


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def _oserror(exc: OSError, path: Path) -> OutputError:
    return OutputError(f"cannot write {path}: {exc.strerror or exc}")


def _discard(path: Path) -> None:
    """Remove a temp file if it is there; a failure to remove leaves it for the next run's cleanup."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def _json_text(obj: Any) -> str:
    return json.dumps(obj, indent=2) + "\n"


def write_json_atomic(path: Location, obj: Any, shared: bool = False, storage_options: Options = None) -> None:
    """JSON to `path` via a `.tmp` file, fsync and rename: readers see the old file or the whole new one.
    A URL is one PUT, which object stores make visible whole.

    `shared`: several processes may write it at once (the manifest, with --num-shards parts starting together),
    so each gets its own temp name."""
    write_bytes_atomic(path, _json_text(obj).encode(), shared, storage_options)


def write_bytes_atomic(path: Location, data: bytes, shared: bool = False, storage_options: Options = None) -> None:
    """`data` to `path` whole or not at all (`write_json_atomic`'s way)."""
    if storage.is_url(path):
        try:
            storage.write_bytes(path, data, storage_options)
        except storage.errors() as exc:
            raise storage.storage_error(OutputError, "write", path, exc) from None
        return
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp") if shared else _tmp(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
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


def _dims(v: Any) -> str:
    """A size as `--size` takes it: 128, [128, 224] -> 128x224, [[128, 224], ...] -> 128x224,..."""
    if isinstance(v, list) and v and isinstance(v[0], list):
        return ",".join(map(_dims, v))
    return "x".join(map(str, v)) if isinstance(v, list) else str(v)


def _on_off(v: Any) -> str:
    return "on" if v else "off"


def _value(v: Any) -> str:
    return "not set" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


# The manifest keys a user sets, by the option that sets them: (option, its value when the key is absent, how
# the user would type the value). A refusal names these options; keys DERIVED from them are left out; any other
# key that differs (one an option added later sets) is named as it is.
SETTING_FLAGS: dict[str, tuple[str, Any, Any]] = {
    "tokenizer.sha256": ("--model", None, lambda v: f"sha256 {str(v)[:12]}"),  # after the model's name
    "clip.size": ("--size", None, _dims),
    "clip.resize": ("--resize", "crop", _value),
    "clip.buckets": ("--buckets", None, lambda v: _value(v) if v is None else _dims(v)),
    "clip.clip_frames": ("--clip-frames", None, _value),
    "clip.clip_stride": ("--clip-stride", None, _value),
    "clip.fps": ("--fps", None, _value),
    "clip.max_clips": ("--max-clips", None, _value),
    "clip.pad_short": ("--no-pad-short", True, lambda v: _on_off(not v)),
    "clip.scenes.detector": ("--scenes", "off", _value),  # "on" is transnetv2 with a content gate
    "clip.scenes.threshold": ("--scene-threshold", None, _value),
    "clip.scenes.min_scene_frames": ("--min-scene-frames", None, _value),
    "hflip": ("--hflip", False, _on_off),
    "classes": ("--class-folders", None, lambda v: "off" if v is None else f"{len(v)} classes"),
    "samples_per_shard": ("--samples-per-shard", None, _value),
}
DERIVED = ("format", "format_version", "codebook_size", "num_codebooks", "token_dtype", "bit_order", "causal",
           "window_frames", "token_shape", "token_shapes", "clip_frames", "size", "resize", "buckets", "clip.multiple",
           "clip.scenes.gate", "clip.scenes.thumbnail", "tokenizer.config.")  # the model's, or copies of the clip settings (a trailing dot: every key under it)


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two manifests, as the options a user types: `--size 128x224 (was) vs 160 (now)`;
    keys no option is known to set named as they are; derived keys only when nothing else differs."""
    a, b = _flatten(old), _flatten(new)
    order = list(SETTING_FLAGS)  # options in the order of the table (as `--help` shows them), then the rest
    keys = [k for k in (set(a) | set(b)) - INFO_KEYS if k.partition(".")[0] not in INFO_ENTRIES]
    keys.sort(key=lambda k: (order.index(k) if k in order else len(order), k))
    changed, derived = [], []
    for key in keys:
        if a.get(key) == b.get(key):
            continue
        if key.startswith("table.") and key != "table.format":  # a table's row options: --path-col, --where, ...
            flag, default, show = f"--{key[len('table.'):].replace('_', '-')}", None, lambda v: ",".join(v) if isinstance(v, list) else _value(v)
        elif key in SETTING_FLAGS:
            flag, default, show = SETTING_FLAGS[key]
        else:
            raw = f"{key} {a.get(key)!r} (was) vs {b.get(key)!r} (now)"
            (derived if key in DERIVED or key.startswith(tuple(d for d in DERIVED if d.endswith("."))) else changed).append(raw)
            continue
        was, now = (show(m[key] if key in m else default) for m in (a, b))
        if flag == "--model":  # the name users typed (a path may move, so only the weights count)
            was, now = (f"{m.get('tokenizer.name')} ({v})" for m, v in ((a, was), (b, now)))
        if was != now:
            changed.append(f"{flag} {was} (was) vs {now} (now)")
    return changed or derived  # a derived key alone (a format change) is still a difference


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
    """The manifest (docs/format.md, format_version 1); `extra` adds keys (clip settings, version, ...).

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


def read_manifest(path_or_dir: str | Path, storage_options: Options = None) -> dict | None:
    """The manifest of a token dir, of the dir holding a shard, or a manifest file itself; None when absent."""
    if storage.is_url(path_or_dir):
        return _read_remote_manifest(str(path_or_dir), storage_options)
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
    return _checked_manifest(manifest, path)


def _checked_manifest(manifest: Any, path: Location) -> dict:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputError(f"{storage.redact(path)} is not an lfqtok token manifest (format={manifest.get('format') if isinstance(manifest, dict) else None!r})")
    return manifest


def _read_remote_manifest(url: str, storage_options: Options) -> dict | None:
    """`read_manifest` for a URL: the prefix's manifest, the one beside a .tar, or the manifest object itself."""
    base, name = url.rstrip("/"), storage.url_path(url.rstrip("/"))  # name: without a presigned URL's query
    path = base if name.endswith("/" + MANIFEST_NAME) else storage.join(storage.parent(base) if name.endswith(".tar") else base, MANIFEST_NAME)
    try:
        data = storage.read_bytes(path, storage_options)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise storage.storage_error(InputError, "read manifest", path, exc) from None
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise InputError(f"cannot read manifest {storage.redact(path)}: {exc}") from None
    return _checked_manifest(manifest, path)


_STATS_RE = re.compile(r"^\d{5}_stats\.json$")


def finished_shards(out: Location, storage_options: Options = None) -> set[int]:
    """Indices of the shards of `out` that are finished (their `_stats.json` exists)."""
    if storage.is_url(out):
        try:
            names = storage.list_names(str(out), storage_options, storage.LIST_TIMEOUT)
        except storage.errors() as exc:
            raise storage.storage_error(OutputError, "list", out, exc) from None
        return {int(n[:5]) for n in names if _STATS_RE.match(n)}
    return {int(p.name[:5]) for p in Path(out).glob("[0-9][0-9][0-9][0-9][0-9]_stats.json")}


def _list_output(out: Location, storage_options: Options) -> list[str]:
    """The names in OUT, creating it (a local directory) first (`encode_dataset` checked it is writable); a store
    that leaves the LIST unanswered for LIST_TIMEOUT seconds is one line, not a hang."""
    if storage.is_url(out):
        try:
            return storage.list_names(out, storage_options, storage.LIST_TIMEOUT)
        except storage.errors() as exc:
            raise storage.storage_error(OutputError, "list", out, exc) from None
    try:
        out.mkdir(parents=True, exist_ok=True)
        return [p.name for p in out.iterdir()]
    except OSError as exc:
        raise _oserror(exc, out) from None


# the listing: what a run encodes, so a rerun over other inputs is refused instead of resumed


def _listing_text(entries: Sequence[Sequence[str]]) -> bytes:
    """One JSON array a line (what json.dumps writes, ensure_ascii off), built with the C string encoder: a million
    entries in about a second and a half."""
    return "".join(f"[{', '.join(map(encode_basestring, e))}]\n" for e in entries).encode("utf-8", "surrogateescape")


class Listing:
    """A run's listing: its entries in order (an item's [key, source], a table file's [path, size, digest]), their
    lines built once, when first needed (about 1.5 s a million entries): `identity` hashes them, `write_listing`
    stores them."""

    def __init__(self, entries: Sequence[Sequence[str]]):
        self.entries = entries

    @functools.cached_property
    def text(self) -> bytes:
        return _listing_text(self.entries)

    @functools.cached_property
    def identity(self) -> dict[str, Any]:
        """The manifest's `listing` entry: how many entries and the sha256 of their lines (one JSON array a line):
        equal exactly when the entries are."""
        return {"count": len(self.entries), "sha256": hashlib.sha256(self.text).hexdigest()}


def listing_change(old: Sequence[Sequence[str]] | None, new: Sequence[Sequence[str]], old_count: int | None = None) -> str:
    """What changed between two listings, in a user's words ("2 inputs added, 0 removed"); `old` None (its
    entries unknown): the counts then and now. Entries are compared by their last field (an item's source)."""
    if old is None:
        return f"the inputs changed ({old_count if old_count is not None else 'an unknown number'} then, {len(new)} now)"
    added, removed = _added_removed(old, new)
    if added or removed:
        return f"{added} input{'s' if added != 1 else ''} added, {removed} removed"
    return "the same inputs under other keys or in another order"


def _files_change(old: Sequence[Sequence[str]] | None, new: Sequence[Sequence[str]], old_count: int | None) -> str:
    """What changed in a table's files (its listing: [path, size, digest] per file): each changed file with its
    sizes and hashes, each added or removed one named; `old` None (its entries unknown): the counts then and now."""
    files = lambda n: f"{n} file{'s' if n != 1 else ''}"
    if old is None:
        return f"{files(old_count) if old_count is not None else 'an unknown number of files'} then, {len(new)} now"
    before, after = {e[0]: tuple(e[1:]) for e in old}, {e[0]: tuple(e[1:]) for e in new}
    said = [f"{path}: {size} -> {after[path][0]} bytes, {digest[:19]} -> {after[path][1][:19]}"
            for path, (size, digest) in before.items() if path in after and after[path] != (size, digest)]
    said += [f"{path} removed" for path in before if path not in after]
    said += [f"{path} added" for path in after if path not in before]
    return "; ".join(said) or "its files in another order"


def _added_removed(old: Sequence[Sequence[str]], new: Sequence[Sequence[str]]) -> tuple[int, int]:
    before, after = {e[-1] for e in old}, {e[-1] for e in new}
    return len(after - before), len(before - after)


def _listing_changed(old: dict, new: dict) -> bool:
    """Whether two manifests record different listings (one without the entry, from an older lfqtok: no)."""
    a, b = old.get(LISTING_KEY), new.get(LISTING_KEY)
    return a is not None and b is not None and (a.get("count"), a.get("sha256")) != (b.get("count"), b.get("sha256"))


def listing_name(identity: dict) -> str:
    """The listing sidecar's name: named by its hash, so a sidecar always matches the manifest that names it."""
    return f"lfqtok.listing.{identity['sha256'][:16]}.gz"


def write_listing(out: Location, listing: Listing, storage_options: Options = None) -> None:
    """The listing sidecar (`listing_name`, gzip of the lines its identity hashes), written whole before the
    manifest that names it; several --num-shards parts may write the same one at once."""
    data = gzip.compress(listing.text, compresslevel=6, mtime=0)
    path = storage.join(out, listing_name(listing.identity))
    write_bytes_atomic(path, data, shared=True, storage_options=storage_options)


def read_listing(out: Location, identity: dict | None, storage_options: Options = None) -> list[list[str]] | None:
    """The entries of the listing sidecar named by `identity` (the manifest's `listing`), else None (absent,
    unreadable, or not matching its hash)."""
    if not identity or not identity.get("sha256"):
        return None
    try:
        text = gzip.decompress(storage.read_bytes(storage.join(out, listing_name(identity)), storage_options))
        if hashlib.sha256(text).hexdigest() != identity["sha256"]:
            return None
        return [json.loads(line) for line in text.decode("utf-8", "surrogateescape").splitlines()]
    except (OSError, EOFError, ValueError, *storage.errors()):
        return None


def _entry_key(key: str, source: str, taken: set[str]) -> str:
    """An appended item's key: its own, or with a hash of its source when an earlier item has it already."""
    if key in taken:
        key = f"{key}_{hashlib.blake2s(source.encode('utf-8', 'surrogateescape'), digest_size=4).hexdigest()}"
        if key in taken:
            raise OutputRefused(f"the new input {source} would get the key {key}, which the run already has: rename it")
    return key


@dataclass
class Prepared:
    """`prepare_output`'s answer: the finished shard indices; for an OUT grown by --append, the recorded listing
    ([key, source] in shard order) and its segments ([first shard, items], one per run that added items)."""

    finished: set[int]
    entries: list[list[str]] | None = None
    segments: list[list[int]] | None = None


def _appended(old: dict, recorded: list[list[str]], entries: Sequence[Sequence[str]],
              per_shard: int) -> tuple[Listing, dict]:
    """--append: the recorded listing plus the new entries (keys kept unique), and its identity with one more
    segment of shards numbered after the last one (none when nothing is new)."""
    identity = old[LISTING_KEY]
    segments = identity.get("segments") or [[0, identity["count"]]]
    known, taken = {e[-1] for e in recorded}, {e[0] for e in recorded}
    new = []
    for key, source in entries:
        if source not in known:
            key = _entry_key(key, source, taken)
            taken.add(key)
            new.append([key, source])
    if not new:
        return Listing(recorded), {**identity, "segments": segments}  # its keys and order, not the new listing's
    first, count = segments[-1]
    grown = Listing([*recorded, *new])
    return grown, {**grown.identity, "segments": [*segments, [first + -(-count // per_shard), len(new)]]}


# what is ours: --overwrite and a fresh start delete only what lfqtok wrote


def _stats_is_ours(out: Location, name: str, storage_options: Options) -> bool:
    """A `NNNNN_stats.json` lfqtok wrote: a JSON object whose "shard" is NNNNN."""
    try:
        stats = json.loads(storage.read_bytes(storage.join(out, name), storage_options))
    except (ValueError, OSError, *storage.errors()):
        return False
    return isinstance(stats, dict) and stats.get("shard") == int(name[:5])


def _first_sample(path: Location, storage_options: Options) -> list[str]:
    """The member names of a tar's first sample ([] for an empty tar), read as a stream: only its headers and data."""
    names: list[str] = []
    with open_shard(path, storage_options) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
        for info in tar:
            if not info.isfile():
                continue
            if names and split_member(info.name)[0] != split_member(names[0])[0]:
                break
            names.append(info.name)
    return names


def _foreign_tar(path: Location, storage_options: Options) -> str | None:
    """Why a tar in OUT is not a token shard lfqtok wrote (its first sample has no tokens.npy), else None."""
    try:
        if not storage.read_bytes(path, storage_options, 0, 512).strip(b"\0"):
            return None  # empty (no member): nothing to lose
        names = _first_sample(path, storage_options)
    except (tarfile.TarError, OSError, EOFError, ValueError, *storage.errors()):
        return "not a readable tar"
    if not names or any(split_member(n)[1] == TOKENS_MEMBER for n in names):
        return None
    return f"its first sample holds {', '.join(names[:3])}"


def _ours(out: Location, names: Sequence[str], storage_options: Options) -> list[str]:
    """The names in OUT that lfqtok wrote: manifest, listing, temp files, its `_stats.json`, token tars (those
    with lfqtok's `_stats.json`, or whose first sample holds tokens). OutputRefused for a tar that is not a token
    shard (a video or image dataset's, say): nothing is deleted then, and --overwrite is no way out."""
    stats = {n for n in names if _STATS_RE.match(n) and _stats_is_ours(out, n, storage_options)}
    ours = [n for n in names if n == MANIFEST_NAME or LISTING_RE.match(n) or TMP_RE.match(n) or n in stats]
    for n in names:
        if not n.endswith(".tar"):
            continue
        if SHARD_RE.match(n) and f"{n[:5]}_stats.json" in stats:
            ours.append(n)
            continue
        why = _foreign_tar(storage.join(out, n), storage_options)
        if why is not None:
            raise OutputRefused(f"{storage.redact(out)} holds {n}, which lfqtok did not write ({why}): "
                                "write the tokens to another OUT; nothing was changed")
        ours.append(n)
    return ours


def prepare_output(out: Location, manifest: dict, overwrite: bool, storage_options: Options = None,
                   listing: Listing | None = None, append: bool = False) -> Prepared:
    """Create OUT with its manifest (written first; the listing sidecar just before it) or check the one there.

    Other settings in an existing OUT -> OutputRefused naming them (a usage error), unless `overwrite` (then
    lfqtok's old outputs go; nothing else in OUT is touched, and a tar lfqtok did not write is refused). `listing`:
    the run's (items' [key, source], sorted; a table's files), whose identity is the manifest's `listing`: an OUT
    made from another listing is refused naming what changed, started over with `overwrite`, or grown with `append`
    (the new entries only, into new shards after the last one). A URL OUT instead of stale temp files has stale
    multipart uploads aborted.
    """
    out = storage.location(out)
    names = _list_output(out, storage_options)
    path = storage.join(out, MANIFEST_NAME)
    old = _existing_manifest(path, overwrite, storage_options)
    if old is not None and old != manifest:
        diff = _differences(old, manifest)
        if diff and not overwrite:
            raise OutputRefused(
                f"{storage.redact(out)} holds tokens made with other settings: {'; '.join(diff)}. Rerun with the settings it was "
                "made with to resume, or use --overwrite to replace it, or another output directory"
            )
        if diff:
            old = None
    recorded, identity = None, None
    if old is not None and listing is not None and old.get(LISTING_KEY) is not None:
        try:
            recorded, identity = _resumed_listing(out, old, manifest, listing.entries, append, storage_options)
        except OutputRefused:
            if not overwrite:
                raise
            old = None  # --overwrite over other inputs: start over
    if old is None:
        ours = _ours(out, names, storage_options)
        if not overwrite and any(n.endswith(".tar") or _STATS_RE.match(n) for n in ours):
            raise OutputRefused(f"{out} holds token shards but no readable {MANIFEST_NAME}: use --overwrite to replace "
                                "them")
        _remove(out, [n for n in ours if n != MANIFEST_NAME], storage_options)
        if listing is not None:
            write_listing(out, listing, storage_options)
        write_json_atomic(path, manifest, shared=True, storage_options=storage_options)
    else:
        if identity is not None and identity != old[LISTING_KEY]:  # --append found new inputs
            write_listing(out, recorded, storage_options)
            write_json_atomic(path, {**manifest, LISTING_KEY: identity}, shared=True, storage_options=storage_options)
            _remove(out, [n for n in names if LISTING_RE.match(n) and n != listing_name(identity)], storage_options)
        if storage.is_url(out):
            try:
                storage.abort_stale_uploads(out, STALE_UPLOAD_SECONDS, storage_options)
            except storage.errors() as exc:
                raise storage.storage_error(OutputError, "clean up stale uploads under", out, exc) from None
        else:
            now = time.time()
            _remove(out, [n for n in names if TMP_RE.match(n) and now - _mtime(out / n) > STALE_TMP_SECONDS])
    finished = finished_shards(out, storage_options)
    if identity is None or "segments" not in identity:
        return Prepared(finished)
    return Prepared(finished, recorded.entries, identity["segments"])


def _resumed_listing(out: Location, old: dict, manifest: dict, listing: Sequence[Sequence[str]], append: bool,
                     storage_options: Options) -> tuple[Listing | None, dict]:
    """The listing a resumed OUT goes on with: (the recorded one, its identity), grown by `append`; OutputRefused
    naming what changed when the inputs are not the recorded ones."""
    before = old[LISTING_KEY]
    segmented = "segments" in before  # grown by --append: its order is the shards', not the sorted listing's
    if not segmented and not _listing_changed(old, manifest):
        return None, before
    recorded = read_listing(out, before, storage_options)
    where = storage.redact(out)
    if "table" in manifest:  # its listing is its files' identity, and a table is never appended to
        raise OutputRefused(f"{manifest['inputs'][0]} changed since the run in {where} "
                            f"({_files_change(recorded, listing, before.get('count'))}): encode it into a new OUT, or "
                            "--overwrite to start over")
    if recorded is None and (segmented or append):
        raise OutputRefused(f"the listing of the run in {where} ({listing_name(before)}) is missing or damaged, so "
                            "which inputs its shards hold is unknown: encode into a new OUT")
    added, removed = _added_removed(recorded, listing) if recorded is not None else (None, None)
    if segmented and not added and not removed:
        return Listing(recorded), before
    if removed:
        raise OutputRefused(f"{listing_change(recorded, listing)} since the run in {where}: --append only adds "
                            "inputs; encode into a new OUT")
    if append:
        return _appended(old, recorded, listing, int(old.get("samples_per_shard", 1)))
    raise OutputRefused(f"{listing_change(recorded, listing, before.get('count'))} since the run in {where}: encode "
                        "into a new OUT, or add --append to encode only the new inputs, into new shards after the "
                        "finished ones")


def _existing_manifest(path: Location, overwrite: bool, storage_options: Options = None) -> dict | None:
    if not storage.is_url(path) and not path.exists():
        return None
    try:
        return read_manifest(path, storage_options)
    except InputError:
        if overwrite:
            return None
        raise OutputRefused(f"{storage.redact(path)} is unreadable or not an lfqtok manifest: use --overwrite to "
                            "replace it") from None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return time.time()


def _remove(out: Location, names: Sequence[str], storage_options: Options = None) -> None:
    if storage.is_url(out):
        try:
            storage.remove([storage.join(out, n) for n in names], storage_options)
        except storage.errors() as exc:
            raise storage.storage_error(OutputError, "remove old shards under", out, exc) from None
        return
    for name in names:
        try:
            (out / name).unlink(missing_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot remove {out / name}: {exc.strerror or exc}") from None


# writing


class ShardWriter:
    """One token shard: samples go to `{index:05d}.tar.tmp`; `finish` renames it and then writes `_stats.json`.

    Nothing is opened before the first sample; `abort` (or leaving the context without `finish`) removes the temp file.
    A URL `out` (no rename): samples stream to the final key in storage.PART_SIZE parts, `finish` completes the
    upload and then writes `_stats.json`; `abort` cancels the upload (S3: the multipart upload is aborted).
    """

    def __init__(self, out: Location, index: int, token_dtype: np.dtype, storage_options: Options = None):
        self.out, self.index, self.dtype = storage.location(out), int(index), np.dtype(token_dtype)
        self.remote, self.storage_options = storage.is_url(self.out), storage_options
        self.path = shard_path(self.out, self.index)
        self.tmp = self.path if self.remote else _tmp(self.path)
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
        except storage.errors() as exc:
            self.abort()
            raise self._error(exc, self.tmp) from None
        self.keys.add(key)

    def finish(self, stats: dict) -> None:
        """Close the tar, fsync, rename .tmp -> final (a URL: complete the upload), then write
        `{index:05d}_stats.json` (the 'finished' mark)."""
        try:
            self._open().close()
            if self.remote:
                self._file.close()  # the last part goes up and the upload completes: the object appears whole
            else:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
                os.replace(self.tmp, self.path)
        except storage.errors() as exc:
            self.abort()
            raise self._error(exc, self.path) from None
        self.finished = True
        write_json_atomic(stats_path(self.out, self.index), {"shard": self.index, **stats}, storage_options=self.storage_options)

    def abort(self) -> None:
        """Give the shard up (a failed or interrupted run): close and remove its temp file; finished shards stay."""
        if self.finished:
            return
        if self.remote:
            self._discard_upload()
            self.finished = True
            return
        for closable in (self._tar, self._file):
            try:
                if closable is not None:
                    closable.close()  # closed once here, so nothing flushes into a removed file later
            except storage.errors():
                pass  # the temp file goes anyway
        _discard(self.tmp)
        self.finished = True  # nothing left to clean up

    # helpers

    def _discard_upload(self) -> None:
        """Cancel a remote write: nothing reaches the final key (an earlier run's unfinished tar stays there
        until this shard is written again; without its `_stats.json` no reader takes it)."""
        if self._file is None:
            return
        try:
            if hasattr(self._file, "discard"):
                self._file.discard()  # S3: abort the multipart upload and drop the buffer
            self._file.closed = True  # never closed (completed) later, e.g. by garbage collection
        except storage.errors():
            pass  # an upload left incomplete is invisible, and `prepare_output` aborts stale ones

    def _error(self, exc: BaseException, path: Location) -> OutputError:
        return storage.storage_error(OutputError, "write", path, exc) if self.remote else _oserror(exc, path)

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
                if self.remote:
                    self._file = storage.open_file(self.path, "wb", self.storage_options, block_size=storage.PART_SIZE)
                else:
                    self._file = open(self.tmp, "wb")
            except storage.errors() as exc:
                raise self._error(exc, self.tmp) from None
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


def expand_paths(paths: str | Path | Sequence[str | Path], storage_options: Options = None) -> list[Location]:
    """Token dirs (their finished shards, in order), tar files and brace patterns -> tar paths (URLs: prefixes
    for dirs; they stay URL strings)."""
    from braceexpand import braceexpand

    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    tars: list[Location] = []
    for item in items:
        for name in braceexpand(str(item)):
            if storage.is_url(name):
                tars.extend(_remote_shards(name.rstrip("/"), storage_options))
                continue
            path = Path(storage.location(name))
            if path.is_dir():
                tars.extend(_dir_shards(path))
            elif path.is_file():
                tars.append(path)
            else:
                raise InputError(f"token input not found: {path}")
    return tars


def _remote_shards(url: str, storage_options: Options) -> list[str]:
    """`expand_paths` for one URL: a token prefix's finished shards, a prefix's tars, or the object itself. A store
    that leaves the HEAD or the LIST unanswered for LIST_TIMEOUT seconds is one line, not a hang."""
    try:
        found = storage.info(url, storage_options, storage.LIST_TIMEOUT)
        if found is None:
            raise InputError(f"token input not found: {storage.redact(url)}")
        if found.get("type") != "directory":
            return [url]
        names = storage.list_names(url, storage_options, storage.LIST_TIMEOUT)
    except storage.errors() as exc:
        raise storage.storage_error(InputError, "read", url, exc) from None
    if MANIFEST_NAME in names:
        done = {int(n[:5]) for n in names if _STATS_RE.match(n)}
        return [shard_path(url, i) for i in sorted(done) if f"{i:05d}.tar" in names]
    return [storage.join(url, n) for n in names if n.endswith(".tar")]


def _dir_shards(path: Path) -> list[Path]:
    if (path / MANIFEST_NAME).is_file():
        return [shard_path(path, i) for i in sorted(finished_shards(path)) if shard_path(path, i).is_file()]
    return sorted(p for p in path.glob("*.tar") if p.is_file())


def open_shard(path: Location, storage_options: Options = None, buffering: int = -1):
    """A token shard's binary stream: a local file, or a URL read sequentially in storage.PART_SIZE blocks."""
    if storage.is_url(path):
        return storage.open_file(path, "rb", storage_options, block_size=storage.PART_SIZE, cache_type="readahead")
    return open(path, "rb", buffering=buffering)


def iter_members(path: Location, want: set[str] | None = None, storage_options: Options = None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {ext: bytes}) per sample of one tar, streamed; only the extensions in `want` are read when given."""
    key, sample = None, {}
    try:
        with open_shard(path, storage_options) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
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
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        what = storage.describe(exc) if storage.is_url(path) else exc
        raise InputError(f"cannot read token shard {storage.redact(path)}: {what}") from None
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


def read_tokens(paths: str | Path | Sequence[str | Path], storage_options: Options = None) -> Iterator[tuple[str, np.ndarray, dict]]:
    """(key, tokens (clips, t, h, w) [+ (c)], meta) over token dirs, tar files or brace patterns (or URLs), in order;
    a sample's text member is meta's `caption`."""
    for path in expand_paths(paths, storage_options):
        for key, sample in iter_members(path, {TOKENS_MEMBER, META_MEMBER, CAPTION_MEMBER}, storage_options):
            if TOKENS_MEMBER not in sample:
                continue
            where = f"{storage.redact(path)}:{key}"
            try:
                meta = json.loads(sample[META_MEMBER]) if META_MEMBER in sample else {}
            except ValueError as exc:
                raise InputError(f"{where}.json is not JSON ({exc})") from None
            if CAPTION_MEMBER in sample and isinstance(meta, dict):
                meta["caption"] = sample[CAPTION_MEMBER].decode("utf-8", "replace")
            yield key, load_npy(sample[TOKENS_MEMBER], where), meta
