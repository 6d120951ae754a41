"""Where bytes live: local paths as they are, and fsspec URLs (`s3://`, `gs://`, `az://`, `hf://`, `http(s)://`).

The one module that knows about fsspec. Plain paths (and `file://` URLs, made plain) never reach it: callers keep
their local code, so local outputs stay byte for byte what they were. A URL is resolved with the storage options
the caller carries explicitly (`--storage-options` JSON; never global, never written anywhere); credentials
otherwise come from each backend's own places (AWS_* variables and profiles, gcloud, az, HF_TOKEN). What users see
of a URL is `redact(url)`: no user info, no credential-bearing query parameter. In http(s) URLs '?' starts a query
and '#' a fragment; in object-store URLs (s3://b/a?b#c.mp4) both are part of the key. Names (keys, member and cache
file names) come from a URL's path only (`url_path`). A read with a `timeout` fails when a part of it makes no
progress for that long (`read_bytes`, `TimeoutError`), its request cancelled.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import json
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Mapping
from urllib.parse import unquote, urlsplit

from ..errors import InputError, LfqtokError, OutputError, UsageError

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
QUERY_PROTOCOLS = frozenset({"http", "https"})  # where '?' starts a query and '#' a fragment (elsewhere: part of the key)
FETCH_PART = 8 * 2**20  # bytes one fetch request asks for, at most: a fetch's `timeout` bounds each part
PART_SIZE = 16 * 2**20  # bytes a writer buffers before uploading them as one part (S3's minimum part is 5 MiB)
CACHE_ENV = "LFQTOK_CACHE"  # where fetched models are kept (default ~/.cache/lfqtok)
MODEL_TIMEOUT = 300.0  # seconds a model fetch may make no progress (a request unanswered) before it fails
LIST_TIMEOUT = 120.0  # seconds a token reader's look at a prefix (its HEAD, its LIST) may go unanswered
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>,;)\]}]+")
_CREDENTIAL = re.compile(  # query parameters that carry or sign a credential (S3/GCS/Azure/CloudFront signed URLs, tokens)
    r"^(x-amz-.*|x-goog-.*|x-ms-.*|sig|signature|token|.*[_-]token|key|api[_-]?key|apikey|awsaccesskeyid|"
    r"googleaccessid|expires|policy|key-pair-id|credential|password|passwd|secret|.*secret.*|auth|authorization|"
    r"code|session|sv|se|st|sp|sr|spr|si|ss|srt|skoid|sktid|skt|ske|sks|skv|sdd)$",
    re.IGNORECASE,
)
_SECRET_OPTION = re.compile(r"secret|password|passwd|token|credential|auth|cookie|sas|key$|^key|signature", re.IGNORECASE)
_SECRETS: set[str] = set()  # secret-looking --storage-options values seen by this process: scrubbed from every error

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
    """A URL stays a string (`normalize`d); a plain path or file:// URL becomes a Path. A URL's user info is kept
    as a secret (`scrub` masks it in any error text); an object store's is refused: its backend never reads it."""
    if is_url(path):
        url = normalize(str(path))
        user, scheme = _user_info(url), protocol(url)
        if user:
            _SECRETS.add(user)
            if scheme in EXTRAS and scheme not in QUERY_PROTOCOLS:
                raise UsageError(f"{redact(url)}: a {scheme}:// URL carries no credentials (they were in it before "
                                 "the '@'): pass them with --storage-options")
        return url
    text = str(path)
    return Path(text[len("file://"):] if text.lower().startswith("file://") else text)


def _user_info(url: str) -> str:
    """What a URL holds before the '@' of its host ('user:password'), or '' (its host read as `_split` reads it)."""
    netloc = urlsplit(url).netloc if protocol(url) in QUERY_PROTOCOLS else url.partition("://")[2].partition("/")[0]
    return netloc.rpartition("@")[0]


def _split(url: str) -> tuple[str, str, str, str]:
    """(scheme in lowercase, host without user info, path, query): an object-store URL's path is its whole key."""
    scheme = url[: url.index("://")].lower()
    if scheme in QUERY_PROTOCOLS:
        parts = urlsplit(url)
        return scheme, parts.netloc.rpartition("@")[2], parts.path, parts.query
    host, slash, path = url[len(scheme) + 3 :].partition("/")
    return scheme, host.rpartition("@")[2], slash + path, ""


