"""Benchmark tables as encode inputs: a generated multi-million-row table, as parquet and as csv.

    python scripts/bench_tables.py make DIR --videos VIDEO_DIR [--rows 10000000]
    python scripts/bench_tables.py engines DIR [--where 'videoid % 10 = 0']
    python scripts/bench_tables.py stream DIR --videos VIDEO_DIR [--seconds 60] [--model default]
    python scripts/bench_tables.py ranges DIR --videos VIDEO_DIR [--repeat 2] [--copies 1] [--model default]

`make` writes DIR/table.parquet and DIR/table.csv with the same WebVid-like rows (videoid, contentUrl, duration,
page_dir, name), written in blocks of a million rows; contentUrl cycles over the videos of VIDEO_DIR (paths relative
to it, as a dataset's table names its files), so every row is a real video.

`engines` reads each table once through every candidate engine, in a subprocess each: lfqtok's reader (pyarrow's
streaming readers, `--where` run by DuckDB over each block, the rows of every block numbered: a --num-shards part
whose shards are all at the end, so it scans the whole table and builds no item), DuckDB alone (`read_parquet` /
`read_csv` with the WHERE, record batches fetched) and polars (`scan_*` + `sql_expr` filter, batches collected in
streaming). Prints seconds, peak RSS and rows kept.

`stream` runs `lfqtok.encode_dataset` on each table in a subprocess: the whole table, and the last part of a
`--num-shards` split whose only shard holds the table's last rows (its reader streams every row before its first
sample). Prints the seconds to the first encoded sample (after imports: listing, table hash, model load, first
decode and batch) and the process's peak RSS after --seconds of encoding (or at its end), for both formats. Without --where a
parquet part skips the row groups it does not encode (row counts from the metadata); the third run adds a --where
that keeps every row, so the whole table is read and filtered first.

`ranges` cuts two 2-second ranges from each video of VIDEO_DIR at least 3 s long ([1, 3) and from the middle) into
clip files of their own (PyAV, H.264, the source's size and rate), writes a table of the same ranges over the
original videos (`--clip-col`), and encodes both, interleaved --repeat times, in subprocesses: samples/s of the table
(seeks into each video) over that of the clip files (best of --repeat each; a run's time includes its start;
--copies N repeats every row and clip file N times, so start-up weighs less).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BLOCK_ROWS = 1_000_000

ENGINE = r"""
import json, resource, sys, time
engine, path, where = sys.argv[1], sys.argv[2], sys.argv[3]
if engine == "lfqtok":
    from lfqtok.pipeline.tables import Table, TableOptions
elif engine == "duckdb":
    import duckdb
else:
    import polars as pl
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
imported = rss()
t = time.perf_counter()
if engine == "lfqtok":
    table = Table.open(path, TableOptions(path_col="contentUrl", where=where or None))
    kept = sum(b.num_rows for b in table._kept_blocks())
elif engine == "duckdb":
    reader = "read_parquet" if path.endswith(".parquet") else "read_csv"
    sql = f"SELECT * FROM {reader}(?)" + (f" WHERE {where}" if where else "")
    kept = sum(b.num_rows for b in duckdb.connect().execute(sql, [path]).to_arrow_reader(65536))
else:
    lazy = pl.scan_parquet(path) if path.endswith(".parquet") else pl.scan_csv(path)
    lazy = lazy.with_row_index("__row")
    if where:
        lazy = lazy.filter(pl.sql_expr(where))
    kept = sum(df.height for df in lazy.collect_batches())
print(json.dumps({"engine": engine, "seconds": round(time.perf_counter() - t, 2), "kept": kept,
                  "rss_mib": round(rss()), "rss_over_imports_mib": round(rss() - imported)}))
"""

ENCODE = r"""
import json, os, resource, sys, threading, time
import lfqtok
from lfqtok.pipeline.tables import TableOptions
table, out, options, limit = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), float(sys.argv[4])
t = time.perf_counter()
first = []

def report(done):
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"first_sample_s": round(first[0], 1) if first else None, "rss_mib": round(rss),
                      "ran_s": round(time.perf_counter() - t, 1), "finished": done}), flush=True)
    os._exit(0)

def progress(counters):
    if not first and counters.videos_done + counters.videos_failed > 0:
        first.append(time.perf_counter() - t)
        threading.Timer(limit, report, (False,)).start()

