"""Train an lfqtok tokenizer on videos: `python scripts/train_tokenizer.py INPUT... --out runs/x [--device cuda]` (INPUT as for encode).

Resumes from OUT/last.safetensors when it exists; `--export` copies the final inference weights somewhere
(e.g. lfqtok/tokenizers/weights/default.safetensors). Progress on stderr, one log line every --log-every steps.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Annotated, Optional

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from lfqtok.errors import LfqtokError  # noqa: E402
from lfqtok.tokenizers.model import TokenizerConfig  # noqa: E402
from lfqtok.training.train import StepStats, TrainConfig, train_tokenizer  # noqa: E402

app = typer.Typer(add_completion=False)


@app.command()
def main(
    inputs: Annotated[list[str], typer.Argument(help="video files, directories (recursive), @lists or WebDataset tar shards of videos")],
    out: Annotated[Path, typer.Option("--out", "-o", help="run directory: last.safetensors, tokenizer.safetensors")],
    steps: Annotated[int, typer.Option(help="optimizer steps (end of the LR schedule)")] = 4000,
    max_minutes: Annotated[Optional[float], typer.Option(help="wall-clock budget; the schedule ends at steps or time")] = None,
    batch_size: Annotated[int, typer.Option(help="clips per step")] = 8,
    clip_frames: Annotated[int, typer.Option(help="frames per training clip, 1 + 4k")] = 9,
    crop: Annotated[int, typer.Option(help="square crop size in pixels")] = 64,
    lr: Annotated[float, typer.Option(help="peak learning rate (AdamW)")] = 2e-3,
    l1_weight: Annotated[float, typer.Option(help="weight of the L1 reconstruction loss")] = 1.0,
    mse_weight: Annotated[float, typer.Option(help="weight of the MSE reconstruction loss (what PSNR measures)")] = 0.0,
    chroma_weight: Annotated[Optional[float], typer.Option(help="losses on YCbCr, Cb/Cr errors weighted this much vs Y (unset: RGB)")] = None,
    lowpass_weight: Annotated[float, typer.Option(help="weight of the MSE of 8x8 block means (colour and level)")] = 0.0,
    photos: Annotated[Optional[list[Path]], typer.Option(help="still images or folders of them: clips of synthetic camera moves")] = None,
    photo_fraction: Annotated[float, typer.Option(help="share of clips cut from --photos")] = 0.0,
    ema_decay: Annotated[Optional[float], typer.Option(help="export an exponential moving average of the weights")] = None,
    short_side: Annotated[int, typer.Option(help="videos are decoded once at this short side")] = 160,
    zoom: Annotated[str, typer.Option(help="random zoom range of the stored frames before cropping, LO,HI")] = "0.6,1.0",
    init_from: Annotated[Optional[str], typer.Option(help="fine-tune: start from this tokenizer ('default' or a .safetensors)")] = None,
    channels: Annotated[int, typer.Option(help="base channels of the tokenizer")] = TokenizerConfig.channels,
    channel_mults: Annotated[str, typer.Option(help="comma-separated channel multipliers, one per level")] = "1,2,4",
    codebook_bits: Annotated[int, typer.Option(help="LFQ bits: 2^bits codes")] = TokenizerConfig.codebook_bits,
    num_res_blocks: Annotated[int, typer.Option(help="residual blocks per encoder level")] = TokenizerConfig.num_res_blocks,
    decoder_res_blocks: Annotated[Optional[int], typer.Option(help="residual blocks per decoder level (unset: as the encoder)")] = None,
    decoder_expansion: Annotated[int, typer.Option(help="inner width multiplier of decoder residual blocks")] = 1,
    decoder_base: Annotated[bool, typer.Option(help="decoder adds a bilinearly upsampled RGB base")] = False,
    chroma_bits: Annotated[int, typer.Option(help="bits per token from a colour-only encoder head")] = 0,
    tiny: Annotated[bool, typer.Option(help="use TokenizerConfig.tiny() (tests, smoke runs)")] = False,
    max_frames_per_video: Annotated[Optional[int], typer.Option(help="decode at most this many frames per video")] = None,
    name: Annotated[str, typer.Option(help="name stored in the exported checkpoint")] = "lfqtok-default",
    device: Annotated[str, typer.Option(help="cpu | cuda | cuda:N")] = "cpu",
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for torch (1 is fastest on a busy shared CPU)")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    checkpoint_every: Annotated[int, typer.Option(help="steps between checkpoints")] = 200,
    log_every: Annotated[int, typer.Option(help="steps between log lines")] = 50,
    resume: Annotated[bool, typer.Option(help="continue from OUT/last.safetensors when present")] = True,
    export: Annotated[Optional[Path], typer.Option(help="copy the final tokenizer.safetensors here")] = None,
) -> None:
    console = Console(stderr=True)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        mults = tuple(int(m) for m in channel_mults.split(","))
        zoom_range = tuple(float(z) for z in zoom.split(","))
    except ValueError:
        console.print(f"error: --channel-mults and --zoom must be comma-separated numbers, got {channel_mults!r}, {zoom!r}")
        raise typer.Exit(2) from None
    try:
        arch = dict(num_res_blocks=num_res_blocks, decoder_res_blocks=decoder_res_blocks, decoder_expansion=decoder_expansion, decoder_base=decoder_base,
                    chroma_bits=chroma_bits)
        tok_cfg = TokenizerConfig(**{**TokenizerConfig.tiny().to_dict(), **arch}) if tiny else TokenizerConfig(
            channels=channels, channel_mults=mults, codebook_bits=codebook_bits, **arch)
        config = TrainConfig(
            inputs=tuple(inputs), out_dir=str(out), tokenizer=tok_cfg, name=name, steps=steps, max_minutes=max_minutes,
            batch_size=batch_size, clip_frames=clip_frames, crop=crop, lr=lr, seed=seed, device=device,
            l1_weight=l1_weight, mse_weight=mse_weight, init_from=init_from, chroma_weight=chroma_weight,
            lowpass_weight=lowpass_weight, photos=tuple(map(str, photos or ())), photo_fraction=photo_fraction,
            ema_decay=ema_decay, short_side=short_side, zoom=zoom_range,
            checkpoint_every=checkpoint_every, max_frames_per_video=max_frames_per_video,
        )
        columns = (TextColumn("[bold]train"), BarColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("train", total=1.0, info="decoding videos")

            first_step: list[int] = []  # the step a resumed run starts from, for steps/s

            def on_step(s: StepStats) -> None:
                first_step[:] = first_step or [s.step - 1]
                info = f"step {s.step} loss {s.loss:.4f} psnr {s.psnr:.2f} dB lr {s.lr:.2e}"
                progress.update(task, completed=s.progress, info=info)
                if s.step % log_every == 0:
                    progress.console.log(f"{info} l1 {s.l1:.4f} mse {s.mse:.4f} aux {s.aux:.4f} {(s.step - first_step[0]) / max(s.seconds, 1e-9):.2f} steps/s")

            result = train_tokenizer(config, on_step=on_step, resume=resume)
    except LfqtokError as exc:
        console.print(f"error: {exc}")
        raise typer.Exit(exc.exit_code) from None
    for path, reason in result.skipped:
        console.print(f"skipped {path}: {reason}")
    console.print(f"done: {result.steps} steps in {result.seconds / 60:.1f} min, loss {result.loss:.4f}, psnr {result.psnr:.2f} dB -> {result.tokenizer_path}")
    if export is not None:
        export.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(result.tokenizer_path, export)
        console.print(f"exported {export}")


if __name__ == "__main__":
    app()
