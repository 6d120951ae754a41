"""A run's failures as a table `lfqtok encode` retries: `lfqtok stats OUT --failures FILE.jsonl`.

A table run's failed rows are written with their original columns (read again from the table the manifest names,
streamed, and checked against its recorded identity; a path relative to the table's folder made whole); other runs'
failed files as rows with a `path` column. Encoding that file with the run's options (with `--path-format`, also
`--root` when the file is not beside the table) retries exactly those rows.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import InputError, UsageError
from ..io import storage
from ..io.shards import LISTING_KEY, finished_shards, read_listing, read_manifest, stats_path
from ..io.storage import Location, Options
from ..pipeline.tables import ROW_COLUMN, Table, TableOptions, json_safe


def run_failures(out: Location, storage_options: Options = None) -> list[dict[str, Any]]:
    """Every failure recorded in OUT's finished shards' stats, in shard order."""
    out = storage.location(out)
    failures = []
    for index in sorted(finished_shards(out, storage_options)):
        try:
            stats = json.loads(storage.read_bytes(stats_path(out, index), storage_options))
        except (OSError, ValueError) as exc:
            raise InputError(f"{storage.redact(stats_path(out, index))}: unreadable shard stats ({exc})") from None
        failures.extend(stats.get("failures", []))
    return failures


def write_failures(out: Location, dest: str | Path, storage_options: Options = None) -> int:
    """Write OUT's failed rows (a table run: with their original columns) or files (`path`) to `dest` as JSON lines;
    returns how many rows were written."""
    if not str(dest).lower().endswith((".jsonl", ".ndjson")):
        raise UsageError(f"--failures {dest}: write the failures to a .jsonl file (what `lfqtok encode` reads as a table)")
    manifest = read_manifest(out, storage_options)
    if manifest is None:
        raise InputError(f"{storage.redact(str(out))}: no lfqtok manifest (not an encode output)")
    failures = run_failures(out, storage_options)
    table = manifest.get("table")
    if table is None:
        cwd = manifest.get("cwd", "")
        sources = dict.fromkeys(f["source"] for f in failures)
        rows = [{"path": s if storage.is_url(s) or os.path.isabs(s) else os.path.join(cwd, s)} for s in sources]
    else:
        rows = _table_rows(out, manifest, {f["row"] for f in failures if "row" in f}, storage_options)
    with open(dest, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(rows)


def _table_rows(out: Location, manifest: dict[str, Any], wanted: set[int], storage_options: Options) -> list[dict[str, Any]]:
    """The rows numbered `wanted` of the manifest's table, all their cells as typed; the table must be unchanged."""
    names = {k: tuple(v) if isinstance(v, list) else v for k, v in manifest["table"].items() if k != "format"}
    spec = manifest["inputs"][0]
    if not storage.is_url(spec) and not os.path.isabs(spec):
        spec = os.path.join(manifest.get("cwd", ""), spec)
    table = Table.open(spec, TableOptions(**names), storage_options)
    same = lambda entries: [entry[1:] for entry in entries]  # size and digest: where it was read from aside
    if same(table.identity()) != same(read_listing(out, manifest.get(LISTING_KEY), storage_options) or []):
        raise InputError(f"{table.name} changed since the run: its failed rows can no longer be read back from it")
    rows = []
    for block in table.all_blocks():
        first, last = block.column(ROW_COLUMN)[0].as_py(), block.column(ROW_COLUMN)[-1].as_py()
        hits = sorted(r for r in wanted if first <= r <= last)
        for r in hits:
            row = block.slice(r - first, 1).to_pylist()[0]
            row.pop(ROW_COLUMN)
            if not table.options.path_format and not table.options.root:  # relative to the table's folder: made whole,
                try:  # so the file retries from wherever it is written
                    row[table.path_col] = table.resolve(row)
                except ValueError:
                    pass  # the row failed for its path cell: kept as it is
            rows.append({k: json_safe(v) for k, v in row.items()})
    return rows
