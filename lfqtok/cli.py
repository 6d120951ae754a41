"""The `lfqtok` command: a thin Typer layer. Each command parses options, calls one library function and
prints a summary; errors a user can cause become one line on stderr (LFQTOK_DEBUG=1 shows tracebacks)."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import LfqtokError, UsageError

app = typer.Typer(
    name="lfqtok",
    help="Turn videos into Lookup-Free-Quantization token shards (WebDataset), and inspect them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # help text as written: "[default: x]" or "[a]" are not markup tags to drop
)
err = Console(stderr=True)
DEBUG = os.environ.get("LFQTOK_DEBUG") == "1"

# helpers


def _one_line_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The one mapping from exceptions to exit codes: LfqtokError -> its code, interrupt -> 130, disk -> 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except LfqtokError as exc:
            if DEBUG:
                raise
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted; finished shards are kept, rerun the same command to resume", 130)
        except OSError as exc:  # disk full, permissions, ... outside the places that already say more
            if DEBUG:
                raise
            _fail(f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}", 1)

    return wrapper


def _fail(message: str, code: int) -> None:
    from .io.storage import scrub  # the last guard: no URL's credentials or storage option's secret on stderr

    err.print(f"[bold red]lfqtok: error:[/] {escape(scrub(message))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


class _WarningLines(logging.Handler):
    """The library's warnings (a shard retried, an actor replaced) as one line each on stderr, above the progress."""

    def emit(self, record: logging.LogRecord) -> None:
        err.print(f"[yellow]lfqtok:[/] {escape(record.getMessage())}", highlight=False, soft_wrap=True)


@contextlib.contextmanager
def _library_warnings() -> Iterator[None]:
    logger = logging.getLogger("lfqtok")
    handler, propagate = _WarningLines(logging.WARNING), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False  # printed here once, not again by a root handler
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def _split_keys(keys: Optional[str]) -> Optional[list[str]]:
    return [k for k in keys.split(",") if k] if keys else None


# help panels: every option of a command sits in one of these, so `--help` reads by topic (other options slot in)

PANEL_INPUTS = "Inputs"
PANEL_TABLES = "Tables"
PANEL_FRAMES = "Frames and clips"
PANEL_MODEL = "Model and device"
PANEL_OUTPUT = "Output and sharding"
PANEL_RESULTS = "Output"  # decode, stats: what they write or print
PANEL_RUN = "Run"


def _no_type_tags(self: Any, ctx: Any) -> Optional[str]:
    """The help's type column: an option's metavar (S|HxW, N, ...), else nothing; Typer would print `<bool>`,
    `<list[str]>` (an argument's metavar already names it in the first column)."""
    return None if isinstance(self, typer.core.TyperArgument) else self.metavar


typer.core.TyperArgument.display_type_rich = _no_type_tags
typer.core.TyperOption.display_type_rich = _no_type_tags

StorageOptions = Annotated[
    Optional[str],
    typer.Option(metavar="JSON", help="fsspec options for URLs (s3://, gs://, ...) beyond the backend's env vars and profiles.",
                 rich_help_panel=PANEL_INPUTS),
]
LogEvery = Annotated[
    Optional[float],
    typer.Option(metavar="SECONDS", show_default="a bar; 30 when stderr is not a terminal",
                 help="Print a plain progress line every SECONDS (batch jobs, nohup, | tee).", rich_help_panel=PANEL_RUN),
]
Device = Annotated[
    str, typer.Option(metavar="DEVICE", help="auto | cpu | cuda | cuda:N ('auto', 'cuda': every GPU).", rich_help_panel=PANEL_MODEL)
]


# encode


