"""Where bytes live: local paths as they are, and fsspec URLs (`s3://`, `gs://`, `az://`, `hf://`, `http(s)://`).

The one module that knows about fsspec. Plain paths (and `file://` URLs, made plain) never reach it: callers keep
their local code, so local outputs stay byte for byte what they were. A URL is resolved with the storage options
the caller carries explicitly (`--storage-options` JSON; never global, never written anywhere); credentials
otherwise come from each backend's own places (AWS_* variables and profiles, gcloud, az, HF_TOKEN). What users see
of a URL is `redact(url)`: no user info, no query string.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator, Mapping
from urllib.parse import urlsplit, urlunsplit

from ..errors import InputError, LfqtokError, UsageError

# constants

EXTRAS = {  # protocol -> (lfqtok extra, the package it installs)
    "s3": ("s3", "s3fs"),
    "s3a": ("s3", "s3fs"),
    "gs": ("gcs", "gcsfs"),
    "gcs": ("gcs", "gcsfs"),
    "az": ("azure", "adlfs"),
    "abfs": ("azure", "adlfs"),
    "abfss": ("azure", "adlfs"),
    "hf": ("hf", "huggingface_hub"),
    "http": ("http", "aiohttp"),
    "https": ("http", "aiohttp"),
}
READ_ONLY = frozenset({"http", "https"})
PART_SIZE = 16 * 2**20  # bytes a writer buffers before uploading them as one part (S3's minimum part is 5 MiB)
CACHE_ENV = "LFQTOK_CACHE"  # where fetched models are kept (default ~/.cache/lfqtok)
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")

Location = str | Path  # a local Path, or a URL string (see `location`)
Options = Mapping[str, Any] | None  # storage options for fsspec (None: the backend's defaults)

# names


def protocol(path: Location) -> str | None:
    """The URL scheme of `path` ('s3', 'file', ...), None for a plain path."""
    match = _URL.match(str(path)) if isinstance(path, str) else None
    return match.group(1).lower() if match else None


def is_url(path: Location) -> bool:
    """Whether `path` is a URL that needs fsspec (a `file://` URL is a plain path)."""
    return protocol(path) not in (None, "file")


def location(path: Location) -> Location:
    """A URL stays a string (no Path would keep its '//'); a plain path or file:// URL becomes a Path."""
    if is_url(path):
        return str(path)
    text = str(path)
    return Path(text[len("file://"):] if text.lower().startswith("file://") else text)


def join(base: Location, *names: str) -> Location:
    """`base`/name/...: a Path for local bases, a URL with '/' for URLs."""
    if not is_url(base):
        return Path(location(base), *names)
    return "/".join([str(base).rstrip("/"), *(n.strip("/") for n in names)])


def parent(path: Location) -> Location:
    """The directory (prefix) holding `path`."""
    if not is_url(path):
        return location(path).parent
    head = str(path).rstrip("/").rpartition("/")[0]
    return head if "://" in head and not head.endswith(":/") else str(path)


def name(path: Location) -> str:
    """The last part of `path` ('00000.tar')."""
    return str(path).rstrip("/").rpartition("/")[2] if is_url(path) else location(path).name


def redact(url: Location) -> str:
    """What users may see of a URL (in errors, manifests, stats): user info and query string removed."""
    text = str(url)
    if not is_url(text):
        return text
    parts = urlsplit(text)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def parse_options(text: str | None) -> dict[str, Any] | None:
    """`--storage-options` JSON -> a dict (None when not given)."""
    if not text:
        return None
    try:
        options = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--storage-options must be a JSON object ({exc})") from None
    if not isinstance(options, dict):
        raise UsageError(f"--storage-options must be a JSON object, got {type(options).__name__}")
    return options


# file systems