def normalize(url: str) -> str:
    """A URL with its scheme in lowercase (schemes are case-insensitive, fsspec's registry is not: 'S3://b/x' is
    's3://b/x'), and in an object store's key runs of '/' made one ('s3://b//x' -> 's3://b/x': S3 would store a key
    '/x' that no prefix listing of s3://b/x finds); paths as they are."""
    if not is_url(url):
        return url
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme in QUERY_PROTOCOLS:
        return f"{scheme}://{rest}"
    host, slash, key = rest.partition("/")
    return f"{scheme}://{host}{slash}" + re.sub("/{2,}", "/", key.lstrip("/"))


def url_path(path: Location) -> str:
    """What names come from: a URL's path (http: no query, no fragment; an object store: the whole key), '%'
    escapes decoded for http; a plain path as it is."""
    text = str(path)
    if not is_url(text):
        return text
    _, _, route, _ = _split(text)
    return unquote(route) if protocol(text) in QUERY_PROTOCOLS else route


def join(base: Location, *names: str) -> Location:
    """`base`/name/...: a Path for local bases, a URL with '/' for URLs."""
    if not is_url(base):
        return Path(location(base), *names)
    return "/".join([str(base).rstrip("/"), *(n.strip("/") for n in names)])


def parent(path: Location) -> Location:
    """The directory (prefix) holding `path` (an http URL's query is not part of it)."""
    if not is_url(path):
        return location(path).parent
    text = str(path)
    if protocol(text) in QUERY_PROTOCOLS:
        scheme, host, route, _ = _split(text)
        text = f"{scheme}://{host}{route}"
    head = text.rstrip("/").rpartition("/")[0]
    return head if "://" in head and not head.endswith(":/") else text


def name(path: Location) -> str:
    """The last part of `path`'s path ('00000.tar'; never an http URL's query or fragment)."""
    return url_path(path).rstrip("/").rpartition("/")[2] if is_url(path) else location(path).name


def bare(url: Location) -> str:
    """A URL without user info, query or (http) fragment: what keys and relative names are taken from."""
    text = str(url)
    if not is_url(text):
        return text
    scheme, host, route, _ = _split(text)
    return f"{scheme}://{host}{route}"


def redact(url: Location) -> str:
    """What users may see of a URL (in errors, manifests, stats, sources): the URL without user info and without
    the query parameters that carry credentials (signatures, tokens, keys, expiry), the others kept in order; an
    http fragment dropped; an object-store key kept whole, '?' and '#' included. An `@list` input: its URL so."""
    text = str(url)
    if text.startswith("@") and is_url(text[1:]):
        return "@" + redact(text[1:])
    if not is_url(text):
        return text
    scheme, host, route, query = _split(text)
    kept = [pair for pair in query.split("&") if pair and not _CREDENTIAL.match(unquote(pair.partition("=")[0]))]
    return f"{scheme}://{host}{route}" + (f"?{'&'.join(kept)}" if kept else "")


def scrub(text: str) -> str:
    """`text` (an error message) with every URL in it redacted, credential parameters and the secret values of
    storage options masked: what may be shown or recorded."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, "***")
    text = _URL_IN_TEXT.sub(lambda m: redact(m.group(0)), text)
    return re.sub(r"(?i)\b(Signature|Credential|X-Amz-[A-Za-z-]+|sig|token|access_token)=[^&\s]+", r"\1=...", text)


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


_FAMILIES = {"s3": "s3", "s3a": "s3", "http": "http", "https": "http"}
_FORWARDED = {  # (family, option; '*' for unnamed ones) -> where its entries go: 'module:attribute' named there
    ("s3", "*"): "aiobotocore.session:AioSession.__init__",
    ("s3", "config_kwargs"): "botocore.config:Config.OPTION_DEFAULTS",
    ("s3", "client_kwargs"): "botocore.session:Session.create_client",
    ("http", "*"): "aiohttp:ClientSession._request",
    ("http", "client_kwargs"): "aiohttp:ClientSession.__init__",
}
_TEXT_OPTIONS = {"key", "secret", "token", "profile", "username", "password", "region_name", "project", "account_name",
                 "account_key", "sas_token", "connection_string", "tenant_id", "client_id", "client_secret"}
_GENERIC_OPTIONS = {"skip_instance_cache", "use_listings_cache", "listings_expiry_time", "max_paths", "batch_size"}


def _accepted(target: str) -> dict[str, Any] | None:
    """The names (with defaults) a function or mapping named by `target` takes; None when it takes any name."""
    module, _, attrs = target.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for attr in attrs.split("."):
            obj = getattr(obj, attr)
    except (ImportError, AttributeError):
        return None
    if isinstance(obj, Mapping):
        return dict(obj)
    params = inspect.signature(obj).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name: p.default for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _check_type(option: str, value: Any, default: Any) -> None:
    """A value of the default's kind (bool, number, text) and a mapping for '*_kwargs'; else a UsageError."""
    wanted = (
        ("true or false", lambda v: isinstance(v, bool)) if isinstance(default, bool)
        else ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)) if isinstance(default, (int, float))
        else ("a string", lambda v: isinstance(v, str)) if isinstance(default, str)
        else ("a JSON object", lambda v: isinstance(v, Mapping)) if option.endswith("_kwargs")
        else ("a string", lambda v: isinstance(v, str)) if option.rpartition(".")[2] in _TEXT_OPTIONS or option.endswith("_url")
        else None
    )
    if wanted and value is not None and not wanted[1](value):
        kinds = {bool: "true or false", int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}
        got = kinds.get(type(value), type(value).__name__)  # its kind, never its value (it may be a secret)
        raise UsageError(f"--storage-options: {option!r} must be {wanted[0]}, got {got}")


