"""Read stage: inputs (directories, video and image files, @lists, WebDataset tar shards) -> sorted VideoItems ->
ShardJobs.

Listing never opens a video: directories are walked with os.scandir, tars are indexed from their headers, so a
million inputs list in seconds. Every input may also be a URL (`storage.py`): a prefix is walked like a directory
(one recursive listing), and a prefix gives the same keys and order as the same tree on disk. Keys are the path relative to its input root (or the tar sample key), with
[A-Za-z0-9_-] only; colliding keys all get a short hash of their source, so a key never depends on order.
A symlink to nothing in a directory is an item too, never opened: its reason is its recorded failure.
Images (jpg, jpeg, png, webp, bmp) are items too: files given one by one (or listed), and the images of a directory
or tar input that holds no video (a video dataset's posters and thumbnails stay out, as they always did; the
listing's `left_out` names them, and encode's summary and manifest count them).
GIFs take the side of what else their directory or tar holds: among videos they are videos; among images (and no
other video) they are animated images, decoded as their first frame; a directory of GIFs alone is a video folder.
A GIF given as a file is a video.
With `class_folders`, each item's class is the first path component under its input root (ImageNet-style folders)
and its label the class's index in the sorted list of all classes (`ItemList.classes`).
"""

from __future__ import annotations

import errno
import gc
import hashlib
import io
import os
import re
import tarfile
import threading
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator, Sequence

from ..errors import InputError, LfqtokError, UsageError
from ..io import storage
from ..io.storage import Options

VIDEO_EXTENSIONS = frozenset(
    "mp4 m4v mov mkv webm avi gif mpg mpeg mpe m2v ts mts m2ts wmv asf flv f4v 3gp 3g2 ogv ogg vob mxf y4m divx".split()
)
IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp", "bmp"})  # still images: 1-frame clips (images.py)
COMPRESSED_TARS = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")
READAHEAD_BYTES = 64 * 2**20  # remote video bytes fetched ahead of the decoders, at most (plus one per fetch thread)
FETCH_THREADS = 8  # remote videos fetched at once: requests overlap their latency
FETCH_WINDOW = 256  # items taken from the input ahead of the decoders, at most (a table's stream is never drained)

# items


@dataclass(frozen=True, slots=True)
class Member:
    """A byte range inside an uncompressed tar file."""

    name: str
    offset: int  # of the data, not the header
    size: int


@dataclass(frozen=True, slots=True)
class VideoItem:
    """One input video: where its bytes are, the key its tokens are written under, what users see."""

    key: str  # stable, unique, no dots, no slashes (webdataset splits keys at the first dot)
    source: str  # the file path, or "shard.tar:member-name"
    path: str  # the file to open: the video, or the tar holding it
    member: Member | None = None  # the video member when path is a tar
    extras: tuple[Member, ...] = ()  # other members of the same tar sample (txt, json, cls, ...)
    class_name: str | None = None  # its class folder (`list_items(class_folders=True)`), else None
    label: int | None = None  # the index of class_name in the sorted classes of the whole input
    span: tuple[float, float] | None = None  # a table's clip range [start, end) in source seconds; None: the whole video
    row: int | None = None  # 0-based data row of the table it came from
    segment: int | None = None  # the index of its range within its row
    caption: str | None = None  # written as the sample's `{key}.txt`
    columns: dict | None = field(default=None, compare=False)  # the row's other cells, as typed in the table
    still: bool = False  # a GIF among images (module docstring): decoded as a still image, its first frame
    fetched: "Fetched | None" = field(default=None, repr=False, compare=False)  # a remote item's bytes, read ahead
    error: str | None = None  # a table row that cannot become a sample (a cell that does not parse): its failure

    @property
    def is_image(self) -> bool:
        """A still image (a 1-frame clip), not a video: by the extension of its file or tar member."""
        return self.still or is_image_name(self.member.name if self.member is not None else storage.url_path(self.path))


