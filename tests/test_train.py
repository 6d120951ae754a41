"""Training: a tiny tokenizer learns on generated videos, resumes bit-exactly, writes only safetensors."""

from __future__ import annotations

import importlib.util
import tarfile
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner
from videos import make_video

from lfqtok.errors import InputError, UsageError
from lfqtok.model import TokenizerConfig, load_tokenizer
from lfqtok.train import StepStats, TrainConfig, load_videos, train_tokenizer

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
