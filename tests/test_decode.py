"""decode_samples: previews in mp4 / gif / png with the right frame counts (read back with PyAV), PSNR and SSIM
values on known inputs, a missing source, and tokenizer checks against the manifest's sha256."""

import json
import tarfile
from dataclasses import asdict
from pathlib import Path

import av
import numpy as np
import pytest
import torch

import lfqtok.inspect.decode as decode_module
from lfqtok.inspect.decode import (
    CLIP_GAP_GREY, MISSING_GREY, SHEET_HEADER, SHEET_MARGIN, SHEET_MIN_WIDTH, ContactSheetWriter, SheetLayout, decode_samples,
)
from lfqtok.inspect.metrics import PSNR_CAP
from lfqtok.errors import InputError, ModelError, UsageError
from lfqtok.tokenizers.model import load_tokenizer
from lfqtok.io.shards import MANIFEST_NAME, ShardWriter, build_manifest, prepare_output, read_tokens
from lfqtok.pipeline.video import ClipSpec, iter_clips

SIZE, FRAMES = 32, 9
SPEC = ClipSpec(size=SIZE, clip_frames=FRAMES)


def make_video(path: Path, frames: int, width: int = 48, height: int = 40, fps: int = 12) -> Path:
    """A moving colour gradient, h264 yuv420p."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        yy, xx = np.mgrid[0:height, 0:width]
        for i in range(frames):
            rgb = np.stack([(xx * 5 + i * 8) % 256, (yy * 6) % 256, np.full_like(xx, 40 + i * 4)], -1).astype(np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def encode_dir(out: Path, model: str, video: Path, sha256: str | None = None) -> Path:
    """A token dir made the encode way: manifest, one shard with the video's sample and one whose source is gone."""
    tok = load_tokenizer(model)
    _, clips = iter_clips(str(video), SPEC)
    clips = list(clips)
    ids = tok.encode(torch.from_numpy(np.stack([c.frames for c in clips]))).numpy()  # (clips, t, h, w)
    manifest = build_manifest(codebook_size=tok.codebook_size, num_codebooks=1, tokenizer_name=model,
                              tokenizer_sha256=sha256 or tok.sha256, tokenizer_config=tok.config.to_dict(),
                              clip_frames=FRAMES, size=SIZE, token_shape=list(ids.shape[1:]), extra={"clip": asdict(SPEC)})
    prepare_output(out, manifest, overwrite=False)
    with ShardWriter(out, 0, np.uint16) as writer:
        writer.write("clip", ids, {"source": str(video), "frame_indices": [c.frame_indices for c in clips], "fps": 12.0})
        writer.write("gone", ids[:1], {"source": str(video.parent / "deleted.mp4"), "fps": 12.0})
        writer.finish({"samples": 2})
    return out


@pytest.fixture(scope="module")
def tokens(tmp_path_factory, model) -> Path:
    root = tmp_path_factory.mktemp("tok")
    return encode_dir(root / "tok", model, make_video(root / "v.mp4", frames=20))