@dataclass(frozen=True, slots=True)
class Fetched:
    """A remote item's bytes, fetched before a decoder asks for them (`iter_fetched`), or why they could not be."""

    video: bytes
    extras: tuple[tuple[str, bytes], ...] = ()  # (ext, bytes) of the sample's other tar members
    error: str | None = None  # the fetch failed (stalled, 403, ...): the item's recorded failure


class ItemList(list):
    """`list_items`' result: the items, plus `skipped`, the number of tar samples without a video or image member,
    `classes`, the sorted class names (`class_folders`; else empty), `left_out`, the images a directory or tar of
    videos left out (their sources, sorted), and `roots`, the inputs' paths (directories, files, tars)."""

    skipped: int = 0
    classes: list[str] = []
    left_out: list[str] = []
    roots: list[str] = []


@dataclass(frozen=True)
class ShardJob:
    """The videos of output shard `index` (global: the same with or without --num-shards)."""

    index: int
    items: tuple[VideoItem, ...]


# helpers


def _is_video(name: str) -> bool:
    """Whether a file name (or ".ext") ends with a video extension, in any case."""
    stem, dot, ext = name.rpartition(".")
    return bool(dot) and ext.lower() in VIDEO_EXTENSIONS


def is_image_name(name: str) -> bool:
    """Whether a file name (or ".ext") ends with an image extension, in any case."""
    stem, dot, ext = name.rpartition(".")
    return bool(dot) and ext.lower() in IMAGE_EXTENSIONS


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def sanitize_key(text: str) -> str:
    """A key from any text: [A-Za-z0-9_-] only, other characters replaced by '_' (never empty)."""
    return _UNSAFE.sub("_", text).strip("_") or "video"


def short_hash(text: str) -> str:
    """8 hex digits of a text's hash: what makes colliding keys unique, whatever the order."""
    return hashlib.blake2s(text.encode("utf-8", "surrogateescape"), digest_size=4).hexdigest()


def _split_key(name: str) -> tuple[str, str] | None:
    """webdataset's rule: key = the name up to the first dot of its basename (directory kept), ext = the rest."""
    directory, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem:
        return None
    return (f"{directory}/{stem}" if directory else stem), ext


def _expand(pattern: str) -> list[str]:
    """Brace patterns (data/{00000..00099}.tar) -> paths; other strings as they are."""
    if "{" not in pattern:
        return [pattern]
    import braceexpand

    return list(braceexpand.braceexpand(pattern))


def _is_media(name: str) -> bool:
    return _is_video(name) or is_image_name(name)


def _is_gif(name: str) -> bool:
    return name.lower().endswith(".gif")


def _side(names: Iterable[str]) -> str:
    """Which media of a directory or tar are its items: "videos" when it holds a video other than a GIF, or GIFs
    alone; else "images" (a GIF among images is an animated image: its first frame)."""
    images = False
    for name in names:
        if _is_gif(name):
            continue
        if _is_video(name):
            return "videos"
        elif is_image_name(name):
            images = True
    return "images" if images else "videos"


