"""Images as 1-frame clips: the documented RGB of every pixel format, malformed files as recorded failures, class
folders, image tar shards with passthrough members, --hflip, tokens equal to the Python API's, and the models that
take images (causal ones, Open-MAGVIT2 image ones) or refuse them (a non-causal video model)."""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

import lfqtok
from lfqtok.errors import ImageError, InputError, UsageError
from lfqtok.inspect.decode import SheetLayout
from lfqtok.pipeline.images import MAX_PIXELS, image_clip, read_image
from lfqtok.pipeline.sources import list_items
from lfqtok.pipeline.video import ClipSpec
from videos import make_video

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 32
RNG = np.random.RandomState(0)
PHOTO = RNG.randint(0, 256, (50, 70, 3)).astype(np.uint8)  # (H, W, 3): a landscape "photo"


# making images


def encoded(image: Image.Image | np.ndarray, fmt: str, **options) -> bytes:
    image = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_chunks(width: int, height: int, depth: int, colour: int, idat: bytes) -> bytes:
    """A PNG from its parts (what Pillow will not write: 16-bit colour, a 40000 x 40000 header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def bomb_png() -> bytes:
    """A real decompression bomb: 40000 x 40000 1-bit pixels (4.8 GB as RGB) in ~200 KB, made in half a second."""
    side = 40000
    z = zlib.compressobj(9)
    rows = (b"\x00" * (1 + side // 8)) * 1000
    idat = b"".join(z.compress(rows) for _ in range(side // 1000)) + z.flush()
    return png_chunks(side, side, 1, 0, idat)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def model_input(rgb: np.ndarray, size: int = SIZE) -> np.ndarray:
    """The documented resize, done here with PyAV alone: swscale AREA to short side `size`, centre crop."""
    h, w = rgb.shape[:2]
    sw, sh = (size, max(size, round(h * size / w))) if w <= h else (max(size, round(w * size / h)), size)
    scaled = av.VideoFrame.from_ndarray(rgb, format="rgb24").to_ndarray(width=sw, height=sh, format="rgb24", interpolation="AREA")
    top, left = (sh - size) // 2, (sw - size) // 2
    return scaled[top : top + size, left : left + size]


def encode(inputs, out, model, **options):
    options = {"size": SIZE, "workers": 0, "batch_size": 4, "device": "cpu", **options}
    return lfqtok.encode_dataset([str(i) for i in inputs], out, model=model, **options)


def members(tar: Path) -> dict[str, bytes]:
    with tarfile.open(tar) as t:
        return {m.name: t.extractfile(m).read() for m in t if m.isfile()}


def npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data))


# pixel formats: the documented RGB


def test_rgb_formats_decode_to_their_pixels():
    for fmt, options in (("PNG", {}), ("BMP", {}), ("WEBP", {"lossless": True})):
        assert np.array_equal(read_image(encoded(PHOTO, fmt, **options)), PHOTO), fmt
    jpeg = read_image(encoded(PHOTO, "JPEG", quality=95))
    assert jpeg.shape == PHOTO.shape and jpeg.dtype == np.uint8


def test_grey_palette_sixteen_bit_cmyk_and_alpha_follow_the_documented_rules():
    grey = PHOTO[..., 0]
    assert np.array_equal(read_image(encoded(grey, "PNG")), np.repeat(grey[..., None], 3, 2))  # R = G = B
    levels = np.array([[0, 257, 32768, 65535]], np.uint16)
    assert read_image(encoded(Image.fromarray(levels), "PNG"))[0, :, 0].tolist() == [0, 1, 128, 255]  # round(v * 255 / 65535)
    rgb16 = np.array([[[0x1234, 0xABCD, 0xFF00]]], ">u2")  # 16-bit colour: Pillow keeps the high byte
    assert read_image(png_chunks(1, 1, 16, 2, zlib.compress(b"\x00" + rgb16.tobytes())))[0, 0].tolist() == [0x12, 0xAB, 0xFF]

    palette = Image.fromarray(PHOTO).quantize(16)
    assert np.array_equal(read_image(encoded(palette, "PNG")), np.asarray(palette.convert("RGB")))
    palette.info["transparency"] = 0  # palette entry 0 transparent: black where it is used
    decoded = read_image(encoded(palette, "PNG", transparency=0))
    assert (decoded[np.asarray(palette) == 0] == 0).all() and (decoded[np.asarray(palette) != 0] > 0).any()

    rgba = np.dstack([PHOTO, RNG.randint(0, 256, PHOTO.shape[:2]).astype(np.uint8)])
    over_black = (PHOTO.astype(np.uint16) * rgba[..., 3:] + 127) // 255  # round(c * a / 255)
    assert np.array_equal(read_image(encoded(rgba, "PNG")), over_black)
    la = np.dstack([grey, rgba[..., 3]])
    grey_over_black = (grey.astype(np.uint16) * la[..., 1] + 127) // 255
    assert np.array_equal(read_image(encoded(Image.fromarray(la, "LA"), "PNG")), np.repeat(grey_over_black[..., None], 3, 2))

    cmyk = Image.new("CMYK", (16, 16), (40, 120, 200, 30))  # flat: the JPEG round trip keeps it within a level or two
    expected = [round((255 - c) * (255 - 30) / 255) for c in (40, 120, 200)]  # R = (255 - C)(255 - K) / 255
    assert np.abs(read_image(encoded(cmyk, "JPEG", quality=100))[8, 8].astype(int) - expected).max() <= 2


@pytest.mark.parametrize("orientation, upright", [(1, lambda a: a), (2, np.fliplr), (3, lambda a: np.rot90(a, 2)),
                                                   (6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1))])
def test_exif_orientation_is_applied(orientation, upright):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encoded(PHOTO, "PNG", exif=exif)
    assert np.array_equal(read_image(data), upright(PHOTO))
    meta, clip = image_clip(data, ClipSpec(size=SIZE))
    assert meta.orig_size == upright(PHOTO).shape[1::-1] and clip.frames.shape == (1, SIZE, SIZE, 3)


def test_malformed_images_raise_one_line_reasons():
    photo = encoded(PHOTO, "JPEG")
    cases = {
        "truncated": (photo[: len(photo) * 6 // 10], "truncated"),
        "bomb": (bomb_png(), rf"image has 1,600,000,000 pixels \(from its header\), over the {MAX_PIXELS:,} pixel limit"),
        "not an image": (b"plain text, not a picture", "not a readable image"),
        "another format": (encoded(PHOTO, "TIFF"), "not a readable image"),  # only the jpg/png/webp/bmp/gif parsers run
    }
    for name, (data, reason) in cases.items():
        with pytest.raises(ImageError, match=reason) as caught:
            read_image(data)
        assert "\n" not in str(caught.value), name


# the pipeline


@pytest.fixture(scope="module")
def class_tree(tmp_path_factory) -> Path:
    """ImageNet-style: ROOT/CLASS/files, classes listed out of order, names with dots and capitals."""
    root = tmp_path_factory.mktemp("classes") / "train"
    write(root / "n02_dog" / "b.v2.JPEG", encoded(PHOTO, "JPEG"))
    write(root / "n02_dog" / "a.png", encoded(PHOTO[::-1], "PNG"))
    write(root / "n01_cat" / "sub" / "c.webp", encoded(PHOTO[:, ::-1], "WEBP", lossless=True))
    write(root / "n03_fox" / "d.bmp", encoded(PHOTO[:40], "BMP"))
    return root


def test_class_folders_give_sorted_classes_and_labels(tmp_path, class_tree, model):
    summary = encode([class_tree], tmp_path / "tok", model, class_folders=True)
    assert summary.videos_ok == 4 and summary.failures == []
    manifest = json.loads((tmp_path / "tok" / "lfqtok.json").read_text())
    assert manifest["classes"] == ["n01_cat", "n02_dog", "n03_fox"] and manifest["token_shape"] == [1, 4, 4]
    samples = {key: (tokens, meta) for key, tokens, meta in lfqtok.read_tokens(tmp_path / "tok")}
    assert {k: (m["class"], m["label"]) for k, (_, m) in samples.items()} == {
        "n01_cat_sub_c": ("n01_cat", 0), "n02_dog_a": ("n02_dog", 1), "n02_dog_b_v2": ("n02_dog", 1), "n03_fox_d": ("n03_fox", 2)}
    assert all(t.shape == (1, 1, 4, 4) and m["tokens_shape"] == [1, 1, 4, 4] for t, m in samples.values())
    assert all(m["decoder"] == "pillow" and m["num_frames"] == 1 and m["fps"] is None for _, m in samples.values())
    again = encode([class_tree], tmp_path / "again", model, class_folders=True, workers=1, batch_size=3)
    assert again.videos_ok == 4
    assert (tmp_path / "again" / "00000.tar").read_bytes() == (tmp_path / "tok" / "00000.tar").read_bytes()
    plain = list_items([str(class_tree)])  # without the option: no classes, same keys
    assert plain.classes == [] and all(i.class_name is None for i in plain)
    assert sorted(i.key for i in plain) == sorted(samples)


def test_an_image_outside_any_class_folder_is_refused_up_front(tmp_path, class_tree, model):
    write(tmp_path / "root" / "stray.png", encoded(PHOTO, "PNG"))
    with pytest.raises(InputError, match="stray.png is not in a class folder"):
        encode([tmp_path / "root"], tmp_path / "tok", model, class_folders=True)
    assert not (tmp_path / "tok").exists()


def test_malformed_images_are_recorded_failures_and_the_good_ones_are_encoded(tmp_path, model):
    photo = encoded(PHOTO, "JPEG")
    root = tmp_path / "images"
    write(root / "good.jpg", photo)
    write(root / "good2.PNG", encoded(PHOTO, "PNG"))
    write(root / "truncated.jpg", photo[: len(photo) // 2])
    write(root / "bomb.png", bomb_png())
    write(root / "fake.jpeg", b"this is text with an image extension")
    summary = encode([root], tmp_path / "tok", model, workers=1)  # decoded in a worker process
    reasons = {Path(f["source"]).name: f["error"] for f in summary.failures}
    assert set(reasons) == {"truncated.jpg", "bomb.png", "fake.jpeg"}
    assert "truncated" in reasons["truncated.jpg"] and "decompression bomb" in reasons["bomb.png"]
    assert "not a readable image" in reasons["fake.jpeg"]
    assert sorted(key for key, _, _ in lfqtok.read_tokens(tmp_path / "tok")) == ["good", "good2"]
    stats = json.loads((tmp_path / "tok" / "00000_stats.json").read_text())
    assert stats["samples"] == 2 and len(stats["failures"]) == 3


def test_image_tar_shards_pass_cls_txt_and_json_through(tmp_path, model):
    shard = tmp_path / "images.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in [("s/a.jpg", encoded(PHOTO, "JPEG")), ("s/a.cls", b"3"), ("s/a.txt", b"a cat"),
                           ("s/a.json", b'{"url": "x"}'), ("b.png", encoded(PHOTO, "PNG")), ("b.cls", b"7"),
                           ("c.webp", encoded(PHOTO, "WEBP")), ("d.txt", b"no image here")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    items = list_items([str(shard)])
    assert [i.key for i in items] == ["s_a", "b", "c"] and items.skipped == 1 and all(i.is_image for i in items)
    encode([shard], tmp_path / "tok", model)
    got = members(tmp_path / "tok" / "00000.tar")
    assert got["s_a.cls"] == b"3" and got["s_a.txt"] == b"a cat" and got["s_a.src.json"] == b'{"url": "x"}'
    assert got["b.cls"] == b"7" and npy(got["c.tokens.npy"]).shape == (1, 1, 4, 4)
    assert json.loads(got["s_a.json"])["source"] == f"{shard}:s/a.jpg"


def test_tokens_equal_the_python_api_on_the_documented_resize(tmp_path, model):
    """PNG: decoded as is; JPEG: decoded at the DCT scale (draft) that still covers the scaled size."""
    large = np.kron(PHOTO, np.ones((6, 6, 1), np.uint8))  # 300 x 420: drafted at 1/8 to 38 x 53 for SIZE 32
    write(tmp_path / "in" / "p.png", encoded(PHOTO, "PNG"))
    write(tmp_path / "in" / "j.jpg", encoded(large, "JPEG"))
    encode([tmp_path / "in"], tmp_path / "tok", model)
    tokens = {key: t for key, t, _ in lfqtok.read_tokens(tmp_path / "tok")}
    jpeg = Image.open(tmp_path / "in" / "j.jpg")
    jpeg.draft("RGB", (round(420 * SIZE / 300), SIZE))
    assert jpeg.size == (53, 38)
    tok = lfqtok.load_tokenizer(model)
    for key, rgb in (("p", PHOTO), ("j", np.asarray(jpeg.convert("RGB")))):
        expected = tok.encode(torch.from_numpy(model_input(rgb)[None, None])).numpy()  # (1, 1, h, w)
        assert np.array_equal(tokens[key], expected), key


def test_hflip_writes_the_tokens_of_the_mirrored_model_input(tmp_path, model):
    write(tmp_path / "in" / "p.png", encoded(PHOTO, "PNG"))
    write(tmp_path / "in" / "q.bmp", encoded(PHOTO[:, :55], "BMP"))
    make_video(tmp_path / "in" / "v.mp4", frames=9, width=48, height=32, fps=10)  # videos get no flip
    inputs = [tmp_path / "in" / name for name in ("p.png", "q.bmp", "v.mp4")]  # named: images beside videos in a dir stay out
    summary = encode(inputs, tmp_path / "tok", model, hflip=True, clip_frames=5)
    assert summary.videos_ok == 3 and summary.clips == 1 + 1 + 1
    manifest = json.loads((tmp_path / "tok" / "lfqtok.json").read_text())
    assert manifest["hflip"] is True
    got = members(tmp_path / "tok" / "00000.tar")
    assert "v.tokens_flip.npy" not in got and npy(got["v.tokens.npy"]).shape == (1, 2, 4, 4)
    tok = lfqtok.load_tokenizer(model)
    for key, rgb in (("p", PHOTO), ("q", PHOTO[:, :55])):
        flipped = np.ascontiguousarray(model_input(rgb)[:, ::-1])
        expected = tok.encode(torch.from_numpy(flipped[None, None])).numpy()
        tokens, flip = npy(got[f"{key}.tokens.npy"]), npy(got[f"{key}.tokens_flip.npy"])
        assert flip.dtype == tokens.dtype and flip.shape == tokens.shape == (1, 1, 4, 4)
        assert np.array_equal(flip, expected) and not np.array_equal(flip, tokens)
    assert sorted(k for k, _, _ in lfqtok.read_tokens(tmp_path / "tok")) == ["p", "q", "v"]  # readers skip the member
    assert sum(1 for _ in lfqtok.TokenDataset(tmp_path / "tok")) == 3


def test_any_clip_frames_gives_one_1_frame_clip_per_image(tmp_path, model):
    write(tmp_path / "in" / "p.png", encoded(PHOTO, "PNG"))
    for frames in (1, 17):
        encode([tmp_path / "in"], tmp_path / f"tok{frames}", model, clip_frames=frames)
        [(_, tokens, meta)] = list(lfqtok.read_tokens(tmp_path / f"tok{frames}"))
        assert tokens.shape == (1, 1, 4, 4) and meta["clips"] == [[0, 1]]
    assert (tmp_path / "tok1" / "00000.tar").read_bytes() == (tmp_path / "tok17" / "00000.tar").read_bytes()


# models


def omv2(tmp_path: Path, **config) -> str:
    from lfqtok.tokenizers.open_magvit2 import OpenMagvit2Config, OpenMagvit2Tokenizer, save

    torch.manual_seed(0)
    path = tmp_path / "omv2.safetensors"
    save(OpenMagvit2Tokenizer(OpenMagvit2Config(ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=1, **config)).eval(), path)
    return str(path)


def test_a_non_causal_video_model_refuses_images_in_one_line(tmp_path):
    write(tmp_path / "in" / "p.png", encoded(PHOTO, "PNG"))
    with pytest.raises(UsageError, match="is not causal: it encodes only 17-frame windows, so it cannot tokenize images") as caught:
        encode([tmp_path / "in"], tmp_path / "tok", omv2(tmp_path))
    assert "\n" not in str(caught.value) and not (tmp_path / "tok").exists()


def test_an_open_magvit2_image_model_tokenizes_images(tmp_path):
    write(tmp_path / "in" / "p.png", encoded(PHOTO, "PNG"))
    encode([tmp_path / "in"], tmp_path / "tok", omv2(tmp_path, window_frames=None, image=True), hflip=True)
    [(_, tokens, meta)] = list(lfqtok.read_tokens(tmp_path / "tok"))
    assert tokens.shape == (1, 1, 4, 4) and meta["tokens_shape"] == [1, 1, 4, 4]
    assert json.loads((tmp_path / "tok" / "lfqtok.json").read_text())["bit_order"] == "lsb_first"


def test_cli_class_folders_and_hflip(tmp_path, class_tree, model):
    from typer.testing import CliRunner

    from lfqtok.cli import app

    args = ["encode", str(class_tree), "-o", str(tmp_path / "tok"), "--model", model, "--size", str(SIZE), "--workers", "0",
            "--device", "cpu", "--class-folders", "--hflip", "--json"]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    manifest = json.loads((tmp_path / "tok" / "lfqtok.json").read_text())
    assert manifest["classes"] == ["n01_cat", "n02_dog", "n03_fox"] and manifest["hflip"] is True
    assert sum(name.endswith(".tokens_flip.npy") for name in members(tmp_path / "tok" / "00000.tar")) == 4
    refused = CliRunner().invoke(app, ["encode", str(class_tree), "-o", str(tmp_path / "omv2"), "--model", omv2(tmp_path),
                                       "--size", str(SIZE), "--device", "cpu"])
    assert refused.exit_code == 2 and "cannot tokenize images" in refused.output and "Traceback" not in refused.output


def test_lists_single_files_and_tars_give_classes_from_their_own_roots(tmp_path, class_tree):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{class_tree.name}/n02_dog/a.png\n")
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tar:
        data = encoded(PHOTO, "PNG")
        info = tarfile.TarInfo("n09_owl/e.png")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    write(tmp_path / class_tree.name / "n02_dog" / "a.png", encoded(PHOTO, "PNG"))
    items = list_items([f"@{listing}", str(shard)], class_folders=True)
    assert [(i.key, i.class_name, i.label) for i in items] == [("n09_owl_e", "n09_owl", 0), ("train_n02_dog_a", "train", 1)]
    assert items.classes == ["n09_owl", "train"]
    single = list_items([str(class_tree / "n03_fox" / "d.bmp")])
    assert [(i.key, i.is_image) for i in single] == [("d", True)]
    with pytest.raises(InputError, match="is not under an input directory or list"):
        list_items([str(class_tree / "n03_fox" / "d.bmp")], class_folders=True)


def test_decode_compares_an_image_with_its_source_and_writes_a_png_at_its_aspect(tmp_path, model):
    """`decode --compare` of image tokens: a PNG preview, PSNR against the source decoded as encode decoded it,
    and with `--resize pad` the preview is the valid region, at the image's own aspect."""
    write(tmp_path / "in" / "p.jpg", encoded(PHOTO, "JPEG", quality=95))
    encode([tmp_path / "in"], tmp_path / "tok", model, size="16x16", resize="pad")
    [row] = lfqtok.decode_samples([tmp_path / "tok"], tmp_path / "prev", model=model, compare=True)
    assert row["output"].endswith(".png") and row["psnr"] is not None and row["psnr"] > 5
    [(_, _, meta)] = list(lfqtok.read_tokens(tmp_path / "tok"))
    top, left, h, w = meta["valid"]
    assert (h, w) == (11, 16)  # 50 x 70 contained in 16 x 16
    with Image.open(row["output"]) as preview:
        # source above reconstruction, each the valid region (h x w), under the sheet's title
        assert any(SheetLayout(1, h, w, clips=1, sides=2, title_lines=n).size == preview.size for n in (1, 2))
