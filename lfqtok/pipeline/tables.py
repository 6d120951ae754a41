"""Read stage: tables (csv, tsv, jsonl, parquet; a file, a folder or glob of parquet parts; local or a URL) ->
VideoItems, streamed -> ShardJobs.

Rows are read in blocks (pyarrow: parquet row groups, csv/jsonl chunks) and never all held: a shard is
`samples_per_shard` consecutive rows kept by `--where` (all ranges of a row in its shard), so its boundaries depend on
the table and the options only, and a part of a `--num-shards` split or a resumed run turns into Python objects only
the rows of the shards it encodes. Nothing is opened per row: a missing video is its row's recorded failure.
`--where` is a SQL boolean expression run by DuckDB over each block. Rows are numbered from 0 over data rows (the
header excluded), before `--where`. Tables need the `tables` extra (pyarrow, duckdb).
"""

from __future__ import annotations

import ast
import bisect
import datetime as dt
import decimal
import glob
import hashlib
import json
import math
import os
import re
import string
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from ..errors import InputError, UsageError
from ..io import storage
from ..io.storage import Options
from .sources import ShardJob, VideoItem, sanitize_key, short_hash

TABLE_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
INFER_BYTES = 8 * 2**20  # csv/jsonl: column types are inferred from this many bytes at the start (pyarrow's first block)
BLOCK_BYTES = 2**20  # csv/jsonl bytes per block after that (pyarrow's reader holds more of larger blocks at once)
BLOCK_ROWS = 65536  # rows per block, at least (the last aside): parquet batches, csv/jsonl blocks joined up to it
HASH_CHUNK = 8 * 2**20
ROW_COLUMN = "__lfqtok_row"  # each block's row numbers, as `--where` sees the block
INSTALL_HINT = 'tables need pyarrow and duckdb, which are not installed: pip install "lfqtok[tables]"'
OPTION_NAMES = {"path_col": "--path-col", "path_format": "--path-format", "root": "--root", "caption_col": "--caption-col",
                "clip_col": "--clip-col", "start_col": "--start-col", "end_col": "--end-col", "label_col": "--label-col",
                "key_col": "--key-col", "where": "--where", "keep_cols": "--keep-cols"}

# options