def _walk(root: str, broken: dict[str, str], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(path, path relative to the walk's root) of video and image files under root, recursively, following no links
    to directories (no cycles); one scandir per directory and no stat per file. A link to nothing is walked too, and
    its reason put in `broken` (its path -> the reason): it is listed, and recorded as its failure."""
    try:
        entries = list(os.scandir(root))
    except OSError as exc:
        raise InputError(f"{root}: cannot list directory ({exc.strerror or exc})") from None
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(entry.path, broken, f"{prefix}{entry.name}/")
        elif _is_media(entry.name) and entry.is_file():
            yield entry.path, prefix + entry.name
        elif _is_media(entry.name) and entry.is_symlink() and (reason := _broken_link(entry.path)):
            broken[entry.path] = reason
            yield entry.path, prefix + entry.name


def _broken_link(path: str) -> str | None:
    """Why a symlink that is not a file cannot be read ('broken symlink: target missing (TARGET)'); None for a link
    to a directory (never followed)."""
    try:
        os.stat(path)
    except OSError as exc:
        what = "target missing" if exc.errno == errno.ENOENT else (exc.strerror or str(exc)).lower()
        return f"broken symlink: {what} ({os.readlink(path)})"
    return None


def _dirname(path: str) -> str:
    return str(storage.parent(path)) if storage.is_url(path) else os.path.dirname(path)


def _read_list(path: str, options: Options = None, timeout: float | None = None) -> list[str]:
    """@list.txt (a file or a URL): one path or URL per line; blank lines and # comments skipped; relative
    entries are relative to the list's directory."""
    if storage.is_url(path):
        try:
            lines = storage.read_bytes(path, options, timeout=timeout).decode("utf-8").splitlines()
        except (*storage.errors(), UnicodeDecodeError) as exc:
            raise storage.storage_error(InputError, "read list", path, exc) from None
    else:
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"@{path}: cannot read list ({getattr(exc, 'strerror', None) or exc})") from None
    base = _dirname(path)
    entries = (line.strip() for line in lines)
    return [e if storage.is_url(e) else str(storage.join(base, e)) for e in entries if e and not e.startswith("#")]


def _open_tar(path: str, options: Options, timeout: float | None = None):
    """(binary file, size) of a tar to index: local, or a URL read in blocks of PART_SIZE (each bounded by
    `timeout`, see `storage.read_bytes`)."""
    if not storage.is_url(path):
        return open(path, "rb"), os.path.getsize(path)
    found = storage.info(path, options, timeout) if timeout is not None else None
    if found is None or found.get("size") is None:  # no bound asked for, or a server that gives no size
        f = storage.open_file(path, "rb", options, block_size=storage.PART_SIZE, cache_type="readahead")
        return f, f.size
    return io.BufferedReader(_RangeReader(path, options, found["size"], timeout), storage.PART_SIZE), found["size"]


class _RangeReader(io.RawIOBase):
    """A remote object as a seekable raw file: each read one bounded range request (`storage.read_bytes`)."""

    def __init__(self, url: str, options: Options, size: int, timeout: float | None):
        self.url, self.options, self.size, self.timeout, self.pos = url, options, size, timeout, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self.pos = max(0, {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.size}[whence] + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer) -> int:
        end = min(self.size, self.pos + len(buffer))
        if end <= self.pos:
            return 0
        data = storage.read_bytes(self.url, self.options, self.pos, end, timeout=self.timeout)
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)


def _tar_samples(path: str, options: Options = None, timeout: float | None = None) -> Iterator[tuple[str, list[tuple[str, Member]]]]:
    """(sample key, [(ext, member), ...]) for consecutive members sharing a key, in tar order."""
    try:
        raw, size = _open_tar(path, options, timeout)
        with raw, tarfile.open(fileobj=raw, mode="r:") as tar:
            key, group = None, []
            for info in tar:
                if not info.isfile():
                    continue
                split = _split_key(info.name)
                if split is None or (info.name.startswith("__") and info.name.endswith("__")):
                    continue
                if info.offset_data + info.size > size:
                    raise tarfile.ReadError(f"member {info.name} is truncated")
                if split[0] != key and group:
                    yield key, group
                    group = []
                key = split[0]
                group.append((split[1], Member(info.name, info.offset_data, info.size)))
            if group:
                yield key, group
    except (tarfile.TarError, EOFError, *storage.errors()) as exc:
        if storage.is_url(path):
            raise storage.storage_error(InputError, "read tar", path, exc) from None
        raise InputError(f"{path}: not a readable uncompressed tar ({exc})") from None


# listing


@dataclass(slots=True)
class _Raw:
    base: str  # sanitized key, before a collision suffix
    source: str
    path: str
    member: Member | None = None
    extras: tuple[Member, ...] = ()
    rel: str | None = None  # its path under its input root (a tar sample: its key), where its class folder is
    still: bool = False  # a GIF on the images side
    error: str | None = None  # why it cannot be read (a link to nothing): its recorded failure, never opened