def check_options(scheme: str, options: Mapping[str, Any]) -> None:
    """`--storage-options` for `scheme`: every name known to its file system (or to the client it hands them to),
    every value of the right kind; else one UsageError naming the option."""
    import fsspec

    try:
        cls = fsspec.get_filesystem_class(scheme)
    except (ImportError, ValueError):
        return  # said by `filesystem` in its own words
    known: dict[str, Any] = {}
    open_ended = False
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass.__module__.startswith("fsspec.spec") or klass.__module__ == "fsspec.asyn":
            continue
        params = inspect.signature(init).parameters.values()
        known.update({p.name: p.default for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in known})
        open_ended = any(p.kind is p.VAR_KEYWORD for p in params)
        if not open_ended:
            break
    family = _FAMILIES.get(scheme)
    forwarded = _accepted(_FORWARDED[(family, "*")]) if (family, "*") in _FORWARDED else None
    for option, value in options.items():
        if option in known:
            _check_type(option, value, known[option])
        elif forwarded is not None and option in forwarded:
            _check_type(option, value, forwarded[option])
        elif option not in _GENERIC_OPTIONS and (forwarded is not None or not open_ended):
            names = ", ".join(sorted(n for n in known if n not in ("self", "loop", "asynchronous")))
            raise UsageError(f"--storage-options: unknown option {option!r} for {scheme}:// (its options: {names})")
        inner = _FORWARDED.get((family, option))
        accepted = _accepted(inner) if inner and isinstance(value, Mapping) else None
        for entry, sub in (value.items() if accepted is not None else ()):
            if entry not in accepted:
                raise UsageError(f"--storage-options: unknown entry {entry!r} in {option!r} for {scheme}:// "
                                 f"(its entries: {', '.join(sorted(accepted))})")
            _check_type(f"{option}.{entry}", sub, accepted[entry])


def _remember_secrets(options: Any, under: str = "") -> None:
    """Keep the secret-looking values of storage options (keys, tokens, passwords, URLs' user info and signatures)
    so that `scrub` masks them in any error text."""
    if isinstance(options, Mapping):
        for option, value in options.items():
            _remember_secrets(value, str(option))
    elif isinstance(options, (list, tuple)):
        for value in options:
            _remember_secrets(value, under)
    elif isinstance(options, str) and len(options) >= 4:
        if _SECRET_OPTION.search(under):
            _SECRETS.add(options)
        if is_url(options):
            if user := _user_info(options):
                _SECRETS.add(user)
            for pair in urlsplit(options).query.split("&"):
                name, _, value = pair.partition("=")
                if value and _CREDENTIAL.match(unquote(name)):
                    _SECRETS.add(value)


# file systems


def filesystem(url: str, options: Options = None) -> tuple[Any, str]:
    """(fsspec file system, path inside it) for a URL; a missing protocol package, an unknown or mistyped storage
    option is one UsageError naming it."""
    import fsspec

    scheme = protocol(url)
    if options:
        _remember_secrets(options)
        check_options(scheme, options)
    try:
        fs, path = fsspec.core.url_to_fs(normalize(url), **dict(options or {}))
    except ImportError:
        extra, package = EXTRAS.get(scheme, (None, None))
        hint = f"pip install 'lfqtok[{extra}]' (it installs {package})" if extra else "install the fsspec package that provides it"
        raise UsageError(f"{redact(url)}: {scheme}:// needs a package that is not installed: {hint}") from None
    except ValueError as exc:
        if "protocol" in str(exc).lower():
            raise UsageError(f"{redact(url)}: unknown storage protocol {scheme}://") from None
        raise UsageError(f"{redact(url)}: {describe(exc)}") from None
    except (TypeError, AttributeError) as exc:
        raise UsageError(f"{redact(url)}: storage options not accepted by {scheme}:// ({scrub(str(exc))})") from None
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


