"""Open-MAGVIT2 video tokenizers: upstream's golden vectors, the released layout, general configs, convert and load."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

import lfqtok
from lfqtok.tokenizers.convert import convert_checkpoint, load_checkpoint
from lfqtok.errors import ModelError, UsageError
from lfqtok.tokenizers.open_magvit2 import OpenMagvit2Config, OpenMagvit2Tokenizer, dotless, pixels_to_unit, plan_weights, unit_to_pixels

pytestmark = pytest.mark.usefixtures("one_thread")

RELEASED = OpenMagvit2Config()  # video_128_262144: ch 128, ch_mult (1, 2, 2, 4), 4 res blocks, z 18


def meta_model(config: OpenMagvit2Config) -> OpenMagvit2Tokenizer:
    with torch.device("meta"):
        return OpenMagvit2Tokenizer(config)


def random_model(config: OpenMagvit2Config, seed: int = 0) -> OpenMagvit2Tokenizer:
    """Every parameter random (norm gains and biases too), as the golden vectors were made."""
    torch.manual_seed(seed)
    tok = OpenMagvit2Tokenizer(config).eval()
    with torch.no_grad():
        for p in tok.parameters():
            p.copy_(torch.randn_like(p) / p[0].numel() ** 0.5)  # fan-in scaled; gains, biases N(0, 1)
    return tok


@pytest.fixture(scope="module")
def golden(omv2_golden):
    return {
        "ckpt": omv2_golden / "video_small.ckpt",
        "clips": torch.from_numpy(np.load(omv2_golden / "clips.npy")),
        **dict(np.load(omv2_golden / "expected.npz")),
    }


@pytest.fixture(scope="module")
def small(golden):
    return load_checkpoint(golden["ckpt"])


# upstream's numbers


def test_indices_match_upstream_wherever_the_latent_is_not_near_zero(small, golden):
    ids = small.encode(golden["clips"]).numpy()
    sure = np.abs(golden["latents"]).min(axis=1) > 1e-4  # (B, t, h, w)
    assert ids.shape == golden["indices"].shape == (2, 5, 8, 8)
    assert sure.mean() > 0.9 and np.array_equal(ids[sure], golden["indices"][sure])


def test_latents_match_upstream(small, golden):
    with torch.inference_mode():
        z = small.encoder(pixels_to_unit(golden["clips"])).numpy()
    assert np.abs(z - golden["latents"]).max() < 1e-4


def test_decoded_output_matches_upstream_from_the_same_indices(small, golden):
    ids = torch.from_numpy(golden["indices"])
    with torch.inference_mode():
        x = small.decoder(small.indices_to_codes(ids)).numpy()
    assert x.shape == golden["decoded"].shape == (2, 3, 17, 64, 64)
    assert np.abs(x - golden["decoded"]).max() < 1e-4
    video = small.decode(ids)  # the public path: clamped and mapped to uint8 as upstream maps it
    want = unit_to_pixels(torch.from_numpy(golden["decoded"]))
    assert video.dtype == torch.uint8 and (video.int() - want.int()).abs().max() <= 1


def test_ids_are_lsb_first_and_code_zero_is_minus_one(small):
    z = torch.full((1, 18, 1, 1, 1), -1.0)
    z[0, [0, 3]] = 0.5  # channels 0 and 3 positive
    assert small.latents_to_indices(z).item() == 0b1001
    codes = small.indices_to_codes(torch.tensor([[[[0b1001]]]]))[0, :, 0, 0, 0]
    assert codes.tolist() == [1.0, -1.0, -1.0, 1.0] + [-1.0] * 14
    assert small.bit_order == "lsb_first" and small.causal is False and small.window_frames == 17


def test_ema_weights_are_used_and_raw_ones_on_request(small, golden):
    raw = load_checkpoint(golden["ckpt"], raw=True)  # the golden raw weights are all zeros
    assert (small.config.weights, raw.config.weights) == ("ema", "raw")
    assert all(not p.any() for p in raw.parameters()) and any(p.any() for p in small.parameters())


# the released layout and general configs


def test_released_layout_matches_upstreams_published_sizes():
    tok = meta_model(RELEASED)
    shapes = {k: tuple(v.shape) for k, v in tok.state_dict().items()}
    assert sum(p.numel() for p in tok.encoder.parameters()) == 144_865_298  # "encoder ~145 M"
    assert sum(p.numel() for p in tok.decoder.parameters()) == 225_682_051  # "decoder ~226 M"
    # raw + EMA fp32 copies of 370.5 M parameters: the 2.96 GB of video_128_262144.ckpt
    assert shapes["encoder.conv_in.conv_1.weight"] == (128, 3, 3, 3, 3)
    assert shapes["encoder.down.0.downsample.conv_1.weight"] == (128, 128, 3, 3, 3)
    assert shapes["encoder.down.1.block.0.nin_shortcut.conv_1.weight"] == (256, 128, 1, 1, 1)
    assert shapes["encoder.down.3.block.0.conv1.conv_1.weight"] == (512, 256, 3, 3, 3)
    assert "encoder.down.3.downsample.conv_1.weight" not in shapes
    assert shapes["encoder.mid_block.3.conv2.conv_1.weight"] == (512, 512, 3, 3, 3)
    assert shapes["encoder.conv_out.conv_1.weight"] == (18, 512, 1, 1, 1)
    assert shapes["decoder.conv_in.conv_1.weight"] == (512, 18, 3, 3, 3)
    assert shapes["decoder.up.3.upsample.conv1.conv_1.weight"] == (512 * 8, 512, 3, 3, 3)  # time and space
    assert shapes["decoder.up.1.upsample.conv1.conv_1.weight"] == (256 * 4, 256, 3, 3, 3)  # space only (ch_mult[0] == 1)
    assert shapes["decoder.adaptive.3.gamma.weight"] == (512, 18)
    assert shapes["decoder.adaptive.0.beta.weight"] == (256, 18)
    assert shapes["decoder.up.0.block.0.nin_shortcut.conv_1.weight"] == (128, 256, 1, 1, 1)
    assert shapes["decoder.conv_out.conv_1.weight"] == (3, 128, 3, 3, 3)
    assert "encoder.conv_in.conv_1.bias" not in shapes and "encoder.down.0.block.0.conv1.conv_1.bias" not in shapes
    assert tok.token_shape(17, 128, 128) == (5, 16, 16)


def synthetic_checkpoint(config: OpenMagvit2Config) -> dict[str, tuple[int, ...]]:
    """name -> shape of an upstream Lightning state dict: raw, EMA (dotless), discriminator, EMA bookkeeping."""
    own = {k: tuple(v.shape) for k, v in meta_model(config).state_dict().items()}
    disc = {"loss.discriminator.main.0.weight": (64, 3, 4, 4, 4), "loss.discriminator.main.0.bias": (64,)}
    return {**own, **{f"model_ema.{dotless(k)}": s for k, s in {**own, **disc}.items()}, **disc,
            "model_ema.decay": (), "model_ema.num_updates": ()}


@pytest.mark.parametrize("config", [
    RELEASED,
    OpenMagvit2Config(ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=1),
    OpenMagvit2Config(ch=64, ch_mult=(1, 2, 4), num_res_blocks=2, z_channels=10, window_frames=9),
    OpenMagvit2Config(ch=32, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=3),
])
def test_the_config_is_inferred_from_tensor_shapes(config):
    inferred, plan = plan_weights(synthetic_checkpoint(config), "synthetic")
    assert replace(inferred, window_frames=config.window_frames) == config
    assert plan["encoder.down.0.block.0.norm1.weight"] == "model_ema.encoderdown0block0norm1weight"
    assert not any("discriminator" in v for v in plan.values())
    raw, raw_plan = plan_weights(synthetic_checkpoint(config), "synthetic", raw=True)
    assert raw.weights == "raw" and all(k == v for k, v in raw_plan.items())


@pytest.mark.parametrize("ch_mult, spatial, temporal", [
    ((1, 2), 2, 1), ((1, 2, 4), 4, 2), ((2, 2, 4), 4, 4), ((1, 1, 2, 2), 8, 2), ((1, 2, 1, 2), 8, 2), ((1, 1, 2, 2, 4), 16, 4),
])
def test_general_configs_place_time_resampling_where_ch_mult_is_not_one(ch_mult, spatial, temporal):
    tok = random_model(OpenMagvit2Config(ch=32, ch_mult=ch_mult, num_res_blocks=1, z_channels=6, window_frames=1 + temporal))
    c = tok.config
    assert (c.spatial_compression, c.temporal_compression) == (spatial, temporal)
    frames, size = 1 + 2 * temporal, 2 * spatial
    video = torch.randint(0, 256, (2, frames, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ids = tok.encode(video)
    assert tuple(ids.shape) == (2, *tok.token_shape(frames, size, size)) == (2, 3, 2, 2)
    assert tuple(tok.decode(ids).shape) == (2, frames, size, size, 3)
    assert tuple(tok.decode(ids[:, :1]).shape) == (2, 1, size, size, 3)  # one latent frame -> one frame


def test_not_causal_the_first_tokens_see_the_last_frame():
    tok = random_model(OpenMagvit2Config(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=16, window_frames=9))
    video = torch.randint(0, 256, (1, 9, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    changed = video.clone()
    changed[:, -1] = 255 - changed[:, -1]
    with torch.inference_mode():
        a, b = (tok.encoder(pixels_to_unit(v)) for v in (video, changed))
    assert not torch.allclose(a[:, :, 0], b[:, :, 0])  # GroupNorm statistics span the whole clip


@pytest.mark.parametrize("frames, height, width", [(16, 64, 64), (17, 60, 64), (0, 64, 64)])
def test_bad_shapes_and_ids_are_one_line_errors(small, frames, height, width):
    with pytest.raises(UsageError, match="1 \\+ 4k|multiples of 8"):
        small.encode(torch.zeros(1, frames, height, width, 3, dtype=torch.uint8))
    with pytest.raises(ModelError, match="262144 codes"):
        small.decode(torch.full((1, 1, 1, 1), 2**18))
    with pytest.raises(UsageError, match="integer ids"):
        small.decode(torch.zeros(1, 1, 1, 1, 1, dtype=torch.int64))


# convert and load_tokenizer


def test_convert_writes_once_a_file_that_loads_to_the_same_model(tmp_path, small, golden):
    summary = convert_checkpoint(golden["ckpt"], tmp_path / "small.safetensors")
    assert summary.weights == "ema" and summary.tensors_used == 101 and summary.tensors_ignored > 0
    assert summary.ignored_pickle_classes == ["lightning.fabric.utilities.data.AttributeDict"]
    data = (tmp_path / "small.safetensors").read_bytes()
    convert_checkpoint(golden["ckpt"], tmp_path / "again.safetensors")
    assert (tmp_path / "again.safetensors").read_bytes() == data  # stable bytes, stable sha256
    tok = lfqtok.load_tokenizer(tmp_path / "small.safetensors")
    assert tok.sha256 == summary.sha256 == hashlib.sha256(data).hexdigest() == small.sha256
    assert tok.name == "video_small" and tok.config == small.config
    assert torch.equal(tok.encode(golden["clips"]), small.encode(golden["clips"]))
    meta = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])["__metadata__"]
    assert meta["family"] == "open-magvit2-video" and json.loads(meta["lfqtok_config"])["ch_mult"] == [1, 2, 2, 2]


def test_load_tokenizer_recognizes_the_ckpt_by_its_contents(tmp_path, golden):
    path = tmp_path / "no_suffix"
    path.write_bytes(golden["ckpt"].read_bytes())
    tok = lfqtok.load_tokenizer(str(path))
    assert isinstance(tok, OpenMagvit2Tokenizer) and tok.name == "no_suffix"


def test_files_of_other_kinds_get_one_line(tmp_path, model):
    (tmp_path / "junk.ckpt").write_bytes(b"\x00" * 100)
    (tmp_path / "legacy.pt").write_bytes(b"\x80\x02" + b"\x00" * 100)
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "resnet.ckpt")
    cases = [
        ("junk.ckpt", "not a safetensors file"),
        ("legacy.pt", "legacy"),
        ("resnet.ckpt", "not an Open-MAGVIT2 tokenizer"),
    ]
    for name, message in cases:
        with pytest.raises(ModelError, match=message) as err:
            lfqtok.load_tokenizer(tmp_path / name)
        assert "\n" not in str(err.value)
    with pytest.raises(ModelError, match="already"):
        convert_checkpoint(model, tmp_path / "x.safetensors")


def test_a_converted_file_with_foreign_tensors_or_family_is_refused(tmp_path, small):
    from safetensors.torch import save_file

    meta = {"format": "lfqtok-tokenizer", "family": "open-magvit2-video", "name": "x",
            "lfqtok_config": json.dumps(small.config.to_dict())}
    save_file({"encoder.conv_in.conv_1.weight": torch.zeros(1)}, tmp_path / "bad.safetensors", metadata=meta)
    with pytest.raises(ModelError, match="do not match"):
        lfqtok.load_tokenizer(tmp_path / "bad.safetensors")
    save_file({"a": torch.zeros(1)}, tmp_path / "future.safetensors", metadata={**meta, "family": "cosmos"})
    with pytest.raises(ModelError, match="family 'cosmos'"):
        lfqtok.load_tokenizer(tmp_path / "future.safetensors")


# the pipeline: windows, manifest, decode and stats honour the bit order


@pytest.fixture(scope="module")
def omv2_file(tmp_path_factory) -> str:
    """A small random Open-MAGVIT2 video tokenizer (2^18 codes) as the lfqtok checkpoint `convert` writes."""
    from lfqtok.tokenizers.open_magvit2 import save

    path = tmp_path_factory.mktemp("omv2") / "omv2.safetensors"
    save(random_model(OpenMagvit2Config(ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=1)), path)
    return str(path)


@pytest.fixture(scope="module")
def omv2_tokens(tmp_path_factory, omv2_file):
    from videos import make_video

    root = tmp_path_factory.mktemp("omv2_tokens")
    video = make_video(root / "v.mp4", frames=40, width=48, height=40, fps=12)
    out = root / "tok"
    lfqtok.encode_dataset([str(video)], out, model=omv2_file, size=32, workers=0, batch_size=2, device="cpu")
    return video, out


def test_encode_writes_lsb_first_window_tokens_and_says_so(omv2_file, omv2_tokens):
    from lfqtok.pipeline.video import ClipSpec, iter_clips

    video, out = omv2_tokens
    manifest = json.loads((out / "lfqtok.json").read_text())
    assert manifest["bit_order"] == "lsb_first" and manifest["causal"] is False and manifest["window_frames"] == 17
    assert manifest["clip_frames"] == 17 and manifest["token_shape"] == [5, 4, 4] and manifest["token_dtype"] == "uint32"
    assert manifest["tokenizer"]["config"]["family"] == "open-magvit2-video"
    [(key, tokens, meta)] = list(lfqtok.read_tokens(out))
    _, clips = iter_clips(str(video), ClipSpec(size=32, clip_frames=17))
    frames = torch.from_numpy(np.stack([c.frames for c in clips]))  # two independent 17-frame windows
    tok = lfqtok.load_tokenizer(omv2_file)
    assert tokens.shape == (2, 5, 4, 4) and meta["clips"] == [[0, 17], [17, 34]]
    assert np.array_equal(tokens.astype(np.int64), tok.encode(frames).numpy())


def test_encode_refuses_another_clip_length_for_a_windowed_model(tmp_path, omv2_file, omv2_tokens):
    video, _ = omv2_tokens
    with pytest.raises(UsageError, match="not causal.*--clip-frames must be 17, got 9"):
        lfqtok.encode_dataset([str(video)], tmp_path / "tok", model=omv2_file, size=32, clip_frames=9, workers=0, device="cpu")


def test_decode_and_stats_of_lsb_first_tokens(tmp_path, omv2_tokens):
    _, out = omv2_tokens
    [row] = lfqtok.decode_samples([out], tmp_path / "previews", fmt="png", device="cpu")
    assert row["clips"] == 2 and row["frames"] == 34 and row["psnr"] is not None and row["note"] is None
    report = lfqtok.token_stats([out])
    assert report["bit_order"] == "lsb_first" and len(report["bit_balance"]) == 18


def test_decode_reorders_ids_whose_manifest_names_the_other_bit_order(omv2_file):
    from lfqtok.inspect.decode import Sample, to_bit_order

    tok = lfqtok.load_tokenizer(omv2_file)
    msb = np.array([[[[1 << 17, 1, 3]]]], dtype=np.uint32)  # channel 0, channel 17, channels 16 and 17 (MSB first)
    sample = Sample("k", msb.copy(), {}, {"bit_order": "msb_first"})
    assert "msb_first" in to_bit_order(sample, tok)
    assert sample.tokens.tolist() == [[[[1, 1 << 17, 3 << 16]]]] and sample.tokens.dtype == np.uint32
    same = Sample("k", msb.copy(), {}, {"bit_order": "lsb_first"})
    assert to_bit_order(same, tok) is None and np.array_equal(same.tokens, msb)


def test_cli_convert_info_encode_and_decode_with_the_ckpt(tmp_path, golden, omv2_tokens):
    from typer.testing import CliRunner

    from lfqtok.cli import app

    runner = CliRunner()
    out = tmp_path / "small.safetensors"
    result = runner.invoke(app, ["convert", str(golden["ckpt"]), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["weights"] == "ema" and out.is_file()
    for model in (str(golden["ckpt"]), str(out)):
        result = runner.invoke(app, ["info", model, "--json"])
        assert result.exit_code == 0, result.output
        info = json.loads(result.stdout)
        assert info["bit_order"] == "lsb_first" and info["window_frames"] == 17 and info["causal"] is False
        assert info["token_shape_17x128x128"] == [5, 16, 16] and info["parameters"] == 4_368_373
    video = omv2_tokens[0]
    tokens = tmp_path / "tokens"
    result = runner.invoke(app, ["encode", str(video), "-o", str(tokens), "--model", str(golden["ckpt"]), "--size", "32",
                                 "--workers", "0", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["clips"] == 2
    result = runner.invoke(app, ["decode", str(tokens), "-o", str(tmp_path / "previews"), "--format", "gif", "--device", "cpu",
                                 "--json"])
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)
    assert row["frames"] == 34 and row["note"] is None  # the manifest's .ckpt, checked by sha256
    result = runner.invoke(app, ["encode", str(video), "-o", str(tmp_path / "t9"), "--model", str(out), "--size", "32",
                                 "--clip-frames", "9", "--workers", "0", "--device", "cpu"])
    assert result.exit_code == 2 and "--clip-frames must be 17" in result.stderr
    (tmp_path / "cut.ckpt").write_bytes(golden["ckpt"].read_bytes()[:1000])
    for bad in (tmp_path / "cut.ckpt", out):
        result = runner.invoke(app, ["convert", str(bad), "-o", str(tmp_path / "x.safetensors")])
        assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1, result.output


# image tokenizers (upstream's 2D models) as per-frame models

IMAGE_256 = OpenMagvit2Config(ch_mult=(1, 1, 2, 2, 4), window_frames=None, image=True)  # imagenet_256_L / pretrain256_262144


def upstream_image_checkpoint(config: OpenMagvit2Config) -> dict[str, tuple[int, ...]]:
    """name -> shape of an upstream 2D image Lightning state dict: names without `.conv_1`, 4-d convs, raw + EMA."""
    from lfqtok.tokenizers.open_magvit2 import upstream_name, upstream_shape

    own = {upstream_name(k, True): upstream_shape(tuple(v.shape), True) for k, v in meta_model(config).state_dict().items()}
    return {**own, **{f"model_ema.{dotless(k)}": s for k, s in own.items()}, "model_ema.decay": ()}


def test_image_layout_is_inferred_and_matches_the_published_file_size():
    shapes = upstream_image_checkpoint(IMAGE_256)
    assert shapes["encoder.conv_in.weight"] == (128, 3, 3, 3) and "encoder.conv_in.conv_1.weight" not in shapes
    config, plan = plan_weights(shapes, "synthetic")
    assert config == IMAGE_256 and plan["decoder.up.1.upsample.conv1.conv_1.weight"] == "model_ema.decoderup1upsampleconv1weight"
    tok = meta_model(config)
    params = sum(p.numel() for p in tok.parameters())
    assert params == 115_127_829 and round(params * 8 / 1e6) == 921  # raw + EMA fp32: the 921 MB of imagenet_256_L.ckpt
    assert (config.spatial_compression, config.temporal_compression, tok.causal, tok.window_frames) == (16, 1, True, None)
    assert tok.token_shape(17, 256, 256) == (17, 16, 16) and config.to_dict()["family"] == "open-magvit2-image"


def test_an_image_model_tokenizes_every_frame_on_its_own(tmp_path):
    from lfqtok.tokenizers.open_magvit2 import save

    tok = random_model(OpenMagvit2Config(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=12, window_frames=None, image=True))
    video = torch.randint(0, 256, (2, 3, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    ids = tok.encode(video)
    assert ids.shape == (2, 3, 4, 4)
    alone = torch.stack([tok.encode(video[:, i : i + 1])[:, 0] for i in range(3)], dim=1)
    assert torch.equal(ids, alone)
    rec = tok.decode(ids)
    assert rec.shape == video.shape and torch.equal(rec[:, 1:2], tok.decode(ids[:, 1:2]))
    save(tok, tmp_path / "image.safetensors")
    loaded = lfqtok.load_tokenizer(tmp_path / "image.safetensors")
    assert loaded.config == tok.config and torch.equal(loaded.encode(video), ids) and loaded.sha256 == tok.sha256


def test_encode_with_an_image_model_writes_causal_per_frame_tokens(tmp_path, omv2_tokens):
    from lfqtok.tokenizers.open_magvit2 import save

    video, _ = omv2_tokens
    tok = random_model(OpenMagvit2Config(ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=1, window_frames=None, image=True))
    save(tok, tmp_path / "image.safetensors")
    out = tmp_path / "tok"
    lfqtok.encode_dataset([str(video)], out, model=str(tmp_path / "image.safetensors"), size=32, clip_frames=1, max_clips=5,
                          workers=0, device="cpu")
    manifest = json.loads((out / "lfqtok.json").read_text())
    assert manifest["bit_order"] == "lsb_first" and "causal" not in manifest and manifest["token_shape"] == [1, 4, 4]
    [(_, tokens, meta)] = list(lfqtok.read_tokens(out))
    assert tokens.shape == (5, 1, 4, 4) and meta["clips"] == [[0, 1], [1, 2], [2, 3], [3, 4], [4, 5]]