def _normpath(path: str) -> str:
    """os.path.normpath for paths (file:// URLs made plain); a URL loses a trailing '/' and, in an object store's
    key, repeated '/' (`storage.normalize`)."""
    return storage.normalize(path).rstrip("/") if storage.is_url(path) else os.path.normpath(storage.location(path))


def _leaves(inputs: Sequence[str], options: Options = None, root: str | None = None, timeout: float | None = None) -> Iterator[tuple[str, str | None]]:
    """(path, key root) per directory, file or tar: brace patterns expanded, @lists read (their entries' keys
    are relative to the list's directory)."""
    for spec in inputs:
        if spec.startswith("@"):
            yield from _leaves(_read_list(spec[1:], options, timeout), options, _dirname(spec[1:]) or ".", timeout)
        else:
            yield from ((_normpath(path), root) for path in _expand(spec))


def _relative(path: str, root: str) -> str:
    if storage.is_url(path) or storage.is_url(root):  # names come from the URL's path, never its query
        path, root = storage.bare(path), storage.bare(root)
        return path[len(root) + 1:] if path.startswith(root.rstrip("/") + "/") else ".."
    return os.path.relpath(path, root)


def _list_file(path: str, root: str | None) -> _Raw:
    rel = _relative(path, root) if root is not None else ".."
    inside = not rel.startswith("..")
    base = rel if inside else storage.name(path)  # a URL's path only: never its query (a token) or fragment
    return _Raw(sanitize_key(os.path.splitext(base)[0]), storage.redact(path), path, rel=rel.replace(os.sep, "/") if inside else None)


def _list_tar(path: str, prefix: bool, out: list[_Raw], left_out: list[str], options: Options = None, timeout: float | None = None) -> int:
    """Append the tar's samples that hold a video (a video sample's jpg passes through as before); in a tar of no
    video at all, its samples that hold an image (or a GIF). Return how many samples hold no media; the
    image samples a tar of videos leaves out go to `left_out`."""
    stem = storage.name(path)[: -len(".tar")]
    samples = list(_tar_samples(path, options, timeout))
    videos = _side(f".{ext}" for _, members in samples for ext, _ in members) == "videos"
    wanted = _is_video if videos else lambda name: is_image_name(name) or _is_gif(name)
    skipped = 0
    for key, members in samples:
        media = [m for ext, m in members if wanted(f".{ext}")]
        if not media:
            image = next((m for ext, m in members if is_image_name(f".{ext}")), None)
            if image is not None:
                left_out.append(f"{storage.redact(path)}:{image.name}")
            else:
                skipped += 1
            continue
        main = media[0]
        extras = tuple(m for _, m in members if m is not main)
        still = not videos and _is_gif(main.name)
        out.append(_Raw(sanitize_key(f"{stem}/{key}" if prefix else key), f"{storage.redact(path)}:{main.name}", path, main, extras, key, still))
    return skipped


def _class_of(raw: _Raw) -> str:
    """The first path component under the item's input root; InputError for an item outside any class folder."""
    head, slash, _ = (raw.rel or "").partition("/")
    if not slash or not head:
        where = "is not under an input directory or list" if raw.rel is None else "is not in a class folder"
        raise InputError(f"{raw.source} {where}: with --class-folders every input is ROOT/CLASS/..., "
                         "the class being the first folder under the input directory (or the list's, or inside the tar)")
    return head


def _assign_keys(raws: list, names: Sequence[str] | None = None, classes: Sequence[str] = ()) -> list[VideoItem]:
    """Every key shared by several items gets a hash of its source (order-independent); converts in place.
    `names`: each item's class (class folders), labelled by its index in the sorted `classes`."""
    counts = Counter(r.base for r in raws)
    labels = {name: label for label, name in enumerate(classes)}
    for i, raw in enumerate(raws):  # raw.source is what users see (redacted): a re-signed URL keeps its key
        key = f"{raw.base}_{short_hash(raw.source)}" if counts[raw.base] > 1 else raw.base
        name = names[i] if names is not None else None
        raws[i] = VideoItem(key, raw.source, raw.path, raw.member, raw.extras, name, labels.get(name), still=raw.still,
                            error=raw.error)
    return raws