@app.command(epilog="Example: lfqtok encode videos/ -o tokens/ --size 256 --samples-per-shard 500")
@_one_line_errors
def encode(
    inputs: Annotated[list[str], typer.Argument(metavar="INPUT", show_default=False,
                                                help="Dirs, video or image files, @list.txt, or tar shards (brace patterns ok); or one table (.csv, .tsv, .jsonl, .parquet, a folder or quoted glob of parquet parts); paths or URLs.")],
    class_folders: Annotated[bool, typer.Option("--class-folders", help="ROOT/CLASS/... (ImageNet-style): sample json gets 'class' and 'label'.", rich_help_panel=PANEL_INPUTS)] = False,
    storage_options: StorageOptions = None,
    path_col: Annotated[Optional[str], typer.Option(metavar="COL", show_default="path", help="The column holding each video's path or URL.", rich_help_panel=PANEL_TABLES)] = None,
    path_format: Annotated[Optional[str], typer.Option(metavar="FORMAT", help="The path as a format string over columns, e.g. '{page_dir}/{videoid}.mp4'.", rich_help_panel=PANEL_TABLES)] = None,
    root: Annotated[Optional[str], typer.Option(metavar="DIR", show_default="the table's folder", help="Where relative paths resolve (a dir or URL).", rich_help_panel=PANEL_TABLES)] = None,
    caption_col: Annotated[Optional[str], typer.Option(metavar="COL", help="The caption (a string, or a list aligned with the clip ranges): the sample's {key}.txt.", rich_help_panel=PANEL_TABLES)] = None,
    clip_col: Annotated[Optional[str], typer.Option(metavar="COL", help="A list of [start, end] pairs per row (seconds or [H:]MM:SS[.fff]): a sample per range.", rich_help_panel=PANEL_TABLES)] = None,
    start_col: Annotated[Optional[str], typer.Option(metavar="COL", help="One range per row, its start (with --end-col).", rich_help_panel=PANEL_TABLES)] = None,
    end_col: Annotated[Optional[str], typer.Option(metavar="COL", help="One range per row, its end.", rich_help_panel=PANEL_TABLES)] = None,
    label_col: Annotated[Optional[str], typer.Option(metavar="COL", help="The class column: sample json 'class' and 'label' (index into the manifest's sorted 'classes').", rich_help_panel=PANEL_TABLES)] = None,
    key_col: Annotated[Optional[str], typer.Option(metavar="COL", show_default="the row number", help="The sample key comes from this column (sanitized).", rich_help_panel=PANEL_TABLES)] = None,
    where: Annotated[Optional[str], typer.Option(metavar="SQL", help="Keep the rows where this SQL expression holds, e.g. '\"aesthetic score\" >= 5 AND seconds <= 20'.", rich_help_panel=PANEL_TABLES)] = None,
    keep_cols: Annotated[Optional[str], typer.Option(metavar="A,B", show_default="every other column", help="The columns kept in the sample json's 'columns'.", rich_help_panel=PANEL_TABLES)] = None,
    size: Annotated[str, typer.Option(metavar="S|HxW", help="S: short side to S, centre crop S x S; HxW (e.g. 128x224): see --resize.", rich_help_panel=PANEL_FRAMES)] = "128",
    resize: Annotated[str, typer.Option(metavar="crop|pad|fit", help="crop: cover, centre crop; pad: contain, black bars; fit: each video's own aspect.", rich_help_panel=PANEL_FRAMES)] = "crop",
    buckets: Annotated[Optional[str], typer.Option(metavar="HxW,...|auto", help="Each video to the nearest of these aspects; auto: common ones at SIZE's pixels.", rich_help_panel=PANEL_FRAMES)] = None,
    clip_frames: Annotated[int, typer.Option(metavar="N", help="Frames per clip (1 + 4k).", rich_help_panel=PANEL_FRAMES)] = 17,
    clip_stride: Annotated[Optional[int], typer.Option(metavar="N", show_default="--clip-frames, no overlap", help="Sampled frames between clip starts.", rich_help_panel=PANEL_FRAMES)] = None,
    fps: Annotated[Optional[float], typer.Option(metavar="F", show_default="the source's rate", help="Resample videos to this frame rate first.", rich_help_panel=PANEL_FRAMES)] = None,
    max_clips: Annotated[Optional[int], typer.Option(metavar="N", show_default="all", help="At most N clips per video.", rich_help_panel=PANEL_FRAMES)] = None,
    no_pad_short: Annotated[bool, typer.Option("--no-pad-short", help="Fail videos shorter than a clip (else: padded with their last frame).", rich_help_panel=PANEL_FRAMES)] = False,
    hflip: Annotated[bool, typer.Option("--hflip", help="Images: also write the tokens of the mirrored input ({key}.tokens_flip.npy).", rich_help_panel=PANEL_FRAMES)] = False,
    scenes: Annotated[str, typer.Option(metavar="MODE", help="Shot detection, off | on | content | transnetv2: clips never cross a cut (pip install 'lfqtok[scenes]').", rich_help_panel=PANEL_FRAMES)] = "off",
    scene_threshold: Annotated[Optional[float], typer.Option(metavar="T", show_default="27 content score, 0.5 TransNetV2", help="Cut threshold: a content score 0-255, or a TransNetV2 probability.", rich_help_panel=PANEL_FRAMES)] = None,
    min_scene_frames: Annotated[Optional[int], typer.Option(metavar="N", show_default="8", help="A cut closer than N decoded frames to the last one is dropped.", rich_help_panel=PANEL_FRAMES)] = None,
    model: Annotated[str, typer.Option(metavar="MODEL", help="'default' (embedded), a .safetensors or an Open-MAGVIT2 video .ckpt (path or URL).", rich_help_panel=PANEL_MODEL)] = "default",
    device: Device = "auto",
    batch_size: Annotated[int, typer.Option(metavar="N", help="Clips per encoder batch.", rich_help_panel=PANEL_MODEL)] = 16,
    out: Annotated[str, typer.Option("--out", "-o", metavar="OUT", help="Directory or URL prefix (s3://bucket/tokens) for the shards.", rich_help_panel=PANEL_OUTPUT)] = ...,  # required; here for its panel's place
    samples_per_shard: Annotated[int, typer.Option(metavar="N", help="Samples (videos, images) per output shard.", rich_help_panel=PANEL_OUTPUT)] = 1000,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an OUT made with other settings or inputs (deletes only lfqtok's own files).", rich_help_panel=PANEL_OUTPUT)] = False,
    append: Annotated[bool, typer.Option("--append", help="OUT was made from fewer inputs: encode only the new ones, into new shards after its last.", rich_help_panel=PANEL_OUTPUT)] = False,
    num_shards: Annotated[int, typer.Option(metavar="N", help="Split the shards into N parts (SLURM arrays, many machines)...", rich_help_panel=PANEL_OUTPUT)] = 1,
    shard_index: Annotated[int, typer.Option(metavar="I", help="...and run part I (0 to N - 1).", rich_help_panel=PANEL_OUTPUT)] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.", rich_help_panel=PANEL_OUTPUT)] = False,
    engine: Annotated[str, typer.Option(metavar="local|ray", help="Run on this machine, or on a Ray cluster.", rich_help_panel=PANEL_RUN)] = "local",
    ray_address: Annotated[Optional[str], typer.Option(metavar="ADDR", show_default="start or join a local one", help="Ray cluster address ('auto': a running one).", rich_help_panel=PANEL_RUN)] = None,
    workers: Annotated[Optional[int], typer.Option(metavar="N", show_default="cores - 1, at most 16", help="Decode processes.", rich_help_panel=PANEL_RUN)] = None,
    video_timeout: Annotated[float, typer.Option(metavar="SECONDS", help="A video fetched or decoded without progress this long fails.", rich_help_panel=PANEL_RUN)] = 60.0,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 if any video failed.", rich_help_panel=PANEL_RUN)] = False,
    log_every: LogEvery = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Show Ray's own log lines too (as LFQTOK_DEBUG=1 does).", rich_help_panel=PANEL_RUN)] = False,
) -> None:
    """Encode videos and images into WebDataset token shards (OUT/lfqtok.json, OUT/00000.tar, OUT/00000_stats.json, ...)."""
    from .pipeline.encode import EncodeConfig, encode_dataset
    from .pipeline.tables import TableOptions, parse_keep_cols
    from .progress import EncodeProgress, check_log_every
    from .io.storage import parse_options

    check_log_every(log_every)
    table = TableOptions(
        path_col=path_col, path_format=path_format, root=root, caption_col=caption_col, clip_col=clip_col, start_col=start_col,
        end_col=end_col, label_col=label_col, key_col=key_col, where=where, keep_cols=parse_keep_cols(keep_cols),
    )
    config = EncodeConfig(
        model=model, size=size, resize=resize, buckets=buckets, clip_frames=clip_frames, clip_stride=clip_stride, fps=fps, max_clips=max_clips,
        pad_short=not no_pad_short, scenes=scenes, scene_threshold=scene_threshold, min_scene_frames=min_scene_frames,
        batch_size=batch_size, workers=workers, device=device,
        samples_per_shard=samples_per_shard, overwrite=overwrite, append=append, strict=strict, num_shards=num_shards,
        shard_index=shard_index, engine=engine, ray_address=ray_address, video_timeout=video_timeout, verbose=verbose or DEBUG,
        class_folders=class_folders, hflip=hflip, table=table,
        storage_options=parse_options(storage_options),
    )
    label = ", ".join([*(["ray"] if engine == "ray" else []), *([f"--shard-index {shard_index} of {num_shards}"] if num_shards > 1 else [])])
    with EncodeProgress(err, log_every=log_every, label=label) as progress, _library_warnings():
        summary = encode_dataset(inputs, out, config, on_progress=progress.update)
    if json_out:
        _print_json({**vars(summary), "failures_by_reason": dict(summary.failures_by_reason)})
    else:
        _encode_table(summary, label)


def _encode_table(summary, label: str = "") -> None:
    table = Table(title=escape(f"lfqtok encode{f' [{label}]' if label else ''} -> {summary.out}"), show_header=False)
    rows = [
        ("samples ok (videos, images)", f"{summary.videos_ok:,}"),
        ("samples failed", f"{summary.videos_failed:,}"),
        ("clips", f"{summary.clips:,}"),
        ("tokens", f"{summary.tokens:,}"),
        ("shards written / skipped (already done)", f"{summary.shards_written} / {summary.shards_skipped}"),
        ("time", f"{summary.seconds:.1f} s"),
        ("throughput", f"{summary.frames_per_second:,.1f} frames/s, {summary.tokens_per_second:,.0f} tokens/s"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    if summary.left_out:
        first = ", ".join(summary.left_out_first) + (", ..." if summary.left_out > len(summary.left_out_first) else "")
        table.add_row("[yellow]images left out (folders or tars of videos)[/]", f"{summary.left_out:,}: {escape(first)}")
    for reason, count in summary.failures_by_reason.most_common():
        table.add_row(f"[red]failed: {escape(reason)}[/]", str(count))
    if summary.skipped:
        table.add_row("time ranges skipped (shorter than one clip)", f"{len(summary.skipped):,}")
    err.print(table)


# decode


@app.command(epilog="Example: lfqtok decode tokens/ -o previews/ --format png --compare --limit 2")
@_one_line_errors
def decode(
    tokens: Annotated[list[str], typer.Argument(metavar="TOKENS", show_default=False,
                                                help="Token dirs (an encode OUT), token tars (paths or URLs), or .npy arrays of generated ids.")],
    keys: Annotated[Optional[str], typer.Option(metavar="K,...", help="Comma-separated sample keys to decode.", rich_help_panel=PANEL_INPUTS)] = None,
    limit: Annotated[Optional[int], typer.Option(metavar="N", help="Decode at most N samples.", rich_help_panel=PANEL_INPUTS)] = 4,
    storage_options: StorageOptions = None,
    out: Annotated[Path, typer.Option("--out", "-o", metavar="DIR", help="Directory for the previews.", rich_help_panel=PANEL_RESULTS)] = ...,  # required
    fmt: Annotated[str, typer.Option("--format", metavar="mp4|gif|png", help="A video, or a PNG contact sheet (labelled rows, PSNR per clip).", rich_help_panel=PANEL_RESULTS)] = "mp4",
    compare: Annotated[bool, typer.Option("--compare", help="Show the source frames beside (png: above) the reconstruction.", rich_help_panel=PANEL_RESULTS)] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object per sample on stdout.", rich_help_panel=PANEL_RESULTS)] = False,
    model: Annotated[Optional[str], typer.Option(metavar="MODEL", show_default="the manifest's", help="Another tokenizer (.safetensors, Open-MAGVIT2 .ckpt); .npy ids need it.", rich_help_panel=PANEL_MODEL)] = None,
    device: Device = "auto",
    log_every: LogEvery = None,
) -> None:
    """Decode token samples (or generated ids in .npy files) back to video previews, with PSNR/SSIM against the source when it is readable."""
    from .inspect.decode import decode_samples
    from .io.storage import parse_options
    from .progress import StepProgress, check_log_every

    check_log_every(log_every)
    with StepProgress(err, "decode", "clips", log_every) as progress:
        rows = decode_samples(
            tokens, out, keys=_split_keys(keys), limit=limit, fmt=fmt, compare=compare, model=model, device=device,
            storage_options=parse_options(storage_options), on_progress=progress.update,
        )
    if json_out:
        _print_json(rows)
        return
    table = Table(title=escape(f"lfqtok decode -> {out}"))
    for col in ("key", "clips", "psnr (dB)", "ssim", "note"):
        table.add_column(col, overflow="fold")
    for row in rows:
        psnr, ssim = row.get("psnr"), row.get("ssim")
        table.add_row(
            row["key"], str(row.get("clips", "")), "-" if psnr is None else f"{psnr:.2f}",
            "-" if ssim is None else f"{ssim:.3f}", escape(row.get("note") or ""),
        )
    err.print(table)
    for row in rows:  # whole paths, after the table: a table cell would cut or fold them
        err.print(f"{row['key']}: {row['output']}", highlight=False, markup=False, soft_wrap=True)


# stats


@app.command(epilog="Example: lfqtok stats tokens/ --plot stats.png --by shard")
@_one_line_errors
def stats(
    tokens: Annotated[list[str], typer.Argument(metavar="TOKENS", show_default=False,
                                                help="Token dirs (an encode OUT) or token tar files: paths or URLs.")],
    storage_options: StorageOptions = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the statistics as JSON on stdout.", rich_help_panel=PANEL_RESULTS)] = False,
    plot: Annotated[Optional[Path], typer.Option(metavar="FILE.png", help="Write plots: code frequencies, bit balance, usage by position.", rich_help_panel=PANEL_RESULTS)] = None,
    top: Annotated[int, typer.Option(metavar="K", help="How many of the most frequent codes to list.", rich_help_panel=PANEL_RESULTS)] = 10,
    by: Annotated[Optional[str], typer.Option(metavar="shard|source", help="Also break the numbers down per shard or per source.", rich_help_panel=PANEL_RESULTS)] = None,
    failures: Annotated[Optional[Path], typer.Option(metavar="FILE.jsonl", help="Instead: write the run's failed rows or files to this .jsonl (original columns); `lfqtok encode FILE.jsonl` with the run's options retries them.", rich_help_panel=PANEL_RESULTS)] = None,
    workers: Annotated[Optional[int], typer.Option(metavar="N", show_default="cores", help="Reader processes.", rich_help_panel=PANEL_RUN)] = None,
    log_every: LogEvery = None,
) -> None:
    """Codebook utilization, entropy, perplexity, per-bit balance and code-usage histograms of token shards."""
    from .inspect.stats import token_stats
    from .io.storage import parse_options
    from .progress import StepProgress, check_log_every

    if failures is not None:
        from .inspect.failures import write_failures

        if len(tokens) != 1:
            raise UsageError("--failures reads one encode OUT")
        count = write_failures(tokens[0], failures, parse_options(storage_options))
        err.print(f"{count:,} failed row(s) written to {escape(str(failures))}", highlight=False)
        return

    check_log_every(log_every)
    with StepProgress(err, "stats", "shards", log_every) as progress:
        result = token_stats(tokens, top=top, workers=workers, by=by, plot=plot, storage_options=parse_options(storage_options),
                             on_progress=progress.update)
    if json_out:
        _print_json(result)
        return
    table = Table(title="lfqtok stats", show_header=False)
    for name in ("num_samples", "num_tokens", "codebook_size", "num_codebooks", "used_codes"):
        table.add_row(name, f"{result[name]:,}")
    table.add_row("utilization", f"{result['utilization']:.4%}")
    table.add_row("entropy", f"{result['entropy_bits']:.3f} bits (max {result['codebook_size'].bit_length() - 1})")
    table.add_row("perplexity", f"{result['perplexity']:,.1f}")
    first = "MSB" if result["bit_order"] == "msb_first" else "LSB"
    table.add_row(f"bit balance (channel 0 = {first})", " ".join(f"{b:.2f}" for b in result["bit_balance"]))
    table.add_row("top codes", ", ".join(f"{c}x{n}" for c, n in result["top"]))
    for row in result.get("per_bucket", []):
        bucket = "x".join(map(str, row["bucket"])) if row["bucket"] else "none"
        table.add_row(f"bucket {bucket}", f"{row['num_samples']:,} samples, {row['num_clips']:,} clips, {row['num_tokens']:,} tokens")
    if "scenes" in result:
        sc = result["scenes"]
        spread = lambda d: f"{d['mean']:.2f} (min {d['min']}, max {d['max']})"  # noqa: E731
        table.add_row("scenes per video", f"{spread(sc['scenes_per_video'])}; {sc['num_scenes']:,} scenes in {sc['num_videos']:,} videos")
        table.add_row("clips per scene", f"{spread(sc['clips_per_scene'])}; {sc['scenes_too_short']:,} scenes shorter than a clip")
    err.print(table)


# info


@app.command(epilog="Example: lfqtok info tokenizer.safetensors --json")
@_one_line_errors
def info(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="'default', a .safetensors checkpoint, or an Open-MAGVIT2 video .ckpt (path or URL).")] = "default",
    json_out: Annotated[bool, typer.Option("--json", help="Print as JSON on stdout.")] = False,
    storage_options: StorageOptions = None,
) -> None:
    """Describe a tokenizer: its config, codebook, bit order, sha256 and the token shape of a default clip."""
    from .tokenizers.model import load_tokenizer
    from .io.storage import parse_options

    tok = load_tokenizer(model, device="cpu", storage_options=parse_options(storage_options))
    data = {
        "name": tok.name,
        "sha256": tok.sha256,
        "codebook_size": tok.codebook_size,
        "num_codebooks": tok.num_codebooks,
        "bit_order": tok.bit_order,
        "causal": tok.causal,
        "window_frames": tok.window_frames,
        "parameters": sum(p.numel() for p in tok.parameters()),
        "token_shape_17x128x128": list(tok.token_shape(17, 128, 128)),
        "config": tok.config.to_dict(),
    }
    if json_out:
        _print_json(data)
        return
    table = Table(title=escape(f"lfqtok tokenizer {tok.name}"), show_header=False)
    for name, value in data.items():
        table.add_row(name, json.dumps(value) if isinstance(value, (dict, list)) else f"{value}")
    err.print(table)


# convert


@app.command(epilog="Example: lfqtok convert video_128.ckpt -o omv2.safetensors")
@_one_line_errors
def convert(
    checkpoint: Annotated[str, typer.Argument(metavar="CHECKPOINT", show_default=False, help="An Open-MAGVIT2 video or image tokenizer checkpoint (upstream's .ckpt; path or URL).")],
    out: Annotated[Path, typer.Option("--out", "-o", metavar="FILE", help="The lfqtok safetensors checkpoint to write.")],
    raw: Annotated[bool, typer.Option("--raw", help="Take the raw weights, not the EMA ones upstream evaluates with.")] = False,
    name: Annotated[Optional[str], typer.Option(metavar="NAME", show_default="the checkpoint's stem", help="Tokenizer name in the metadata.")] = None,
    window_frames: Annotated[int, typer.Option(metavar="N", help="Video models: the clip length they were trained on (their encode windows).")] = 17,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
    storage_options: StorageOptions = None,
) -> None:
    """Convert a foreign checkpoint once to an lfqtok safetensors checkpoint (read without running its pickle)."""
    from .tokenizers.convert import convert_checkpoint
    from .io.storage import parse_options

    summary = convert_checkpoint(checkpoint, out, raw=raw, name=name, window_frames=window_frames, storage_options=parse_options(storage_options))
    if json_out:
        _print_json(vars(summary))
        return
    table = Table(title=escape(f"lfqtok convert -> {summary.output}"), show_header=False)
    for key, value in vars(summary).items():
        table.add_row(key, json.dumps(value) if isinstance(value, (dict, list)) else f"{value}")
    err.print(table)


def main() -> None:
    """Console-script entry point."""
    app()