def filesystem(url: str, options: Options = None) -> tuple[Any, str]:
    """(fsspec file system, path inside it) for a URL; a missing protocol package is one UsageError naming the extra."""
    import fsspec

    scheme = protocol(url)
    try:
        fs, path = fsspec.core.url_to_fs(url, **dict(options or {}))
    except ImportError:
        extra, package = EXTRAS.get(scheme, (None, None))
        hint = f"pip install 'lfqtok[{extra}]' (it installs {package})" if extra else "install the fsspec package that provides it"
        raise UsageError(f"{redact(url)}: {scheme}:// needs a package that is not installed: {hint}") from None
    except ValueError as exc:
        if "protocol" in str(exc).lower():
            raise UsageError(f"{redact(url)}: unknown storage protocol {scheme}://") from None
        raise UsageError(f"{redact(url)}: {describe(exc)}") from None
    except TypeError as exc:
        raise UsageError(f"{redact(url)}: storage options not accepted by {scheme}:// ({exc})") from None
    return fs, path


@functools.lru_cache(maxsize=None)
def errors() -> tuple[type[BaseException], ...]:
    """What a store's client raises for a failed request (not always an OSError: botocore's connection errors,
    aiohttp's), for `except storage.errors()` around remote I/O."""
    found: list[type[BaseException]] = [OSError, ValueError]
    for module, name in (("botocore.exceptions", "BotoCoreError"), ("aiohttp", "ClientError")):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(found)