def list_items(inputs: Sequence[str], options: Options = None, class_folders: bool = False, timeout: float | None = None) -> ItemList:
    """Inputs -> VideoItems sorted by (path, member offset), duplicates removed; InputError before any work.

    `result.skipped` counts tar samples without a video or image member (skipped, not failures). `class_folders`:
    every item gets the class its folder names and that class's label (`result.classes`, sorted). `options`:
    storage options for the URLs among the inputs. `timeout`: seconds without progress after which a metadata or
    tar-header request fails (an input file that stalls is listed as a file: its fetch is then its recorded failure).
    """
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a million small acyclic objects: the cycle collector would rescan them over and over
    try:
        return _list_items(inputs, options, class_folders, timeout)
    finally:
        if gc_was_enabled:
            gc.enable()


def _kind(path: str, options: Options, timeout: float | None = None) -> str:
    """'dir', 'file' or 'missing': one stat, or one metadata request for a URL (one that stalls: 'file' when its
    name is a video, image or tar's, its fetch then its recorded failure; else a prefix that cannot be listed)."""
    if not storage.is_url(path):
        return "dir" if os.path.isdir(path) else "file" if os.path.exists(path) else "missing"
    try:
        found = storage.info(path, options, timeout)
    except TimeoutError as exc:
        name = storage.url_path(path).lower()
        if _is_media(name) or name.endswith(".tar"):
            return "file"
        raise InputError(f"cannot list {storage.redact(path)}: {exc}") from None
    except storage.errors() as exc:
        raise storage.storage_error(InputError, "read", path, exc) from None
    return "missing" if found is None else "dir" if found.get("type") == "directory" else "file"


def _walk_url(url: str, options: Options) -> Iterator[tuple[str, str]]:
    """`_walk` for a prefix: (URL, relative path) of its video and image objects, from one recursive listing."""
    try:
        yield from ((u, rel) for u, rel in storage.walk_files(url, options) if _is_media(rel))
    except storage.errors() as exc:
        raise storage.storage_error(InputError, "list", url, exc) from None


def _list_items(inputs: Sequence[str], options: Options, class_folders: bool = False, timeout: float | None = None) -> ItemList:
    leaves = list(_leaves([inputs] if isinstance(inputs, str) else inputs, options, timeout=timeout))
    kinds = []
    for path, _ in leaves:
        kinds.append(_kind(path, options, timeout))
        if kinds[-1] == "missing":
            raise InputError(f"{storage.redact(path)}: no such file or directory")
        if storage.url_path(path).lower().endswith(COMPRESSED_TARS):
            raise InputError(f"{storage.redact(path)}: compressed tar shards are not supported; decompress them to .tar")
    is_tar = [storage.url_path(path).lower().endswith(".tar") and kind != "dir" for (path, _), kind in zip(leaves, kinds)]
    raws: list[_Raw] = []
    left_out: list[str] = []
    broken: dict[str, str] = {}  # links to nothing under input directories: path -> reason
    skipped = 0
    for (path, root), tar, kind in zip(leaves, is_tar, kinds):
        if tar:
            skipped += _list_tar(path, sum(is_tar) > 1, raws, left_out, options, timeout)
        elif kind == "dir":
            walked = list(_walk_url(path, options) if storage.is_url(path) else _walk(path, broken))
            if _side(rel for _, rel in walked) == "videos":  # videos' posters and thumbnails stay out, as always
                left_out.extend(p for p, rel in walked if not _is_video(rel))
                raws.extend(_Raw(sanitize_key(rel.rpartition(".")[0]), storage.redact(p), p, rel=rel, error=broken.get(p))
                            for p, rel in walked if _is_video(rel))
            else:
                raws.extend(_Raw(sanitize_key(rel.rpartition(".")[0]), storage.redact(p), p, rel=rel, still=_is_gif(rel),
                                 error=broken.get(p)) for p, rel in walked)
        else:
            raws.append(_list_file(path, root))
    # duplicates (a file under two inputs) keep the key from the outermost root, whatever the input order
    raws.sort(key=lambda r: (r.path, r.member.offset if r.member else -1, -len(r.base), r.base))
    result = ItemList(r for i, r in enumerate(raws) if i == 0 or (r.path, r.member) != (raws[i - 1].path, raws[i - 1].member))
    del raws
    names = [_class_of(r) for r in result] if class_folders else None  # one pass: each item's folder, read once
    classes = sorted(set(names or ()))
    _assign_keys(result, names, classes)
    result.skipped = skipped
    result.classes = classes
    result.left_out = sorted(storage.redact(p) for p in left_out)
    result.roots = [path for path, _ in leaves]
    return result