options["table"] = TableOptions(**options.pop("table"))
lfqtok.encode_dataset([table], out, on_progress=progress, **options)
report(True)
"""


RANGES = r"""
import json, sys, time
import lfqtok
from lfqtok.pipeline.tables import TableOptions
inputs, out, options = json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
if "table" in options:
    options["table"] = TableOptions(**options["table"])
t = time.perf_counter()
s = lfqtok.encode_dataset(inputs, out, **options)
print(json.dumps({"seconds": round(time.perf_counter() - t, 2), "samples": s.videos_ok, "failed": s.videos_failed,
                  "skipped": len(s.skipped), "clips": s.clips}))
"""


def cut(source: Path, start: float, end: float, dest: Path) -> int:
    """The frames of `source` with times in [start, end) re-encoded (H.264) into `dest`; returns how many."""
    import av

    written = 0
    with av.open(str(source)) as src, av.open(str(dest), mode="w") as out:
        stream = src.streams.video[0]
        enc = out.add_stream("libx264", rate=stream.average_rate or 25)
        enc.width, enc.height, enc.pix_fmt = stream.codec_context.width // 2 * 2, stream.codec_context.height // 2 * 2, "yuv420p"
        for frame in src.decode(stream):
            if frame.time is None or frame.time < start:
                continue
            if frame.time >= end:
                break
            rgb = frame.to_ndarray(format="rgb24")[: enc.height, : enc.width]  # a fresh frame: the encoder's own timestamps
            out.mux(enc.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
            written += 1
        out.mux(enc.encode())
    return written


def ranges(directory: Path, videos: Path, repeat: int, model: str, copies: int) -> None:
    import shutil

    import av

    clips_dir = directory / "clips"
    clips_dir.mkdir(parents=True, exist_ok=True)
    rows, files = [], []
    for video in sorted(videos.iterdir()):
        with av.open(str(video)) as container:
            duration = float(container.duration or 0) / 1e6
        if duration < 3:
            continue
        spans = [(1.0, 3.0)] + ([(round(duration / 2, 3), round(duration / 2 + 2, 3))] if duration >= 6 else [])
        for i, (start, end) in enumerate(spans):
            dest = clips_dir / f"{video.stem}_{i}.mp4"
            if not dest.exists():
                cut(video, start, end, dest)
            for copy in range(copies):  # hard links: other paths, the same bytes (as the table's rows repeat)
                linked = directory / f"copy{copy}" / dest.name
                linked.parent.mkdir(exist_ok=True)
                if not linked.exists():
                    os.link(dest, linked)
                files.append(str(linked))
        rows += [f'{video},"{json.dumps([list(span) for span in spans])}"'] * copies
    table = directory / "ranges.csv"
    table.write_text("path,clips\n" + "\n".join(rows) + "\n")
    base = {"model": model, "size": 128, "clip_frames": 17, "batch_size": 4, "workers": 1, "device": "cpu", "overwrite": True}
    runs = {"table of ranges": ([str(table)], {**base, "table": {"clip_col": "clips"}}), "clip files": (files, base)}
    best: dict[str, dict] = {}
    for _ in range(repeat):
        for name, (inputs, options) in runs.items():
            out = directory / f"out-{name[:5]}"
            shutil.rmtree(out, ignore_errors=True)
            run = subprocess.run([sys.executable, "-c", RANGES, json.dumps(inputs), str(out), json.dumps(options)],
                                 capture_output=True, text=True, check=True)
            result = json.loads(run.stdout.strip().splitlines()[-1])
            result["samples_per_s"] = round(result["samples"] / result["seconds"], 3)
            print(f"{name:16s} {json.dumps(result)}", flush=True)
            if name not in best or result["samples_per_s"] > best[name]["samples_per_s"]:
                best[name] = result
    ratio = best["table of ranges"]["samples_per_s"] / best["clip files"]["samples_per_s"]
    print(f"{len(files)} ranges in {len(rows)} rows: table {best['table of ranges']['samples_per_s']:.2f} samples/s, "
          f"clip files {best['clip files']['samples_per_s']:.2f} samples/s, ratio {ratio:.3f}")


def make(directory: Path, videos: Path, rows: int) -> None:
    """DIR/table.parquet and DIR/table.csv: the same rows, written a block at a time (bounded memory)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    names = sorted(p.name for p in videos.iterdir() if p.suffix.lower() in (".mp4", ".webm", ".avi", ".mkv", ".mov"))
    directory.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("videoid", pa.int64()), ("contentUrl", pa.string()), ("duration", pa.string()),
                        ("page_dir", pa.string()), ("name", pa.string())])
    started = time.perf_counter()
    with pq.ParquetWriter(directory / "table.parquet", schema) as parquet, \
            pcsv.CSVWriter(str(directory / "table.csv"), schema) as csv:
        for start in range(0, rows, BLOCK_ROWS):
            ids = np.arange(start, min(rows, start + BLOCK_ROWS), dtype=np.int64)
            block = pa.table({
                "videoid": ids,
                "contentUrl": [names[i % len(names)] for i in ids],
                "duration": [f"PT00H00M{i % 60:02d}S" for i in ids],
                "page_dir": [f"{i // 50 * 50:07d}_{i // 50 * 50 + 49:07d}" for i in ids],
                "name": [f"generated clip {i}: a person walks along a beach at sunset" for i in ids],
            }, schema=schema)
            parquet.write_table(block, row_group_size=128 * 1024)
            csv.write_table(block)
    sizes = {p.name: p.stat().st_size for p in directory.glob("table.*")}
    print(json.dumps({"rows": rows, "bytes": sizes, "seconds": round(time.perf_counter() - started, 1)}))


