"""Training: a tiny tokenizer learns on generated videos, resumes bit-exactly, writes only safetensors."""

from __future__ import annotations

import importlib.util
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner
from videos import make_video

from lfqtok.errors import InputError, UsageError
from lfqtok.tokenizers.model import TokenizerConfig, load_tokenizer
from lfqtok.training.train import StepStats, TrainConfig, load_videos, train_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]

# helpers


@pytest.fixture(scope="module")
def clips_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train_videos")
    make_video(root / "a.mp4", frames=24, width=64, height=48, fps=24)
    make_video(root / "sub" / "b.mp4", frames=12, width=64, height=64, fps=24)
    make_video(root / "short.mp4", frames=3, width=64, height=64, fps=24)  # fewer frames than one clip: skipped
    (root / "notes.txt").write_text("not a video")
    return root


def config(root: Path, out: Path, **overrides) -> TrainConfig:
    base = dict(
        inputs=(str(root),), out_dir=str(out), tokenizer=TokenizerConfig.tiny(), name="tiny-trained", steps=8,
        batch_size=2, clip_frames=5, crop=32, short_side=40, zoom=(0.8, 1.0), lr=3e-3, warmup_steps=2, checkpoint_every=4,
    )
    return TrainConfig(**{**base, **overrides})


class StopAt(Exception):
    pass


# tests


def test_tiny_model_loss_falls(clips_dir, tmp_path):
    stats: list[StepStats] = []
    result = train_tokenizer(config(clips_dir, tmp_path, steps=40, checkpoint_every=20), on_step=stats.append)
    first, last = sum(s.l1 for s in stats[:5]) / 5, sum(s.l1 for s in stats[-5:]) / 5
    assert result.steps == 40 and len(stats) == 40
    assert last < 0.8 * first
    assert [Path(p).name for p, _ in result.skipped] == ["short.mp4"]
    tok = load_tokenizer(result.tokenizer_path)  # the export is an ordinary tokenizer checkpoint
    assert tok.name == "tiny-trained" and tok.config == TokenizerConfig.tiny()


def test_trains_on_tar_shards_and_codecs_decord_cannot_read(clips_dir, tmp_path):
    with tarfile.open(tmp_path / "shard.tar", "w") as tar:  # a WebDataset shard of videos, as encode reads them
        tar.add(clips_dir / "a.mp4", arcname="s0.mp4")
        tar.add(clips_dir / "sub" / "b.mp4", arcname="s1.mp4")
    gif = make_video(tmp_path / "g" / "c.gif", frames=10, width=48, height=48, fps=10, codec="gif", pix_fmt="rgb8")
    videos, skipped = load_videos(config(tmp_path / "shard.tar", tmp_path / "out", inputs=(str(tmp_path / "shard.tar"), str(gif))))
    assert [len(v) for v in videos] == [10, 24, 12] and skipped == []  # sorted by path: g/c.gif, then the tar's
    assert [tuple(v.shape[1:]) for v in videos] == [(40, 40, 3), (40, 53, 3), (40, 40, 3)]  # short side 40
    result = train_tokenizer(config(tmp_path, tmp_path / "run", inputs=(str(tmp_path / "shard.tar"),), steps=2))
    assert result.steps == 2


def test_resume_continues_bit_exactly(clips_dir, tmp_path):
    straight = train_tokenizer(config(clips_dir, tmp_path / "a"))

    def interrupt(s: StepStats) -> None:
        if s.step == 6:  # after the step-4 checkpoint
            raise StopAt

    with pytest.raises(StopAt):
        train_tokenizer(config(clips_dir, tmp_path / "b"), on_step=interrupt)
    resumed = train_tokenizer(config(clips_dir, tmp_path / "b"))
    assert resumed.steps == 8
    assert resumed.tokenizer_path.read_bytes() == straight.tokenizer_path.read_bytes()