def validate_split(samples_per_shard: int, num_shards: int = 1, shard_index: int = 0) -> None:
    """The shard options, checked by `plan_shards` and by `EncodeConfig.validate` before any work."""
    if samples_per_shard < 1:
        raise UsageError(f"--samples-per-shard must be >= 1, got {samples_per_shard}")
    if num_shards < 1:
        raise UsageError(f"--num-shards must be >= 1, got {num_shards}")
    if not 0 <= shard_index < num_shards:
        raise UsageError(f"--shard-index must be in [0, {num_shards}), got {shard_index}")


def plan_shards(items: Sequence[VideoItem], samples_per_shard: int, num_shards: int = 1, shard_index: int = 0) -> list[ShardJob]:
    """Consecutive runs of samples_per_shard items -> shard jobs; keeps jobs i with i % num_shards == shard_index."""
    validate_split(samples_per_shard, num_shards, shard_index)
    return [
        ShardJob(i, tuple(items[start : start + samples_per_shard]))
        for i, start in enumerate(range(0, len(items), samples_per_shard))
        if i % num_shards == shard_index
    ]


def plan_segments(items: Sequence[VideoItem], entries: Sequence[Sequence[str]], segments: Sequence[Sequence[int]],
                  samples_per_shard: int, num_shards: int = 1, shard_index: int = 0) -> list[ShardJob]:
    """The shard jobs of an OUT grown by --append: the recorded `entries` ([key, source] in shard order; each names
    one of `items` by its source and keeps its recorded key) cut into `segments` ([first shard, items] each), every
    segment's shards numbered from its first; keeps jobs i with i % num_shards == shard_index."""
    validate_split(samples_per_shard, num_shards, shard_index)
    by_source = {item.source: item for item in items}
    ordered = [replace(by_source[source], key=key) for key, source in entries]
    jobs, start = [], 0
    for first, count in segments:
        part = plan_shards(ordered[start : start + count], samples_per_shard)
        jobs.extend(ShardJob(first + job.index, job.items) for job in part if (first + job.index) % num_shards == shard_index)
        start += count
    return jobs


# reading


def tar_members(path: str, options: Options = None) -> dict[str, Member]:
    """The sample members of an uncompressed tar by name, from one pass over its headers (data is never read)."""
    return {member.name: member for _, group in _tar_samples(path, options) for _, member in group}


def read_member(path: str, member: Member, options: Options = None, timeout: float | None = None) -> bytes:
    """One member's bytes: a seek and a read (a range request for a URL, bounded by `timeout` as in
    `storage.read_bytes`)."""
    try:
        if storage.is_url(path):
            data = storage.read_bytes(path, options, member.offset, member.offset + member.size, timeout=timeout)
        else:
            with open(path, "rb") as f:
                f.seek(member.offset)
                data = f.read(member.size)
    except storage.errors() as exc:
        if storage.is_url(path):
            raise InputError(f"cannot read {storage.redact(path)}:{member.name}: {storage.describe(exc)}") from None
        raise InputError(f"{path}:{member.name}: cannot read ({exc.strerror or exc})") from None
    if len(data) != member.size:
        raise InputError(f"{storage.redact(path)}:{member.name}: truncated ({len(data)} of {member.size} bytes)")
    return data