def read_png(path: Path) -> np.ndarray:
    """The image (H, W, 3) uint8, decoded by PyAV."""
    with av.open(str(path)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


def sheet_layout(sheet: np.ndarray, frames: int, size: int, clips: int, sides: int) -> SheetLayout:
    """The layout of a written contact sheet: its title has as many lines as the key, source and caption took."""
    layouts = [SheetLayout(frames, size, size, clips, sides, title_lines=n) for n in range(1, 9)]
    return next(lay for lay in layouts if lay.size[::-1] == sheet.shape[:2])


def frame_count(path: Path) -> tuple[int, int, int]:
    """(frames, width, height) decoded by PyAV."""
    with av.open(str(path)) as container:
        frames = [f for f in container.decode(video=0)]
    return len(frames), frames[0].width, frames[0].height


# previews


@pytest.mark.parametrize("fmt", ["mp4", "gif", "png"])
@pytest.mark.parametrize("compare", [False, True])
def test_previews_have_every_decoded_frame(tmp_path, tokens, fmt, compare):
    rows = decode_samples(tokens, tmp_path / "prev", fmt=fmt, compare=compare, device="cpu", batch_size=1)
    clip, gone = rows
    assert clip["key"] == "clip" and clip["clips"] == 2 and clip["frames"] == 2 * FRAMES  # 20 frames -> 2 clips
    n, width, height = frame_count(Path(clip["output"]))
    side = 2 if compare else 1  # source | reconstruction
    if fmt == "png":  # contact sheet: row names, then per clip a header and a row of 9 frames (2 px apart), source
        # row 2 px above; clips 8 px apart; the title (key, source) on top
        assert (n, width) == (1, SHEET_MARGIN + 9 * SIZE + 8 * 2)
        blocks = 2 * (SHEET_HEADER + side * SIZE + (side - 1) * 2) + 8
        assert height > blocks and any(SheetLayout(FRAMES, SIZE, SIZE, 2, side, lines).size[1] == height for lines in (1, 2))
    else:
        assert (n, width, height) == (2 * FRAMES, SIZE * side, SIZE)
    assert Path(gone["output"]).exists() and gone["frames"] == FRAMES


def test_scores_against_the_readable_source_and_none_for_a_missing_one(tmp_path, tokens):
    clip, gone = decode_samples(tokens, tmp_path / "prev", fmt="png", device="cpu")
    assert 5 < clip["psnr"] < PSNR_CAP and -1 <= clip["ssim"] <= 1 and clip["note"] is None
    assert gone["psnr"] is None and gone["ssim"] is None and "deleted.mp4" in gone["note"]
    assert json.loads(json.dumps(clip)) == clip  # valid JSON, no NaN/inf


def test_a_source_inside_an_input_tar_is_read_from_the_tar(tmp_path, model):
    video = make_video(tmp_path / "v.mp4", frames=9)
    out = encode_dir(tmp_path / "tok", model, video)
    plain = decode_samples(out, tmp_path / "a", keys=["clip"], fmt="png", device="cpu")[0]
    with tarfile.open(tmp_path / "in.tar", "w") as tar:
        tar.add(video, arcname="clip1.mp4")
    video.unlink()
    [(key, ids, meta)] = [s for s in read_tokens(out) if s[0] == "clip"]
    with ShardWriter(out, 0, np.uint16) as writer:  # the same sample, as encode writes a tar input's source
        writer.write(key, ids, {**meta, "source": f"{tmp_path / 'in.tar'}:clip1.mp4"})
        writer.finish({"samples": 1})
    from_tar = decode_samples(out, tmp_path / "b", fmt="png", device="cpu")[0]
    assert from_tar["psnr"] == pytest.approx(plain["psnr"]) and from_tar["note"] is None


def test_the_contact_sheet_wraps_long_clips_into_rows_and_marks_clip_boundaries(tmp_path):
    layout = SheetLayout(frames=17, height=8, width=6, clips=2, sides=2)
    assert (layout.columns, layout.rows) == (9, 2)  # 17 frames: rows of 9 and 8
    colours = np.arange(2 * 2 * 17).reshape(2, 2, 17) * 3 + 20  # (clip, side, frame) -> a grey level of its own
    writer = ContactSheetWriter(tmp_path / "sheet.png", layout)
    for clip in range(2):
        src, rec = (np.broadcast_to(colours[clip, side][:, None, None, None], (17, 8, 6, 3)).astype(np.uint8) for side in (0, 1))
        writer.write(rec, src if clip == 0 else None)  # the source stopped before clip 1: grey in its place
    writer.close()
    sheet = read_png(tmp_path / "sheet.png")
    assert sheet.shape == (2 * (SHEET_HEADER + 2 * (2 * 8 + 2) + 2) + 8, SHEET_MIN_WIDTH, 3) == (*layout.size[::-1], 3)
    for clip in range(2):
        for frame in range(17):
            for side in range(2):  # 0: the source row, above 1: the reconstruction row
                y, x = layout.origin(clip, frame, side)
                want = MISSING_GREY if (clip, side) == (1, 0) else colours[clip, side, frame]
                assert (sheet[y : y + 8, x : x + 6] == want).all(), (clip, frame, side)
    assert layout.origin(0, 9, 0) == (SHEET_HEADER + 2 * 8 + 2 + 2, SHEET_MARGIN)  # the 10th frame starts the second row pair
    boundary = layout.block_height
    assert (sheet[boundary : boundary + 8] == CLIP_GAP_GREY).all()


def test_compare_puts_each_source_row_above_its_reconstruction(tmp_path, tokens, model):
    [row] = decode_samples(tokens, tmp_path / "prev", keys=["clip"], fmt="png", compare=True, device="cpu")
    sheet = read_png(Path(row["output"]))
    [(_, ids, meta)] = [s for s in read_tokens(tokens) if s[0] == "clip"]
    _, clips = iter_clips(meta["source"], SPEC)
    rec = load_tokenizer(model).decode(torch.from_numpy(ids.astype(np.int64))).numpy()  # (2, FRAMES, SIZE, SIZE, 3)
    layout = sheet_layout(sheet, FRAMES, SIZE, clips=2, sides=2)
    for c, clip in enumerate(clips):
        for i in range(FRAMES):
            (ys, xs), (yr, xr) = layout.origin(c, i, 0), layout.origin(c, i, 1)
            assert np.array_equal(sheet[ys : ys + SIZE, xs : xs + SIZE], clip.frames[i])
            assert np.abs(sheet[yr : yr + SIZE, xr : xr + SIZE].astype(int) - rec[c, i]).max() <= 1


def test_an_input_tar_is_indexed_once_per_run(tmp_path, model, monkeypatch):
    video = make_video(tmp_path / "v.mp4", frames=9)
    out = encode_dir(tmp_path / "tok", model, video)
    [(key, ids, meta)] = [s for s in read_tokens(out) if s[0] == "clip"]
    with tarfile.open(tmp_path / "in.tar", "w") as tar:
        for i in range(3):
            tar.add(video, arcname=f"clip{i}.mp4")
    with ShardWriter(out, 0, np.uint16) as writer:  # three samples whose sources are members of one input tar
        for i in range(3):
            writer.write(f"clip{i}", ids, {**meta, "source": f"{tmp_path / 'in.tar'}:clip{i}.mp4"})
        writer.finish({"samples": 3})
    indexed = []
    real = decode_module.tar_members
    monkeypatch.setattr(decode_module, "tar_members", lambda path: indexed.append(path) or real(path))
    rows = decode_samples(out, tmp_path / "prev", fmt="png", compare=True, device="cpu")
    assert [r["note"] for r in rows] == [None] * 3 and all(r["psnr"] > 5 for r in rows)
    assert indexed == [str(tmp_path / "in.tar")]


def test_keys_and_limit_pick_samples(tmp_path, tokens):
    assert [r["key"] for r in decode_samples(tokens, tmp_path / "a", keys=["gone"], fmt="png", device="cpu")] == ["gone"]
    assert [r["key"] for r in decode_samples(tokens, tmp_path / "b", limit=1, fmt="png", device="cpu")] == ["clip"]
    with pytest.raises(InputError, match="nope"):
        decode_samples(tokens, tmp_path / "c", keys=["nope"], device="cpu")
    with pytest.raises(UsageError):
        decode_samples(tokens, tmp_path / "d", fmt="avi", device="cpu")


def test_batch_size_does_not_change_the_output(tmp_path, tokens):
    one = decode_samples(tokens, tmp_path / "one", fmt="png", device="cpu", batch_size=1)
    many = decode_samples(tokens, tmp_path / "many", fmt="png", device="cpu", batch_size=3)
    assert one[0]["psnr"] == pytest.approx(many[0]["psnr"], abs=0.01)  # CPU convs may round a pixel differently
    assert [r["frames"] for r in one] == [r["frames"] for r in many]


# tokenizer checks


def test_a_tokenizer_that_is_not_the_manifests_is_refused_unless_explicit(tmp_path, model):
    out = encode_dir(tmp_path / "tok", model, make_video(tmp_path / "v.mp4", frames=9), sha256="0" * 64)
    with pytest.raises(ModelError, match="sha256"):
        decode_samples(out, tmp_path / "prev", device="cpu")
    [row, _] = decode_samples(out, tmp_path / "prev", model=model, fmt="gif", device="cpu")
    assert "differs" in row["note"] and row["psnr"] is not None


def test_no_manifest_needs_an_explicit_model(tmp_path, model, tokens):
    shard = tmp_path / "alone" / "00000.tar"
    shard.parent.mkdir()
    shard.write_bytes((tokens / "00000.tar").read_bytes())
    with pytest.raises(ModelError, match="--model"):
        decode_samples(shard, tmp_path / "prev", device="cpu")
    rows = decode_samples(shard, tmp_path / "prev", model=model, fmt="png", device="cpu")
    assert rows[0]["psnr"] is not None and "not checked" in rows[0]["note"]
    assert not (tmp_path / "alone" / MANIFEST_NAME).exists()


def test_a_relative_source_is_found_from_another_directory(tmp_path, model, monkeypatch):
    from lfqtok.pipeline.encode import EncodeConfig, encode_dataset

    (tmp_path / "data").mkdir()
    make_video(tmp_path / "data" / "v.mp4", frames=9)
    monkeypatch.chdir(tmp_path)
    config = EncodeConfig(model=model, size=SIZE, clip_frames=FRAMES, workers=0, device="cpu")
    encode_dataset(["data"], tmp_path / "tok", config)  # stored source: "data/v.mp4", relative
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    [row] = decode_samples(tmp_path / "tok", tmp_path / "prev", fmt="png", compare=True, device="cpu")
    assert row["source"] == str(Path("data") / "v.mp4") and row["note"] is None and row["psnr"] is not None


# generated ids (.npy)


@pytest.mark.parametrize("shape, dtype, rows, clips", [
    ((2, 4, 4), np.uint8, 1, 1),  # (t, h, w): one clip
    ((3, 2, 4, 4), np.int32, 1, 3),  # (clips, t, h, w): one preview of 3 clips
    ((2, 1, 2, 4, 4), np.int64, 2, 1),  # (batch, clips, t, h, w): one preview each
])
def test_generated_ids_decode_to_previews(tmp_path, model, shape, dtype, rows, clips):
    ids = np.random.default_rng(0).integers(0, 256, shape).astype(dtype)  # the tiny model has 2^8 codes
    np.save(tmp_path / "gen.out.npy", ids)
    got = decode_samples([tmp_path / "gen.out.npy"], tmp_path / "prev", model=model, fmt="gif", limit=None, device="cpu")
    assert [r["key"] for r in got] == (["gen_out"] if rows == 1 else ["gen_out_0", "gen_out_1"])
    for row in got:
        assert row["clips"] == clips and row["psnr"] is None and row["source"] is None and row["note"] is None
        assert frame_count(Path(row["output"])) == (clips * (1 + 4 * (shape[-3] - 1)), 4 * 8, 4 * 8)


def test_a_generated_id_outside_the_codebook_is_named_with_its_index(tmp_path, model):
    ids = np.zeros((2, 2, 4, 4), np.int64)
    ids[1, 0, 2, 3] = 256
    ids[1, 1, 0, 0] = -1
    np.save(tmp_path / "gen.npy", ids)
    with pytest.raises(InputError, match=r"gen.npy: token id 256 at index \(1, 0, 2, 3\) is outside the codebook \[0, 256\)"):
        decode_samples([tmp_path / "gen.npy"], tmp_path / "prev", model=model, device="cpu")
    np.save(tmp_path / "float.npy", ids.astype(np.float32))
    with pytest.raises(InputError, match="integer ids"):
        decode_samples([tmp_path / "float.npy"], tmp_path / "prev", model=model, device="cpu")
    with pytest.raises(ModelError, match="--model"):
        decode_samples([tmp_path / "gen.npy"], tmp_path / "prev", device="cpu")


def test_inputs_with_the_same_name_get_a_preview_each(tmp_path, model):
    for d, fill in (("a", 0), ("b", 255)):
        (tmp_path / d).mkdir()
        np.save(tmp_path / d / "gen.npy", np.full((2, 4, 4), fill, np.int64))
    rows = decode_samples([tmp_path / "a" / "gen.npy", tmp_path / "b" / "gen.npy"], tmp_path / "prev", model=model,
                          fmt="png", device="cpu")
    assert [Path(r["output"]).name for r in rows] == ["gen.png", "gen_2.png"]
    assert rows[0]["note"] is None and "earlier input has the key gen" in rows[1]["note"]
    assert not np.array_equal(*(read_png(Path(r["output"])) for r in rows))  # neither overwrote the other
