"""Frame shapes: --size HxW, --resize crop|pad|fit and --buckets end to end with a tiny tokenizer (token shapes,
sample json, manifest, decode at the valid region, stats per bucket, resume checks), the geometry itself, tokens
equal to the Python API's encode of frames resized the documented way, and `--size S` outputs unchanged."""

import json
import math
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import lfqtok
from lfqtok.pipeline.batch import ClipBatcher
from lfqtok.cli import app
from lfqtok.errors import OutputError, UsageError
from lfqtok.tokenizers.model import load_tokenizer
from lfqtok.pipeline.shapes import PAD_FILL, Shapes, layout, nearest_bucket, place, preset_buckets
from lfqtok.io.shards import read_manifest, read_tokens
from lfqtok.inspect.decode import SHEET_MARGIN, SHEET_MIN_WIDTH
from lfqtok.pipeline.video import ClipSpec, image_scaled_size, iter_clips, resize_image
from videos import make_video

LEGACY_SAMPLE_KEYS = ["source", "frame_indices", "clips", "padded_frames", "fps", "num_frames", "orig_size", "decoder",
                      "tokens_shape"]
LEGACY_CLIP_KEYS = ["size", "clip_frames", "clip_stride", "fps", "max_clips", "pad_short"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """A 16:9 landscape video (17 frames) and a 9:16 portrait one."""
    root = tmp_path_factory.mktemp("shapes")
    make_video(root / "wide.mp4", frames=17, width=320, height=180, fps=24)
    make_video(root / "tall.mp4", frames=17, width=90, height=160, fps=24)
    return root


def encode(videos, out, model, **options):
    options = {"clip_frames": 17, "workers": 0, "batch_size": 4, "device": "cpu", **options}
    return lfqtok.encode_dataset([str(videos)], out, model=model, **options)


def samples(out: Path) -> dict[str, tuple[np.ndarray, dict]]:
    return {key: (tokens, meta) for key, tokens, meta in read_tokens(out)}


# end to end


def test_a_16_9_video_at_128x224_gives_5_16_28_tokens_and_decode_reports_its_psnr(tmp_path, clips, model, one_thread):
    encode(clips / "wide.mp4", tmp_path / "tok", model, size="128x224")
    [(tokens, meta)] = samples(tmp_path / "tok").values()
    assert tokens.shape == (1, 5, 16, 28) and meta["frame_size"] == [128, 224] and meta["valid"] == [0, 0, 128, 224]
    manifest = read_manifest(tmp_path / "tok")
    assert manifest["size"] == [128, 224] and manifest["token_shape"] == [5, 16, 28] and manifest["resize"] == "crop"
    result = CliRunner().invoke(app, ["decode", str(tmp_path / "tok"), "-o", str(tmp_path / "prev"), "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)
    assert row["psnr"] is not None and row["psnr"] > 5 and row["frames"] == 17 and row["note"] is None
    with av.open(row["output"]) as video:
        stream = video.streams.video[0]
        assert (stream.height, stream.width) == (128, 224)  # the preview has the frame's aspect


@pytest.mark.parametrize("resize", ["crop", "pad", "fit"])
def test_every_resize_mode_round_trips_shapes_through_the_shards_and_decode(tmp_path, clips, model, resize, one_thread):
    encode(clips, tmp_path / "tok", model, size="64x112", resize=resize)
    got = samples(tmp_path / "tok")
    expected = {  # (frame size, valid box) per video: 320x180 and 90x160 sources
        "crop": {"wide": ([64, 112], [0, 0, 64, 112]), "tall": ([64, 112], [0, 0, 64, 112])},
        "pad": {"wide": ([64, 112], [0, 0, 63, 112]), "tall": ([64, 112], [0, 38, 64, 36])},
        "fit": {"wide": ([64, 112], [0, 0, 64, 112]), "tall": ([64, 32], [0, 0, 64, 32])},
    }[resize]
    for key, (tokens, meta) in got.items():
        frame, valid = expected[key]
        assert (meta["frame_size"], meta["valid"]) == (frame, valid) and "bucket" not in meta
        assert tokens.shape == (1, 5, frame[0] // 8, frame[1] // 8) and meta["tokens_shape"] == list(tokens.shape)
    manifest = read_manifest(tmp_path / "tok")
    assert manifest["resize"] == resize and manifest["clip"]["resize"] == resize
    assert manifest["token_shape"] == (None if resize == "fit" else [5, 8, 14])
    rows = lfqtok.decode_samples(tmp_path / "tok", tmp_path / "prev", fmt="png", compare=True, device="cpu")
    for row in rows:
        assert row["psnr"] is not None and row["note"] is None
        with av.open(row["output"]) as sheet:  # contact sheet: 9 frames a row, source above reconstruction
            width = next(sheet.decode(video=0)).width
        frame, valid = expected[row["key"]]
        assert width == max(SHEET_MARGIN + 9 * valid[3] + 8 * 2, SHEET_MIN_WIDTH)  # the valid region only (pad cut away)
    for row in lfqtok.decode_samples(tmp_path / "tok", tmp_path / "mp4", fmt="mp4", compare=True, device="cpu"):
        with av.open(row["output"]) as video:  # yuv420p: an odd valid region gets one black row or column
            stream = video.streams.video[0]
            _, _, h, w = expected[row["key"]][1]
            assert (stream.height, stream.width) == (h + h % 2, 2 * w) and row["frames"] == 17


def test_buckets_put_each_video_in_the_bucket_nearest_its_aspect(tmp_path, clips, model, one_thread):
    encode(clips, tmp_path / "list", model, size=64, buckets="64x112,112x64,64x64", batch_size=2)
    got = samples(tmp_path / "list")
    assert got["wide"][1]["bucket"] == [64, 112] and got["tall"][1]["bucket"] == [112, 64]  # the portrait: portrait
    assert got["wide"][0].shape == (1, 5, 8, 14) and got["tall"][0].shape == (1, 5, 14, 8)
    manifest = read_manifest(tmp_path / "list")
    assert manifest["buckets"] == [[64, 112], [112, 64], [64, 64]] and manifest["token_shape"] is None
    assert manifest["token_shapes"] == [[5, 8, 14], [5, 14, 8], [5, 8, 8]] and manifest["size"] == 64
    stats = lfqtok.token_stats(tmp_path / "list")
    assert [(r["bucket"], r["num_samples"], r["num_tokens"]) for r in stats["per_bucket"]] == [
        ([64, 112], 1, 560), ([112, 64], 1, 560), ([64, 64], 0, 0)]
    encode(clips, tmp_path / "auto", model, size=64, buckets="auto", resize="pad")
    got = samples(tmp_path / "auto")
    assert got["wide"][1]["bucket"] == [48, 88] and got["tall"][1]["bucket"] == [88, 48]  # 16:9 and 9:16 at ~64x64 px
    assert got["tall"][1]["valid"] == list(layout(90, 160, (88, 48), "pad").valid) == [1, 0, 85, 48]  # 90x160 is wider
    assert read_manifest(tmp_path / "auto")["buckets"] == [list(b) for b in preset_buckets(64 * 64, 8)]


def test_tokens_equal_the_python_apis_encode_of_frames_resized_the_documented_way(tmp_path, clips, model, one_thread):
    for options in ({"size": "64x112"}, {"size": "64x112", "resize": "pad"}, {"size": 64, "buckets": "auto"}):
        out = tmp_path / str(len(list(tmp_path.iterdir())))
        encode(clips, out, model, decoder="pyav", **options)
        tok = load_tokenizer(model)
        shapes = Shapes(size=(64, 112) if "x" in str(options["size"]) else 64, resize=options.get("resize", "crop"),
                        buckets=preset_buckets(64 * 64, 8) if "buckets" in options else None)
        for key, (tokens, meta) in samples(out).items():
            frames = []
            with av.open(str(clips / f"{key}.mp4")) as video:
                for frame in video.decode(video=0):
                    lay = shapes.plan(frame.width, frame.height).layout  # documented: shapes.layout, swscale AREA, place
                    scaled = frame.to_ndarray(width=lay.scaled[1], height=lay.scaled[0], format="rgb24", interpolation="AREA")
                    frames.append(place(scaled, lay))
            ids = tok.encode(torch.from_numpy(np.stack(frames[:17]))[None]).numpy()
            assert np.array_equal(ids, tokens), (options, key)
            assert meta["frame_size"] == list(lay.frame)


def test_tokens_equal_the_python_apis_encode_of_iter_clips_with_the_same_spec(tmp_path, clips, model, one_thread):
    encode(clips, tmp_path / "tok", model, size="64x112", resize="pad")  # default decoder (decord where it reads right)
    spec = ClipSpec.from_settings(read_manifest(tmp_path / "tok")["clip"])
    tok = load_tokenizer(model)
    for key, (tokens, meta) in samples(tmp_path / "tok").items():
        _, cut = iter_clips(str(clips / f"{key}.mp4"), spec)
        ids = tok.encode(torch.from_numpy(np.stack([c.frames for c in cut]))).numpy()
        assert np.array_equal(ids, tokens), key


def test_size_s_outputs_carry_no_new_fields_and_equal_size_sxs_tokens(tmp_path, clips, model, one_thread):
    encode(clips, tmp_path / "s", model, size=32)
    encode(clips, tmp_path / "sxs", model, size="32x32")
    manifest = read_manifest(tmp_path / "s")
    assert manifest["size"] == 32 and manifest["token_shape"] == [5, 4, 4] and list(manifest["clip"]) == LEGACY_CLIP_KEYS
    assert not {"resize", "buckets", "token_shapes"} & set(manifest)
    square = samples(tmp_path / "sxs")
    for key, (tokens, meta) in samples(tmp_path / "s").items():
        assert list(meta) == LEGACY_SAMPLE_KEYS
        assert np.array_equal(tokens, square[key][0])  # the same pixels: S is the crop mode at S x S
    assert square["wide"][1]["frame_size"] == [32, 32] and read_manifest(tmp_path / "sxs")["size"] == [32, 32]


def test_rerun_with_other_shape_options_is_a_settings_mismatch(tmp_path, clips, model, one_thread):
    encode(clips / "wide.mp4", tmp_path / "tok", model, size="32x56")
    encode(clips / "wide.mp4", tmp_path / "tok", model, size="32x56")  # same options: resumes (nothing to do)
    for options, named in [({"resize": "pad"}, "resize"), ({"buckets": "32x56,56x32"}, "buckets"), ({"size": 32}, "size")]:
        with pytest.raises(OutputError, match=named):
            encode(clips / "wide.mp4", tmp_path / "tok", model, **{"size": "32x56", **options})


@pytest.mark.parametrize("options, message", [
    ({"size": "30x64"}, "--size must be a positive multiple of 8"),
    ({"size": "64x"}, "--size takes HxW shapes"),
    ({"size": 64, "buckets": "64x64,60x72"}, "--buckets must be a positive multiple of 8"),
    ({"size": 64, "resize": "stretch"}, "--resize must be one of crop, pad, fit"),
    ({"size": 64, "resize": "fit", "buckets": "auto"}, "does not combine with --buckets"),
])
def test_bad_shape_options_fail_in_one_line_before_any_work(tmp_path, clips, model, options, message):
    with pytest.raises(UsageError, match=message):
        encode(clips, tmp_path / "tok", model, **options)
    assert not (tmp_path / "tok").exists()
    args = ["encode", str(clips), "-o", str(tmp_path / "cli"), "--model", model, "--device", "cpu"]
    args += [f"--{k}={v}" for k, v in options.items()]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_single_frame_clips_get_png_previews(tmp_path, clips, model, one_thread):
    encode(clips / "wide.mp4", tmp_path / "tok", model, size="32x56", clip_frames=1, max_clips=2)
    [row] = lfqtok.decode_samples(tmp_path / "tok", tmp_path / "prev", fmt="mp4", device="cpu")
    assert row["output"].endswith("wide.png") and row["psnr"] is not None and row["frames"] == 2


# geometry and batching


def test_the_crop_geometry_at_s_x_s_is_short_side_s_then_a_centre_crop():
    for width, height in [(320, 180), (180, 320), (97, 61), (64, 64), (1, 500)]:
        lay = layout(width, height, (32, 32))
        short, long = sorted((width, height))
        scaled_long = max(32, round(long * 32 / short))
        assert sorted(lay.scaled) == [32, scaled_long] and lay.offset == (0, 0)
        assert lay.crop == ((lay.scaled[0] - 32) // 2, (lay.scaled[1] - 32) // 2)


def test_pad_centres_the_picture_in_the_stated_fill_and_records_where_it_is():
    lay = layout(90, 160, (64, 112), "pad")
    assert lay.scaled == (64, 36) and lay.valid == (0, 38, 64, 36)
    frame = place(np.full((64, 36, 3), 255, np.uint8), lay)
    assert frame.shape == (64, 112, 3) and (frame[:, 38:74] == 255).all()
    assert (frame[:, :38] == PAD_FILL).all() and (frame[:, 74:] == PAD_FILL).all()


def test_fit_keeps_the_aspect_on_multiples_of_the_models_factor():
    assert Shapes(size=128, resize="fit").fitted(320, 180) == (72, 128)  # 128 x 72 exactly
    assert Shapes(size=128, resize="fit").fitted(90, 160) == (128, 72)
    assert Shapes(size=128, resize="fit", multiple=16).fitted(320, 180) == (64, 128)  # 72 -> 64 (4.5 rounds to even)
    assert Shapes(size=(128, 224), resize="fit").fitted(4000, 100) == (8, 224)  # at least one multiple
    with pytest.raises(UsageError, match="multiple of 16"):
        Shapes(size=(128, 200), multiple=16).validate()


def test_nearest_bucket_is_nearest_in_log_aspect_with_ties_to_the_first_listed():
    buckets = [(64, 64), (64, 128), (128, 64)]
    assert nearest_bucket(1920, 1080, buckets) == (64, 128) and nearest_bucket(1080, 1920, buckets) == (128, 64)
    assert nearest_bucket(100, 100, buckets) == (64, 64)
    # sqrt(2):1 is as far from 1:1 as from 2:1 in log aspect: the first listed wins
    assert nearest_bucket(1000 * math.sqrt(2), 1000, [(64, 128), (64, 64)]) == (64, 128)
    assert nearest_bucket(1000 * math.sqrt(2), 1000, [(64, 64), (64, 128)]) == (64, 64)
    for h, w in preset_buckets(128 * 128, 16):
        assert h % 16 == 0 and w % 16 == 0 and 0.8 < h * w / 128**2 < 1.2


def test_the_batcher_never_mixes_shapes_and_keeps_to_its_buffers():
    batcher = ClipBatcher(2, (1, 8, 16, 3), num_buffers=3)
    shapes = [(1, 8, 16, 3), (1, 16, 8, 3), (1, 8, 8, 3), (1, 8, 16, 3)]
    refs = []

    def consume(batch):  # one shape per batch, each clip's own pixels; then the buffer goes back
        assert all((batch.frames[j] == ref).all() and batch.frames.shape[1:] == shapes[ref] for j, ref in enumerate(batch.refs))
        refs.append(batch.refs)
        batcher.release(batch)

    for i, shape in enumerate(shapes):
        for batch in batcher.add(np.full(shape, i, np.uint8), i):
            consume(batch)
    for batch in batcher.flush():
        consume(batch)
    assert refs == [[0], [1], [2], [3]]  # a third shape closes the oldest open batch: two open at most (3 buffers)


def test_an_open_magvit2_image_model_takes_multiples_of_16_only(tmp_path, clips, one_thread):
    from lfqtok.tokenizers.open_magvit2 import OpenMagvit2Config, OpenMagvit2Tokenizer, save

    torch.manual_seed(0)
    config = OpenMagvit2Config(ch=32, ch_mult=(1, 1, 1, 1, 1), num_res_blocks=1, z_channels=12, window_frames=None, image=True)
    save(OpenMagvit2Tokenizer(config).eval(), tmp_path / "image.safetensors")
    model = str(tmp_path / "image.safetensors")
    with pytest.raises(UsageError, match="--size must be a positive multiple of 16 .*, got 32x40"):
        encode(clips / "wide.mp4", tmp_path / "bad", model, size="32x40", clip_frames=1, max_clips=1)
    assert not (tmp_path / "bad").exists()
    encode(clips, tmp_path / "tok", model, size=32, buckets="auto", clip_frames=1, max_clips=1)
    manifest = read_manifest(tmp_path / "tok")
    assert manifest["buckets"] == [list(b) for b in preset_buckets(32 * 32, 16)]
    assert all(h % 16 == 0 and w % 16 == 0 for h, w in manifest["buckets"])
    for key, (tokens, meta) in samples(tmp_path / "tok").items():
        assert tokens.shape == (1, 1, meta["bucket"][0] // 16, meta["bucket"][1] // 16)


@pytest.mark.parametrize("options", [{"size": 32}, {"size": (32, 56), "resize": "pad"}, {"size": 64, "resize": "fit"},
                                     {"size": 64, "buckets": ((48, 88), (88, 48))}])
def test_a_still_image_is_resized_as_a_one_frame_video_of_it(tmp_path, options):
    from videos import pattern

    rgb = pattern(3, 90, 160)  # (160, 90, 3): portrait
    spec = ClipSpec(clip_frames=1, **options)
    plan = spec.shapes.plan(90, 160)
    image = resize_image(rgb, spec)
    assert image.shape == (*plan.layout.frame, 3) and image_scaled_size(90, 160, spec) == plan.layout.scaled[::-1]
    scaled = av.VideoFrame.from_ndarray(rgb, format="rgb24").to_ndarray(
        width=plan.layout.scaled[1], height=plan.layout.scaled[0], format="rgb24", interpolation="AREA")
    assert np.array_equal(image, place(scaled, plan.layout))