def test_state_is_safetensors(clips_dir, tmp_path):
    result = train_tokenizer(config(clips_dir, tmp_path, steps=2, checkpoint_every=2))
    with safe_open(str(result.state_path), framework="pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    assert meta["format"] == "lfqtok-train-state" and meta["step"] == "2"
    assert any(k.startswith("model.") for k in keys) and any(k.endswith(".exp_avg_sq") for k in keys)


def test_resume_refuses_another_model(clips_dir, tmp_path):
    train_tokenizer(config(clips_dir, tmp_path, steps=2, checkpoint_every=2))
    other = TokenizerConfig(channels=4, channel_mults=(1, 1, 2), patch_size=4, codebook_bits=6)
    with pytest.raises(UsageError, match="another tokenizer config"):
        train_tokenizer(config(clips_dir, tmp_path, tokenizer=other))


def test_input_and_config_errors(clips_dir, tmp_path):
    with pytest.raises(InputError, match="no such file"):
        train_tokenizer(config(tmp_path / "nope", tmp_path / "out"))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x.txt").write_text("no video")
    with pytest.raises(InputError, match="no usable training video"):
        train_tokenizer(config(empty, tmp_path / "out"))
    with pytest.raises(UsageError, match="clip_frames"):
        config(clips_dir, tmp_path, clip_frames=6)
    with pytest.raises(UsageError, match="crop"):
        config(clips_dir, tmp_path, crop=30)


def test_script_trains_and_exports(clips_dir, tmp_path):
    spec = importlib.util.spec_from_file_location("train_script", ROOT / "scripts" / "train_tokenizer.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    export = tmp_path / "exported.safetensors"
    args = [str(clips_dir), "--out", str(tmp_path / "run"), "--tiny", "--steps", "2", "--batch-size", "1",
            "--clip-frames", "5", "--crop", "32", "--export", str(export)]
    result = CliRunner().invoke(script.app, args)
    assert result.exit_code == 0, result.output
    assert load_tokenizer(export).config == TokenizerConfig.tiny()
    bad = CliRunner().invoke(script.app, [*args[:-2], "--clip-frames", "4"])
    assert bad.exit_code == 2 and "clip_frames" in bad.output


def test_fine_tune_starts_from_init_weights(clips_dir, tmp_path):
    base = train_tokenizer(config(clips_dir, tmp_path / "base", steps=30, checkpoint_every=30))
    fresh, tuned = [], []
    train_tokenizer(config(clips_dir, tmp_path / "fresh", steps=1), on_step=fresh.append)
    train_tokenizer(config(clips_dir, tmp_path / "tuned", steps=1, init_from=str(base.tokenizer_path)), on_step=tuned.append)
    assert tuned[0].step == 1  # a fresh schedule and optimizer, not a resume of the base run
    assert tuned[0].l1 < 0.8 * fresh[0].l1  # the same first batch, reconstructed by the trained weights
    other = TokenizerConfig(channels=4, channel_mults=(1, 1, 2), patch_size=4, codebook_bits=6)
    with pytest.raises(UsageError, match="init_from"):
        train_tokenizer(config(clips_dir, tmp_path / "other", tokenizer=other, init_from=str(base.tokenizer_path)))


def test_mse_weight_sets_the_reconstruction_loss(clips_dir, tmp_path):
    stats: list[StepStats] = []
    train_tokenizer(config(clips_dir, tmp_path, steps=2, l1_weight=0.0, mse_weight=2.0), on_step=stats.append)
    for s in stats:
        assert s.loss == pytest.approx(2.0 * s.mse + s.aux, rel=1e-5, abs=1e-6)
    with pytest.raises(UsageError, match="l1_weight and mse_weight"):
        config(clips_dir, tmp_path, l1_weight=0.0, mse_weight=0.0)


# levers of the v2 default: frames, losses, photos, growth, weight average


def test_training_frames_are_the_frames_encode_tokenizes(clips_dir):
    from lfqtok.training.train import decode_video
    from lfqtok.pipeline.video import ClipSpec, iter_clips

    for video in (clips_dir / "a.mp4", clips_dir / "sub" / "b.mp4"):
        frames = decode_video(str(video), 40, None).numpy()  # what training stores at short side 40
        _, clips = iter_clips(str(video), ClipSpec(size=40, clip_frames=5, max_clips=2))
        top, left = (frames.shape[1] - 40) // 2, (frames.shape[2] - 40) // 2
        for i, clip in enumerate(clips):
            np.testing.assert_array_equal(frames[5 * i : 5 * i + 5, top : top + 40, left : left + 40], clip.frames)


def test_chroma_and_lowpass_weights_shape_the_loss():
    from lfqtok.training.train import reconstruction_loss

    x = torch.zeros(1, 3, 1, 16, 16)
    grey = torch.full_like(x, 0.1)  # the same error on R, G and B: luma only
    tint = x.clone()
    tint[:, 2] = 0.1  # blue only: mostly chroma (Cb)
    rgb = config(Path("."), Path("."))
    ycc = config(Path("."), Path("."), chroma_weight=4.0)
    def tint_vs_grey(cfg: TrainConfig) -> float:
        return float(reconstruction_loss(tint, x, cfg, 8)[0] / reconstruction_loss(grey, x, cfg, 8)[0])

    assert tint_vs_grey(ycc) > 3 * tint_vs_grey(rgb)  # a colour error now costs more than a brightness error
    noise = torch.where(torch.arange(256).view(1, 1, 1, 16, 16) % 2 == 0, 0.1, -0.1).expand(1, 3, 1, 16, 16)
    lowpass = config(Path("."), Path("."), lowpass_weight=10.0)
    assert reconstruction_loss(noise, x, lowpass, 8)[0] == pytest.approx(reconstruction_loss(noise, x, rgb, 8)[0])  # zero-mean blocks
    level_shift = reconstruction_loss(grey, x, lowpass, 8)[0] - reconstruction_loss(grey, x, rgb, 8)[0]
    assert float(level_shift) == pytest.approx(10.0 * 0.1**2, rel=1e-5)  # the block means are all off by 0.1


def test_photo_clips_are_camera_moves_over_the_still(clips_dir, tmp_path):
    from PIL import Image

    from lfqtok.training.train import ClipSampler, load_photos

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    cfg = config(clips_dir, tmp_path / "out", photos=(str(tmp_path),), photo_fraction=1.0, batch_size=8)
    photos, skipped = load_photos(cfg)
    assert [tuple(p.shape) for p in photos] == [(1, 40, 60, 3)] and skipped == []
    batch = ClipSampler([torch.zeros(10, 40, 40, 3, dtype=torch.uint8)], cfg, photos).batch(0)
    assert tuple(batch.shape) == (8, 3, 5, 32, 32) and batch.abs().max() <= 1
    moving = [(clip[:, 0] - clip[:, -1]).abs().mean() > 0.05 for clip in batch]
    assert any(moving)  # most clips move (pan, zoom, rotation), a quarter stand still
    assert all(clip.std() > 0.2 for clip in batch)  # every frame shows the photo, never the empty border
    with pytest.raises(UsageError, match="photo_fraction"):
        config(clips_dir, tmp_path, photo_fraction=0.5)


def test_a_grown_model_starts_as_the_checkpoint_it_grew_from(clips_dir, tmp_path):
    base = train_tokenizer(config(clips_dir, tmp_path / "base", steps=4, checkpoint_every=4))
    grown = TokenizerConfig(**{**TokenizerConfig.tiny().to_dict(), "num_res_blocks": 2, "decoder_res_blocks": 3, "decoder_base": True})
    stats: dict[str, list[StepStats]] = {"base": [], "grown": []}
    train_tokenizer(config(clips_dir, tmp_path / "a", steps=1, init_from=str(base.tokenizer_path)), on_step=stats["base"].append)
    train_tokenizer(config(clips_dir, tmp_path / "b", steps=1, init_from=str(base.tokenizer_path), tokenizer=grown),
                    on_step=stats["grown"].append)
    assert stats["grown"][0].l1 == pytest.approx(stats["base"][0].l1, rel=1e-5)  # the same function on the same batch
    shrunk = TokenizerConfig(**{**TokenizerConfig.tiny().to_dict(), "decoder_res_blocks": 1})
    grown_run = train_tokenizer(config(clips_dir, tmp_path / "c", steps=1, tokenizer=grown))
    with pytest.raises(UsageError, match="fewer residual blocks"):
        train_tokenizer(config(clips_dir, tmp_path / "d", steps=1, tokenizer=shrunk, init_from=str(grown_run.tokenizer_path)))


def test_ema_export_is_the_average_and_resumes(clips_dir, tmp_path):
    plain = train_tokenizer(config(clips_dir, tmp_path / "plain"))
    averaged = train_tokenizer(config(clips_dir, tmp_path / "ema", ema_decay=0.9))
    a, b = load_tokenizer(plain.tokenizer_path).state_dict(), load_tokenizer(averaged.tokenizer_path).state_dict()
    assert not torch.equal(a["decoder.conv_in.conv.weight"], b["decoder.conv_in.conv.weight"])

    def interrupt(s: StepStats) -> None:
        if s.step == 6:
            raise StopAt

    with pytest.raises(StopAt):
        train_tokenizer(config(clips_dir, tmp_path / "ema2", ema_decay=0.9), on_step=interrupt)
    resumed = train_tokenizer(config(clips_dir, tmp_path / "ema2", ema_decay=0.9))
    assert resumed.tokenizer_path.read_bytes() == averaged.tokenizer_path.read_bytes()