def read_video_bytes(item: VideoItem, options: Options = None, timeout: float | None = None) -> str | bytes:
    """What the decoder opens: the path of a local video file, else the bytes (of the remote object, of the
    tar member, or read ahead by `iter_fetched`). `timeout`: seconds a remote read may make no progress; a fetch
    that failed ahead is raised here as that item's InputError."""
    if item.fetched is not None:
        if item.fetched.error is not None:
            raise InputError(item.fetched.error)
        return item.fetched.video
    if item.member is not None:
        return read_member(item.path, item.member, options, timeout)
    if not storage.is_url(item.path):
        return item.path
    try:
        return storage.read_bytes(item.path, options, timeout=timeout)
    except storage.errors() as exc:
        raise storage.storage_error(InputError, "read", item.path, exc) from None


def read_extras(item: VideoItem, options: Options = None, timeout: float | None = None) -> dict[str, bytes]:
    """The sample's other tar members by extension ({"txt": b"...", "json": b"..."}); {} for plain files."""
    if item.fetched is not None:
        if item.fetched.error is not None:
            raise InputError(item.fetched.error)
        return dict(item.fetched.extras)
    return {_split_key(m.name)[1]: read_member(item.path, m, options, timeout) for m in item.extras}


# read-ahead


def _fetch(item: VideoItem, options: Options, timeout: float | None = None) -> VideoItem:
    """A remote item with its bytes: a whole object, or one range request spanning a tar sample's members; or,
    when that fails (a status, no progress for `timeout` seconds), with the failure its decoder records."""
    try:
        if item.member is None:
            return replace(item, fetched=Fetched(read_video_bytes(item, options, timeout)))
        members = (item.member, *item.extras)
        start, end = min(m.offset for m in members), max(m.offset + m.size for m in members)
        try:
            data = storage.read_bytes(item.path, options, start, end, timeout=timeout)
        except storage.errors() as exc:
            raise InputError(f"cannot read {item.source}: {storage.describe(exc)}") from None
        if len(data) != end - start:
            raise InputError(f"{item.source}: truncated ({len(data)} of {end - start} bytes)")
        cut = lambda m: data[m.offset - start : m.offset - start + m.size]
        return replace(item, fetched=Fetched(cut(item.member), tuple((_split_key(m.name)[1], cut(m)) for m in item.extras)))
    except LfqtokError as exc:
        return replace(item, fetched=Fetched(b"", error=str(exc)))


def iter_fetched(
    items: Iterable[VideoItem], options: Options = None, budget: int = READAHEAD_BYTES, timeout: float | None = None
) -> Iterator[VideoItem]:
    """The items in order, each remote one with its bytes fetched ahead by FETCH_THREADS threads, so decoders never
    wait on the network; fetched bytes not yet taken stay under `budget` (plus one object per thread). Local items
    pass through untouched. A fetch that fails, or makes no progress for `timeout` seconds, gives the item its
    failure (`Fetched.error`), which its decoder records: a stalled object never holds up the run."""
    window: deque = deque()  # (item, future or None), in order
    held = [0]  # bytes fetched and not yet yielded
    lock = threading.Lock()
    source = iter(items)

    def fetched(item: VideoItem) -> VideoItem:
        out = _fetch(item, options, timeout)
        with lock:
            held[0] += len(out.fetched.video) if out.fetched else 0
        return out

    with ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="lfqtok-fetch") as pool:
        exhausted = False
        while True:
            while (not exhausted and len(window) < FETCH_WINDOW and held[0] < budget
                   and sum(f is not None and not f.done() for _, f in window) < FETCH_THREADS):
                item = next(source, None)
                if item is None:
                    exhausted = True
                    break
                remote = storage.is_url(item.path) and item.fetched is None and item.error is None
                window.append((item, pool.submit(fetched, item) if remote else None))
            if not window:
                return
            item, future = window.popleft()
            if future is not None:
                item = future.result()
                with lock:
                    held[0] -= len(item.fetched.video) if item.fetched else 0
            yield item