_STATUS_WORDS = {401: "check the credentials", 403: "access denied: check the credentials or the URL's signature",
                 416: "the range asked for is past the end of the object"}


def status_of(exc: BaseException) -> int | None:
    """The HTTP status a failed request was answered with (aiohttp's, botocore's), None when there was none."""
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return status
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):
        code = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code if isinstance(code, int) else None
    return None


def describe(exc: BaseException) -> str:
    """One line for a storage error: its kind in words (an HTTP status as such: '403 Forbidden', '500 from the
    server'), never the request it came from (which may hold secrets)."""
    cause = exc.__cause__ or exc.__context__
    status = status_of(exc)
    if status is None and cause is not None:
        status = status_of(cause)
    if status is not None and status != 404:
        import http

        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        if status >= 500:
            return f"{status} from the server ({phrase or 'server error'})"
        hint = _STATUS_WORDS.get(status)
        return f"{status} {phrase}".strip() + (f" ({hint})" if hint else "")
    if isinstance(exc, FileNotFoundError):
        what = str(exc.args[0]) if exc.args else ""
        return "no such object or bucket" + (f" ({scrub(what)})" if "bucket" in what.lower() else "")
    if isinstance(exc, PermissionError):
        return f"access denied ({_first_line(exc)}): check the credentials (AWS_* variables, profile, --storage-options)"
    if isinstance(exc, TimeoutError):
        return _first_line(exc) or "timed out"
    if type(exc).__name__ in ("ClientPayloadError", "ServerDisconnectedError", "IncompleteRead", "ResponseStreamingError"):
        return f"the connection closed mid-transfer ({type(exc).__name__})"
    text = _first_line(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _first_line(exc: BaseException) -> str:
    return scrub(" ".join(str(exc).split()))[:300]


def storage_error(kind: type[LfqtokError], action: str, url: Location, exc: BaseException) -> LfqtokError:
    """`kind("cannot {action} {redacted url}: {what happened}")`."""
    return kind(f"cannot {action} {redact(url)}: {describe(exc)}")


def check_writable(url: Location, options: Options = None, timeout: float | None = None) -> None:
    """OUT may not be a read-only protocol (http), nor an existing object (OUT is a prefix that shards go under:
    written under an object, they would hide from every reader behind it). A local OUT that is a file: the same.
    `timeout`: seconds the store may take to answer (as in `read_bytes`)."""
    if not is_url(url):
        if location(url).is_file():
            raise UsageError(f"{url} is an existing file, not a folder: -o names a folder to write the shards in")
        return
    if protocol(url) in READ_ONLY:
        raise UsageError(f"{redact(url)}: {protocol(url)}:// is read-only; write to a local path or an object store")
    try:
        found = info(url, options, timeout)
    except errors() as exc:
        raise storage_error(OutputError, "check", url, exc) from None
    if found is not None and found.get("type") == "file":
        raise UsageError(f"{redact(url)} is an existing object, not a prefix: -o names a prefix to write the shards "
                         f"under (e.g. {redact(url).rstrip('/')}-tokens)")


# reading


def open_file(path: Location, mode: str = "rb", options: Options = None, **kwargs: Any) -> IO:
    """A file object for a local path (plain `open`) or a URL (fsspec, `kwargs` such as block_size go to it)."""
    if not is_url(path):
        return open(location(path), mode)
    fs, inner = filesystem(str(path), options)
    return fs.open(inner, mode, **kwargs)


def read_bytes(path: Location, options: Options = None, start: int | None = None, end: int | None = None,
               timeout: float | None = None) -> bytes:
    """The bytes of `path` (or of [start, end)): one request for a URL; with `timeout`, requests of at most
    FETCH_PART bytes, and a part that has not arrived within `timeout` seconds ("no progress") is a TimeoutError,
    its request cancelled: a stalled object costs `timeout`, never the run. A short answer is returned as it is
    (the caller knows the size it expects)."""
    if not is_url(path):
        with open(location(path), "rb") as f:
            if start is not None:
                f.seek(start)
            return f.read() if end is None else f.read(end - (start or 0))
    fs, inner = filesystem(str(path), options)
    if timeout is None:
        return fs.cat_file(inner, start=start, end=end)
    begin = start or 0
    parts: list[bytes] = []
    pos = begin
    while end is None or pos < end:
        # after the first part, ask from one byte back: a range starting inside the object is never refused (416)
        lead = 1 if end is None and pos > begin else 0
        stop = pos + FETCH_PART if end is None else min(end, pos + FETCH_PART)
        data = _bounded(fs, "cat_file", timeout, inner, start=pos - lead, end=stop)
        asked, got = stop - pos, len(data) - lead
        if got > asked:  # a server that ignores ranges answers with the whole object
            return data[begin:end]
        parts.append(data[lead:])
        pos += got
        if got < asked:
            break
    return b"".join(parts)


def _bounded(fs: Any, method: str, timeout: float | None, *args: Any, **kwargs: Any) -> Any:
    """`fs.method(*args, **kwargs)`, failing with a TimeoutError after `timeout` seconds (None: unbounded). An async
    file system's request is cancelled; a synchronous one's call is left to end in a daemon thread."""
    if timeout is None:
        return getattr(fs, method)(*args, **kwargs)
    stalled = TimeoutError(f"no progress for {timeout:g} s (stalled)")
    if getattr(fs, "async_impl", False) and hasattr(fs, f"_{method}"):
        from fsspec.asyn import sync
        from fsspec.exceptions import FSTimeoutError

        try:
            return sync(fs.loop, getattr(fs, f"_{method}"), *args, timeout=timeout, **kwargs)
        except FSTimeoutError:
            raise stalled from None
    result: list = []
    call: Callable[[], Any] = lambda: getattr(fs, method)(*args, **kwargs)

    def run() -> None:
        try:
            result.append((True, call()))
        except BaseException as exc:  # handed to the caller
            result.append((False, exc))

    thread = threading.Thread(target=run, daemon=True, name="lfqtok-fetch-call")
    thread.start()
    thread.join(timeout)
    if not result:
        raise stalled
    ok, value = result[0]
    if not ok:
        raise value
    return value


def write_bytes(url: str, data: bytes, options: Options = None) -> None:
    """One object written in one request: readers see the old object or the new one (S3, GCS, Azure PUTs)."""
    fs, inner = filesystem(url, options)
    fs.pipe_file(inner, data)


def info(url: str, options: Options = None, timeout: float | None = None) -> dict[str, Any] | None:
    """The object or prefix at `url` ({'type': 'file'|'directory', 'size': ...}), None when there is nothing (an
    http answer other than 404 is raised as itself, not as 'not found'); `timeout` as in `fetch`."""
    fs, inner = filesystem(url, options)
    try:
        return _bounded(fs, "info", timeout, inner)
    except FileNotFoundError as exc:
        cause = exc.__cause__
        if cause is not None and (status_of(cause) not in (None, 404) or isinstance(cause, TimeoutError)):
            raise cause from None
        return None


def list_names(url: str, options: Options = None, timeout: float | None = None) -> list[str]:
    """The names directly under a prefix ([] when there is none), fresh (no listing cache); `timeout` as in
    `info`."""
    fs, inner = filesystem(url, options)
    fs.invalidate_cache(inner)
    try:
        entries = _bounded(fs, "ls", timeout, inner, detail=False)
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
    found again by the object's ETag/size (one metadata request); plain paths are returned as they are. Each
    request that has not answered within MODEL_TIMEOUT fails the fetch (a store that stalls is one line)."""
    if not is_url(url):
        return url
    fs, inner = filesystem(str(url), options)
    try:
        meta = _bounded(fs, "info", MODEL_TIMEOUT, inner)
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
        with os.fdopen(fd, "wb") as out:
            for chunk in _parts(str(url), options, meta.get("size")):
                digest.update(chunk)
                out.write(chunk)
        final = models / digest.hexdigest() / (name(url) or "model")  # the path's basename: never a query
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


def _parts(url: str, options: Options, size: int | None) -> Iterator[bytes]:
    """A model object's bytes in PART_SIZE pieces, each request bounded by MODEL_TIMEOUT (one whole read when the
    store gives no size)."""
    if size is None:
        yield read_bytes(url, options, timeout=MODEL_TIMEOUT)
        return
    for start in range(0, size, PART_SIZE):
        chunk = read_bytes(url, options, start, min(size, start + PART_SIZE), timeout=MODEL_TIMEOUT)
        if len(chunk) != min(size, start + PART_SIZE) - start:
            raise OSError(f"truncated: {start + len(chunk)} of {size} bytes")
        yield chunk