@dataclass(frozen=True)
class TableOptions:
    """How rows become samples (`lfqtok encode TABLE --path-col ...`); every one is saved into the manifest."""

    path_col: str | None = None  # the column holding a path or URL (default: `path` when the table has one)
    path_format: str | None = None  # instead: a format string over columns, e.g. '{page_dir}/{videoid}.mp4'
    root: str | None = None  # where relative paths resolve (default: the table's folder)
    caption_col: str | None = None  # a string, or a list aligned with the clip ranges
    clip_col: str | None = None  # a list of [start, end] pairs per row (csv: a JSON or Python-literal string)
    start_col: str | None = None  # one range per row: its start ...
    end_col: str | None = None  # ... and end (seconds or [H:]MM:SS[.fff])
    label_col: str | None = None  # classes, as with --class-folders
    key_col: str | None = None  # the sample key (sanitized; default: the row number)
    where: str | None = None  # a SQL boolean expression over the columns: the rows kept
    keep_cols: tuple[str, ...] | None = None  # the columns kept in the sample json's `columns` (default: all others)

    def settings(self) -> dict[str, Any]:
        """The options given, as the manifest records them."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items() if v is not None}

    @property
    def used(self) -> bool:
        return bool(self.settings())

    def validate(self) -> None:
        """Combinations that cannot work, before anything is read."""
        if self.path_col and self.path_format:
            raise UsageError("--path-col and --path-format exclude each other: give one")
        if (self.start_col is None) != (self.end_col is None):
            raise UsageError("--start-col and --end-col go together: give both")
        if self.clip_col and self.start_col:
            raise UsageError("--clip-col and --start-col/--end-col exclude each other: give one")
        if self.path_format:
            try:
                fields = [f for _, f, _, _ in string.Formatter().parse(self.path_format) if f is not None]
            except ValueError as exc:
                raise UsageError(f"--path-format {self.path_format!r}: {exc}") from None
            if not fields:
                raise UsageError(f"--path-format {self.path_format!r} names no column: write columns as {{name}}")


def parse_keep_cols(text: str | None) -> tuple[str, ...] | None:
    """'a,b' -> ('a', 'b'); None stays None."""
    if text is None:
        return None
    return tuple(c.strip() for c in text.split(",") if c.strip())


# what is a table


def table_format(spec: str, options: Options = None) -> str | None:
    """'csv', 'tsv', 'jsonl' or 'parquet' when an input is a table (by extension; a folder or glob of parquet parts),
    else None."""
    lower = spec.lower().rstrip("/")
    for ext, fmt in TABLE_EXTENSIONS.items():
        if lower.endswith(ext):
            return fmt
    if storage.is_url(spec):
        return None
    if os.path.isdir(spec):
        names = os.listdir(spec)
        if any(n.lower().endswith(".parquet") for n in names) and not any(_media(n) for n in names):
            return "parquet"
    return None


def _media(name: str) -> bool:
    from .sources import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

    ext = name.rpartition(".")[2].lower()
    return ext in VIDEO_EXTENSIONS or ext in IMAGE_EXTENSIONS


def _files(spec: str, fmt: str, options: Options) -> list[str]:
    """The files of a table: itself, or the sorted parquet parts of a folder or glob."""
    if any(c in spec for c in "*?["):
        if storage.is_url(spec):
            fs, inner = storage.filesystem(spec, options)
            scheme = storage.protocol(spec)
            found = [f if "://" in f else f"{scheme}://{f}" for f in sorted(fs.glob(inner))]
        else:
            found = sorted(glob.glob(spec))
        if not found:
            raise InputError(f"{storage.redact(spec)}: no table parts match")
        return found
    if fmt == "parquet" and not storage.is_url(spec) and os.path.isdir(spec):
        return sorted(os.path.join(spec, n) for n in os.listdir(spec) if n.lower().endswith(".parquet"))
    if not storage.is_url(spec) and not os.path.isfile(spec):
        raise InputError(f"{spec}: no such table")
    return [spec]


def import_tables() -> tuple[Any, Any]:
    """pyarrow and duckdb (the `tables` extra); one usage error when they are missing."""
    try:
        import duckdb
        import pyarrow
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return pyarrow, duckdb


# identity


def _file_identity(path: str, options: Options) -> list[str]:
    """[path, size, 'etag:...' (a URL whose store gives one) or 'sha256:...' of the bytes]: what a changed table
    changes (its last field names it, as the manifest's listing compares entries)."""
    if storage.is_url(path):
        found = storage.info(path, options) or {}
        etag = found.get("ETag") or found.get("etag")
        if etag is not None:
            return [storage.redact(path), str(found.get("size")), f"etag:{str(etag).strip(chr(34))}"]
    digest, size = hashlib.sha256(), 0
    try:
        with storage.open_file(path, "rb", options) as f:
            while chunk := f.read(HASH_CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except storage.errors() as exc:
        raise storage.storage_error(InputError, "read table", path, exc) from None
    return [storage.redact(path), str(size), f"sha256:{digest.hexdigest()}"]


# time ranges

_CLOCK = re.compile(r"^(?:(\d+):)?(\d{1,2}):(\d{1,2}(?:\.\d*)?)$")


def parse_time(value: Any) -> float:
    """Seconds from a number, or a string of seconds or [H:]MM:SS[.fff]; ValueError otherwise."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"not a time: {value!r}")
    if isinstance(value, (int, float, decimal.Decimal)):
        seconds = float(value)
    else:
        text = str(value).strip()
        match = _CLOCK.match(text)
        if match:
            hours, minutes, secs = match.groups()
            seconds = int(hours or 0) * 3600 + int(minutes) * 60 + float(secs)
        else:
            seconds = float(text)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"not a time: {value!r}")
    return seconds


def _literal(value: Any) -> Any:
    """A csv cell holding a list: JSON, else a Python literal (Panda-70M's "[['0:00:00.000', '0:00:08.141']]")."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return ast.literal_eval(value.strip())


def parse_ranges(value: Any) -> list[tuple[float, float]]:
    """A clip cell -> [(start, end), ...] in seconds; ValueError naming what is wrong."""
    try:
        pairs = _literal(value)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        raise ValueError(f"not a list of [start, end] pairs: {str(value)[:80]!r}") from None
    if not isinstance(pairs, (list, tuple)):
        raise ValueError(f"not a list of [start, end] pairs: {str(value)[:80]!r}")
    ranges = []
    for pair in pairs:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError(f"not a [start, end] pair: {str(pair)[:80]!r}")
        start, end = parse_time(pair[0]), parse_time(pair[1])
        if end <= start:
            raise ValueError(f"range ends before it starts: {list(pair)!r}")
        ranges.append((start, end))
    return ranges


# cells


def json_safe(value: Any) -> Any:
    """A cell as the sample json holds it: numbers, strings, bools, lists and dicts as typed; times as ISO text."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, tuple) and len(v) == 2 for v in value) and value:  # arrow maps: [(key, value), ...]
            return {str(k): json_safe(v) for k, v in value}
        return [json_safe(v) for v in value]
    return value


# the table


@dataclass
class Table:
    """One table input: its files, format and row options; `iter_jobs` streams it into shard jobs."""

    spec: str  # as given (a path, URL, folder or glob)
    options: TableOptions = field(default_factory=TableOptions)
    storage_options: Options = field(default=None, repr=False)
    format: str = ""
    files: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)  # --label-col: the sorted class names of the rows kept
    labels: dict[str, int] = field(default_factory=dict)  # each class's index in `classes`
    schema: Any = None  # csv/jsonl: the column types inferred from its first INFER_BYTES, fixed for every block
    rows_estimate: int = 0  # rows kept, for progress: parquet's row count (csv/jsonl: from the first block's bytes per
    # row), times the share of the first block that --where keeps

    @classmethod
    def open(cls, spec: str, options: TableOptions, storage_options: Options = None) -> "Table":
        """Find the table's files and read its columns (the first block only); UsageError for an option that names a
        column the table does not have, or a --where that does not run on it."""
        import_tables()
        options.validate()
        fmt = table_format(spec, storage_options) or "parquet"
        table = cls(spec, options, storage_options, fmt, _files(spec, fmt, storage_options))
        first = next(table._blocks(), None)
        if first is None:
            raise InputError(f"{table.name}: an empty table (no header or no parts)")
        table.columns = list(first[1].schema.names)
        table.schema = first[1].schema if fmt != "parquet" else None
        table._check_columns()
        kept = table._filter(first[1], 0).num_rows if options.where else first[1].num_rows  # a bad --where: now
        table.rows_estimate = round(table._estimate(first) * kept / max(1, first[1].num_rows))
        if options.label_col:
            table.classes = sorted({str(v) for block in table._kept_blocks([options.label_col])
                                    for v in block.column(0).to_pylist() if v is not None})
            table.labels = {name: label for label, name in enumerate(table.classes)}
        return table

    @property
    def name(self) -> str:
        return storage.redact(self.spec)

    @property
    def root(self) -> str:
        """Where relative paths in rows resolve: --root, else the folder of the table (of its first part)."""
        if self.options.root is not None:
            return self.options.root
        first = self.files[0] if self.files else self.spec
        return str(storage.parent(first)) if storage.is_url(first) else os.path.dirname(first)

    def settings(self) -> dict[str, Any]:
        """The manifest's `table`: its format and the row options given (settings a resume must match)."""
        return {"format": self.format, **self.options.settings()}

    def identity(self) -> list[list[str]]:
        """The table's listing (the manifest's `listing` hashes it): per file [path, size, etag or sha256]."""
        return [_file_identity(f, self.storage_options) for f in self.files]

    def iter_jobs(self, samples_per_shard: int, num_shards: int = 1, shard_index: int = 0,
                  skip: Iterable[int] = (), part: tuple[int, int] = (0, 1)) -> Iterator[ShardJob]:
        """Shard jobs of consecutive kept rows, `samples_per_shard` rows each, streamed: shards i with
        i % num_shards == shard_index and not in `skip`, and of those every part[1]-th from part[0] (one of several
        local devices). Rows of other shards are counted, never turned into items."""
        skip = set(skip)
        done = sorted(s for s in skip if s % num_shards == shard_index)  # this part's finished shards
        mine = lambda s: s % num_shards == shard_index and s not in skip
        ordinal = lambda s: s // num_shards - bisect.bisect_left(done, s)  # its place among this part's shards to do
        wanted = lambda s: mine(s) and (part[1] == 1 or ordinal(s) % part[1] == part[0])
        shards_of = lambda first, n: range(first // samples_per_shard, (first + n - 1) // samples_per_shard + 1)
        needed = lambda first, n: any(map(wanted, shards_of(first, n)))  # without --where a row's number is its place
        kept, shard, items = 0, None, []
        for block in self._kept_blocks(needed=needed):
            n = block if isinstance(block, int) else block.num_rows  # an int: a parquet row group with no wanted row
            for s in shards_of(kept, n) if n and not isinstance(block, int) else ():
                if not wanted(s):
                    continue
                lo, hi = max(s * samples_per_shard - kept, 0), min((s + 1) * samples_per_shard - kept, n)
                if shard is not None and shard != s:
                    yield ShardJob(shard, _unique(items))
                    items = []
                shard = s
                rows = block.slice(lo, hi - lo).to_pylist()
                items.extend(item for row in rows for item in self.row_items(row))
            kept += n
            if shard is not None and (kept // samples_per_shard > shard) and items:
                yield ShardJob(shard, _unique(items))
                shard, items = None, []
        if shard is not None and items:
            yield ShardJob(shard, _unique(items))

    def row_items(self, row: dict[str, Any]) -> list[VideoItem]:
        """One row -> its samples (one per clip range, else one), or one item recording why the row cannot be."""
        o = self.options
        index = row.pop(ROW_COLUMN)
        try:
            path = self._path(row)
        except ValueError as exc:
            return [self._bad(index, f"{self.name} row {index}: {exc}", None)]
        try:
            spans: list[tuple[float, float] | None] = [None]
            if o.clip_col:
                spans = list(parse_ranges(row[o.clip_col]))
                if not spans:
                    raise ValueError(f"{o.clip_col!r} has no ranges")
            elif o.start_col:
                start, end = parse_time(row[o.start_col]), parse_time(row[o.end_col])
                if end <= start:
                    raise ValueError(f"range ends before it starts: [{row[o.start_col]!r}, {row[o.end_col]!r}]")
                spans = [(start, end)]
            captions = self._captions(row, len(spans) if o.clip_col else None)
        except (ValueError, TypeError) as exc:
            return [self._bad(index, f"{self.name} row {index}: {exc}", path)]
        class_name = None if o.label_col is None or row[o.label_col] is None else str(row[o.label_col])
        label = self.labels[class_name] if class_name is not None else None
        base = sanitize_key(str(row[o.key_col])) if o.key_col and row[o.key_col] is not None else f"{index:09d}"
        source = storage.redact(path)
        columns = self._other_columns(row)
        segmented = o.clip_col is not None
        return [
            VideoItem(f"{base}_{segment:04d}" if segmented else base, source, path, class_name=class_name, label=label,
                      span=span, row=index, segment=segment if segmented else None, caption=captions[segment], columns=columns)
            for segment, span in enumerate(spans)
        ]

    # helpers

    def _bad(self, index: int, error: str, path: str | None) -> VideoItem:
        return VideoItem(f"{index:09d}", storage.redact(path) if path else self.name, path or "", row=index, error=error)

    def _path(self, row: dict[str, Any]) -> str:
        o = self.options
        if o.path_format:
            try:
                text = o.path_format.format(**{k: "" if v is None else v for k, v in row.items()})
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"--path-format {o.path_format!r}: {exc}") from None
        else:
            value = row[self.path_col]
            if value is None or not str(value).strip():
                raise ValueError(f"no path in column {self.path_col!r}")
            text = str(value).strip()
        if storage.is_url(text) or os.path.isabs(text):
            return text
        if text.startswith("file://"):
            return str(storage.location(text))
        root = self.root
        return str(storage.join(root, text)) if storage.is_url(root) else os.path.join(root, text)

    def _captions(self, row: dict[str, Any], count: int | None) -> list[str | None]:
        """The caption of each range: a list aligned with them (a Python-literal list in csv), else one for all."""
        n = count or 1
        col = self.options.caption_col
        if col is None or row[col] is None:
            return [None] * n
        value = row[col]
        if count is not None and isinstance(value, str) and value.lstrip().startswith("["):
            try:
                parsed = _literal(value)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                parsed = None
            if isinstance(parsed, list) and all(isinstance(c, str) for c in parsed):
                value = parsed
        if isinstance(value, (list, tuple)):
            if len(value) != n:
                raise ValueError(f"{len(value)} captions in {col!r} for {n} ranges")
            return [None if c is None else str(c) for c in value]
        return [str(value)] * n

    def _other_columns(self, row: dict[str, Any]) -> dict[str, Any]:
        o = self.options
        if o.keep_cols is not None:
            return {c: json_safe(row[c]) for c in o.keep_cols}
        used = {o.path_col or (None if o.path_format else self.path_col), o.caption_col, o.clip_col, o.start_col,
                o.end_col, o.label_col, o.key_col}
        return {k: json_safe(v) for k, v in row.items() if k not in used}

    @property
    def path_col(self) -> str:
        return self.options.path_col or "path"

    def _check_columns(self) -> None:
        o = self.options
        named = [(OPTION_NAMES[k], getattr(o, k)) for k in ("path_col", "caption_col", "clip_col", "start_col", "end_col",
                                                               "label_col", "key_col")]
        named += [("--keep-cols", c) for c in o.keep_cols or ()]
        if o.path_format:
            named += [("--path-format", f) for _, f, _, _ in string.Formatter().parse(o.path_format) if f]
        elif o.path_col is None and "path" not in self.columns:
            raise UsageError(f"{self.name} has no 'path' column: give --path-col or --path-format "
                             f"(its columns: {', '.join(self.columns)})")
        for option, column in named:
            if column is not None and column not in self.columns:
                raise UsageError(f"{option} {column!r}: {self.name} has no such column (its columns: {', '.join(self.columns)})")

    def _estimate(self, first: tuple[int, Any]) -> int:
        """Rows in the table: parquet's metadata, else the first block's rows per byte times the bytes."""
        if self.format == "parquet":
            import pyarrow.parquet as pq

            total = 0
            for path in self.files:
                with storage.open_file(path, "rb", self.storage_options) as f:
                    total += pq.ParquetFile(f).metadata.num_rows
            return total
        consumed, block = first
        if not consumed:
            return block.num_rows
        size = sum(_size(f, self.storage_options) for f in self.files)
        return max(block.num_rows, round(block.num_rows * size / consumed))

    def _blocks(self, columns: Sequence[str] | None = None, needed: Needed | None = None) -> Iterator[tuple[int, Any]]:
        """(bytes read so far or 0, RecordBatch) of the whole table in order; `columns`: only those (parquet reads
        only them). `needed(first row, rows)`: whether a parquet row group is wanted; one that is not is never read,
        and stands as its number of rows."""
        pa, _ = import_tables()
        offset = 0
        for path in self.files:
            try:  # a local file through pyarrow's own reader (no Python file object in the read path)
                opened = storage.open_file(path, "rb", self.storage_options) if storage.is_url(path) else pa.OSFile(path)
                with opened as f:
                    for position, block in self._file_blocks(pa, f, columns, needed, offset):
                        offset += block if isinstance(block, int) else block.num_rows
                        yield position, block
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise InputError(f"{storage.redact(path)}: not a readable {self.format} table ({first})") from None
            except storage.errors() as exc:
                raise storage.storage_error(InputError, "read table", path, exc) from None

    def _file_blocks(self, pa: Any, f: Any, columns: Sequence[str] | None, needed: Needed | None, offset: int) -> Iterator[tuple[int, Any]]:
        if self.format == "parquet":
            import pyarrow.parquet as pq

            parquet = pq.ParquetFile(f)
            for group in range(parquet.num_row_groups):
                rows = parquet.metadata.row_group(group).num_rows
                if needed is not None and not needed(offset, rows):
                    yield 0, rows  # its rows counted from the metadata, never read
                else:
                    yield from ((0, b) for b in parquet.iter_batches(BLOCK_ROWS, row_groups=[group], columns=list(columns) if columns else None))
                offset += rows
            return
        if self.format in ("csv", "tsv"):
            import pyarrow.csv as pcsv

            o = self.options  # columns of text whatever the first block holds (types are inferred from it alone)
            types = {c: pa.string() for c in (o.path_col, o.caption_col, o.clip_col) if c}
            if self.schema is not None:
                types = {field.name: field.type for field in self.schema}
            reader = pcsv.open_csv(
                f, read_options=pcsv.ReadOptions(block_size=INFER_BYTES if self.schema is None else BLOCK_BYTES),
                parse_options=pcsv.ParseOptions(delimiter="\t" if self.format == "tsv" else ",", newlines_in_values=True),
                convert_options=pcsv.ConvertOptions(include_columns=list(columns) if columns else None, column_types=types))
        else:
            import pyarrow.json as pjson

            reader = pjson.open_json(f, read_options=pjson.ReadOptions(block_size=INFER_BYTES if self.schema is None else BLOCK_BYTES),
                                     parse_options=pjson.ParseOptions(explicit_schema=self.schema,  # keys the first 8 MiB
                                                                      unexpected_field_behavior="ignore" if self.schema else "infer"))  # lack: left out
        if self.schema is None:  # the types are not known yet: the first block alone, to infer them from
            yield from ((f.tell(), batch) for batch in reader)
            return
        pending, rows = [], 0  # small blocks joined: --where runs once per BLOCK_ROWS rows, not per MiB
        for batch in reader:
            pending.append(batch.select(list(columns)) if columns and self.format == "jsonl" else batch)
            rows += batch.num_rows
            if rows >= BLOCK_ROWS:
                yield f.tell(), pa.concat_batches(pending)
                pending, rows = [], 0
        if pending:
            yield f.tell(), pa.concat_batches(pending)

    def all_blocks(self) -> Iterator[Any]:
        """Every row in blocks, numbered (ROW_COLUMN), --where not applied: what `lfqtok stats --failures` reads back."""
        pa, _ = import_tables()
        offset = 0
        for _, block in self._blocks():
            yield block.append_column(ROW_COLUMN, _numbers(pa, offset, block.num_rows))
            offset += block.num_rows

    def resolve(self, row: dict[str, Any]) -> str:
        """The video path or URL of a row (ValueError for a cell that gives none)."""
        return self._path(row)

    def _kept_blocks(self, columns: Sequence[str] | None = None, needed: Needed | None = None) -> Iterator[Any]:
        """The table's blocks with their row numbers (ROW_COLUMN), rows --where drops left out; a block `needed` says
        is not wanted (no --where) stands as its number of rows."""
        pa, _ = import_tables()
        read = None
        if columns is not None:
            read = list(dict.fromkeys([*columns, *(self.columns if self.options.where else [])]))
        offset = 0
        for _, block in self._blocks(read, None if self.options.where else needed):
            if isinstance(block, int):
                offset += block
                yield block
                continue
            n = block.num_rows
            block = block.append_column(ROW_COLUMN, _numbers(pa, offset, n))
            if self.options.where:
                block = self._filter(block, offset)
            if columns is not None:
                block = block.select([*columns, ROW_COLUMN])
            offset += n
            yield block

    def _filter(self, block: Any, offset: int) -> Any:
        """The rows of `block` where --where holds, in order (DuckDB runs the expression over the block)."""
        pa, duckdb = import_tables()
        if ROW_COLUMN not in block.schema.names:
            block = block.append_column(ROW_COLUMN, _numbers(pa, offset, block.num_rows))
        con = _duckdb()
        con.register("t", block)
        try:
            kept = con.execute(f'SELECT "{ROW_COLUMN}" FROM t WHERE ({self.options.where}) ORDER BY 1').fetchnumpy()[ROW_COLUMN]
        except duckdb.Error as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UsageError(f"--where {self.options.where!r}: {first} (columns: {', '.join(self.columns)})") from None
        finally:
            con.unregister("t")
        return block.take(pa.array(kept - offset))


Needed = Callable[[int, int], bool]  # (first row, rows) -> whether a block of the table is wanted


def _numbers(pa: Any, offset: int, n: int) -> Any:
    """Row numbers offset, offset + 1, ... as an int64 arrow array (from numpy: a Python range converts 10x slower)."""
    return pa.array(np.arange(offset, offset + n, dtype=np.int64))


def _unique(items: list[VideoItem]) -> tuple[VideoItem, ...]:
    """A shard's items, a key that repeats (a --key-col value on several rows) made unique with a hash of its row."""
    seen: set[str] = set()
    out = []
    for item in items:
        if item.key in seen:
            item = replace(item, key=f"{item.key}_{short_hash(f'{item.row}/{item.segment}')}")
        seen.add(item.key)
        out.append(item)
    return tuple(out)


def _duckdb() -> Any:
    """One DuckDB connection per thread, made once (a block's filter runs in milliseconds; connecting does not)."""
    _, duckdb = import_tables()
    if _CONNECTION.get("con") is None:
        _CONNECTION["con"] = duckdb.connect()
    return _CONNECTION["con"]


_CONNECTION: dict[str, Any] = {}


def _size(path: str, options: Options) -> int:
    if storage.is_url(path):
        return int((storage.info(path, options) or {}).get("size") or 0)
    return os.path.getsize(path)


@dataclass
class TableJobs:
    """A table's shard jobs, streamed when iterated: what the engines take in place of a list of jobs.

    Picklable (Ray, device processes): each holder reads the table itself. `part(rank, n)` deals the jobs over local
    devices; `rows_total` is this run's rows, estimated, for progress."""

    table: Table
    samples_per_shard: int
    num_shards: int = 1
    shard_index: int = 0
    skip: frozenset[int] = frozenset()
    parts: tuple[int, int] = (0, 1)

    def __iter__(self) -> Iterator[ShardJob]:
        return self.table.iter_jobs(self.samples_per_shard, self.num_shards, self.shard_index, self.skip, self.parts)

    def part(self, rank: int, n: int) -> "TableJobs":
        return replace(self, parts=(rank, n))

    @property
    def rows_total(self) -> int:
        rows = math.ceil(self.table.rows_estimate / self.num_shards)
        done = sum(1 for s in self.skip if s % self.num_shards == self.shard_index)
        return max(0, rows - done * self.samples_per_shard) // self.parts[1]