def engines(directory: Path, where: str) -> None:
    for name in ("table.parquet", "table.csv"):
        for engine in ("lfqtok", "duckdb", "polars"):
            run = subprocess.run([sys.executable, "-c", ENGINE, engine, str(directory / name), where], capture_output=True, text=True)
            line = run.stdout.strip().splitlines()[-1] if run.returncode == 0 else f"failed: {run.stderr.strip().splitlines()[-1]}"
            print(f"{name:14s} {engine:8s} {line}", flush=True)


def stream(directory: Path, videos: Path, seconds: float, model: str, samples_per_shard: int) -> None:
    import pyarrow.parquet as pq

    rows = pq.ParquetFile(directory / "table.parquet").metadata.num_rows
    shards = -(-rows // samples_per_shard)
    base = {"model": model, "size": 64, "clip_frames": 5, "max_clips": 1, "batch_size": 4, "workers": 1, "device": "cpu",
            "samples_per_shard": samples_per_shard, "overwrite": True,
            "table": {"path_col": "contentUrl", "caption_col": "name", "root": str(videos)}}
    for name in ("table.parquet", "table.csv"):
        last = {"num_shards": shards, "shard_index": shards - 1}
        every = {**base["table"], "where": "videoid >= 0"}  # keeps every row, but each must be read to know it
        for run_index, (label, split) in enumerate((("full run", {}), (f"last of {shards} parts", last),
                                                     ("the same, --where", {**last, "table": every}))):
            out = directory / f"out-{name.replace('.', '-')}-{run_index}"
            run = subprocess.run([sys.executable, "-c", ENCODE, str(directory / name), str(out), json.dumps({**base, **split}), str(seconds)],
                                 capture_output=True, text=True)
            line = run.stdout.strip().splitlines()[-1] if run.returncode == 0 and run.stdout.strip() else f"failed: {run.stderr.strip()[-300:]}"
            print(f"{name:14s} {label:22s} {line}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("make", "engines", "stream", "ranges"))
    parser.add_argument("dir", type=Path)
    parser.add_argument("--videos", type=Path)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--where", default="videoid % 10 = 0")
    parser.add_argument("--seconds", type=float, default=60.0, help="stream: encode this long after the first sample")
    parser.add_argument("--model", default="default")
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--copies", type=int, default=1, help="ranges: each row (and clip file) this many times")
    args = parser.parse_args()
    if args.mode == "make":
        make(args.dir, args.videos, args.rows)
    elif args.mode == "engines":
        engines(args.dir, args.where)
    elif args.mode == "ranges":
        ranges(args.dir, args.videos.resolve(), args.repeat, args.model, args.copies)
    else:
        stream(args.dir, args.videos.resolve(), args.seconds, args.model, args.samples_per_shard)


if __name__ == "__main__":
    main()