def describe(exc: BaseException) -> str:
    """One line for a storage error: its kind in words, never the request it came from (which may hold secrets)."""
    if isinstance(exc, FileNotFoundError):
        what = str(exc.args[0]) if exc.args else ""
        return "no such object or bucket" + (f" ({what})" if "bucket" in what.lower() else "")
    if isinstance(exc, PermissionError):
        return f"access denied ({_first_line(exc)}): check the credentials (AWS_* variables, profile, --storage-options)"
    text = _first_line(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return re.sub(r"(Signature|Credential|X-Amz-[A-Za-z-]+)=[^&\s]+", r"\1=...", text)[:300]


def storage_error(kind: type[LfqtokError], action: str, url: Location, exc: BaseException) -> LfqtokError:
    """`kind("cannot {action} {redacted url}: {what happened}")`."""
    return kind(f"cannot {action} {redact(url)}: {describe(exc)}")


def check_writable(url: str) -> None:
    """OUT may not be a read-only protocol (http)."""
    if protocol(url) in READ_ONLY:
        raise UsageError(f"{redact(url)}: {protocol(url)}:// is read-only; write to a local path or an object store")


# reading


def open_file(path: Location, mode: str = "rb", options: Options = None, **kwargs: Any) -> IO:
    """A file object for a local path (plain `open`) or a URL (fsspec, `kwargs` such as block_size go to it)."""
    if not is_url(path):
        return open(location(path), mode)
    fs, inner = filesystem(str(path), options)
    return fs.open(inner, mode, **kwargs)


def read_bytes(path: Location, options: Options = None, start: int | None = None, end: int | None = None) -> bytes:
    """The bytes of `path` (or of [start, end)): one request for a URL."""
    if not is_url(path):
        with open(location(path), "rb") as f:
            if start is not None:
                f.seek(start)
            return f.read() if end is None else f.read(end - (start or 0))
    fs, inner = filesystem(str(path), options)
    return fs.cat_file(inner, start=start, end=end)


def write_bytes(url: str, data: bytes, options: Options = None) -> None:
    """One object written in one request: readers see the old object or the new one (S3, GCS, Azure PUTs)."""
    fs, inner = filesystem(url, options)
    fs.pipe_file(inner, data)


def info(url: str, options: Options = None) -> dict[str, Any] | None:
    """The object or prefix at `url` ({'type': 'file'|'directory', 'size': ...}), None when there is nothing."""
    fs, inner = filesystem(url, options)
    try:
        return fs.info(inner)
    except FileNotFoundError:
        return None


def list_names(url: str, options: Options = None) -> list[str]:
    """The names directly under a prefix ([] when there is none), fresh (no listing cache)."""
    fs, inner = filesystem(url, options)
    fs.invalidate_cache(inner)
    try:
        entries = fs.ls(inner, detail=False)
    except FileNotFoundError:
        return []
    return sorted(e.rstrip("/").rpartition("/")[2] for e in entries)


def walk_files(url: str, options: Options = None) -> Iterator[tuple[str, str]]:
    """(URL, path relative to `url`) of every object under a prefix, recursively, sorted."""
    fs, inner = filesystem(url, options)
    fs.invalidate_cache(inner)
    root = inner.rstrip("/")
    scheme = protocol(url)
    for found in sorted(fs.find(root, withdirs=False)):
        rel = found[len(root):].lstrip("/")
        yield f"{scheme}://{found}" if not found.startswith(f"{scheme}://") else found, rel


def remove(urls: list[str], options: Options = None) -> None:
    """Delete objects (missing ones are fine)."""
    if urls:
        fs, _ = filesystem(urls[0], options)
        fs.rm([filesystem(u, options)[1] for u in urls])


def abort_stale_uploads(prefix: str, older_than: float, options: Options = None) -> int:
    """S3: abort the incomplete multipart uploads under `prefix` started more than `older_than` seconds ago (a
    killed writer's parts, invisible to readers but billed); returns how many. Other stores keep nothing."""
    if protocol(prefix) not in ("s3", "s3a"):
        return 0
    import datetime

    fs, inner = filesystem(prefix, options)
    bucket, _, key = inner.partition("/")
    now = datetime.datetime.now(datetime.timezone.utc)
    prefix = key.rstrip("/") + "/" if key.strip("/") else ""
    aborted = 0
    for upload in fs.list_multipart_uploads(bucket):
        if upload["Key"].startswith(prefix) and (now - upload["Initiated"]).total_seconds() > older_than:
            fs.abort_mpu(bucket, upload["Key"], upload["UploadId"])
            aborted += 1
    return aborted


# models


def cache_dir() -> Path:
    """$LFQTOK_CACHE, else ~/.cache/lfqtok: where fetched checkpoints are kept."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lfqtok")


def fetch_cached(url: Location, options: Options = None) -> Location:
    """A local copy of a checkpoint URL, fetched once per machine: kept under `models/{sha256}/{name}` in the cache,
    found again by the object's ETag/size (one metadata request); plain paths are returned as they are."""
    if not is_url(url):
        return url
    fs, inner = filesystem(str(url), options)
    try:
        meta = fs.info(inner)
    except errors() as exc:
        raise storage_error(InputError, "read model", url, exc) from None
    version = json.dumps([redact(url), meta.get("ETag") or meta.get("etag"), meta.get("size")], default=str)
    index = cache_dir() / "urls" / f"{hashlib.sha256(version.encode()).hexdigest()}.json"
    try:
        cached = Path(json.loads(index.read_text())["path"])
        if cached.is_file():
            return cached
    except (OSError, ValueError, KeyError):
        pass
    models = cache_dir() / "models"
    models.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=models, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out, fs.open(inner, "rb") as src:
            while chunk := src.read(PART_SIZE):
                digest.update(chunk)
                out.write(chunk)
        final = models / digest.hexdigest() / name(url)
        final.parent.mkdir(exist_ok=True)
        os.replace(tmp, final)  # several processes of one machine may fetch at once: each renames a whole copy
    except errors() as exc:
        Path(tmp).unlink(missing_ok=True)
        raise storage_error(InputError, "fetch model", url, exc) from None
    index.parent.mkdir(exist_ok=True)
    index_tmp = index.with_name(f"{index.name}.{os.getpid()}.tmp")
    index_tmp.write_text(json.dumps({"url": redact(url), "path": str(final)}))
    os.replace(index_tmp, index)
    return final
