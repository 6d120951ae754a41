"""Issue #24's sweep, the run side: grown inputs and --append, OUT among the user's files and --overwrite, numbers out
of range, a thin image, a stray GIF. Each attack asserts the exit code, one line on stderr, and that nothing was
changed, lost or duplicated (files compared byte for byte)."""

import io
import json
import signal
import tarfile
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

import lfqtok
from lfqtok.cli import app
from lfqtok.dataset.token_dataset import TokenDataset
from lfqtok.pipeline import batch
from videos import make_video

try:  # click >= 8.2 keeps stderr apart by default; older versions need mix_stderr=False
    runner = CliRunner(mix_stderr=False)
except TypeError:
    runner = CliRunner()

LIMIT_S = 120  # each test, bounded: past it, a TimeoutError fails the test instead of hanging the suite
COMMON = ["--size", "32", "--clip-frames", "5", "--workers", "0", "--device", "cpu", "--batch-size", "4"]


@pytest.fixture(autouse=True)
def bounded():
    def expire(signum, frame):
        raise TimeoutError(f"test ran past {LIMIT_S} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(LIMIT_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, code: int) -> str:
    """The one stderr line of a refused command (exit `code`, no traceback)."""
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lfqtok: error:"), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    return " ".join(result.stderr.split())


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root, by relative path: what "nothing changed" compares."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def encode(inputs, out, model, *extra) -> dict:
    result = run("encode", *([inputs] if isinstance(inputs, (str, Path)) else inputs), "-o", out, "--model", model, *COMMON, "--json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def keys(out) -> list[str]:
    return [key for key, _, _ in lfqtok.read_tokens(out)]


@pytest.fixture(scope="module")
def clip_bytes(tmp_path_factory) -> bytes:
    return make_video(tmp_path_factory.mktemp("clip") / "v.mp4", frames=6, width=40, height=32, fps=10).read_bytes()


@pytest.fixture
def grown(tmp_path, clip_bytes) -> Path:
    """b c d e.mp4: the folder before `a.mp4` is added."""
    root = tmp_path / "videos"
    root.mkdir()
    for name in "bcde":
        (root / f"{name}.mp4").write_bytes(clip_bytes)
    return root


# 1. resume knows its inputs


def test_a_grown_folder_is_refused_naming_what_changed_and_nothing_changes(tmp_path, grown, clip_bytes, model):
    out = tmp_path / "tok"
    encode(grown, out, model, "--samples-per-shard", "2")
    before = snapshot(out)
    (grown / "a.mp4").write_bytes(clip_bytes)
    message = one_line_error(run("encode", grown, "-o", out, "--model", model, *COMMON, "--samples-per-shard", "2"), 2)
    assert "1 input added, 0 removed since the run in" in message and "new OUT" in message and "--append" in message
    assert snapshot(out) == before
    assert keys(out) == ["b", "c", "d", "e"]


def test_a_shrunk_folder_is_refused_too(tmp_path, grown, model):
    out = tmp_path / "tok"
    encode(grown, out, model, "--samples-per-shard", "2")
    before = snapshot(out)
    (grown / "c.mp4").unlink()
    message = one_line_error(run("encode", grown, "-o", out, "--model", model, *COMMON, "--samples-per-shard", "2"), 2)
    assert "0 inputs added, 1 removed" in message
    message = one_line_error(run("encode", grown, "-o", out, "--model", model, *COMMON, "--samples-per-shard", "2", "--append"), 2)
    assert "--append only adds inputs" in message
    assert snapshot(out) == before


def test_append_encodes_only_the_new_inputs_and_readers_see_one_dataset(tmp_path, grown, clip_bytes, model):
    out = tmp_path / "tok"
    encode(grown, out, model, "--samples-per-shard", "2")
    old = {name: data for name, data in snapshot(out).items() if name.startswith(("00000", "00001"))}
    (grown / "a.mp4").write_bytes(clip_bytes)
    (grown / "f.mp4").write_bytes(clip_bytes)
    summary = encode(grown, out, model, "--samples-per-shard", "2", "--append")
    assert summary["shards_written"] == 1 and summary["videos_ok"] == 2 and summary["shards_skipped"] == 2
    assert {name: data for name, data in snapshot(out).items() if name.startswith(("00000", "00001"))} == old
    assert keys(out) == ["b", "c", "d", "e", "a", "f"]  # each once: the new ones in shard 00002
    assert keys(out / "00002.tar") == ["a", "f"]
    result = run("stats", out, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["num_samples"] == 6
    assert Counter(it["key"] for it in TokenDataset(out)) == Counter(dict.fromkeys("bcdeaf", 1))
    result = run("decode", out, "-o", tmp_path / "prev", "--keys", "b,f", "--format", "png", "--device", "cpu", "--json")
    assert result.exit_code == 0 and sorted(row["key"] for row in json.loads(result.stdout)) == ["b", "f"]

    again = encode(grown, out, model, "--samples-per-shard", "2", "--append")  # nothing new: nothing done
    assert again["shards_written"] == 0 and again["shards_skipped"] == 3
    same = encode(grown, out, model, "--samples-per-shard", "2")  # the same command without --append resumes
    assert same["shards_written"] == 0 and keys(out) == ["b", "c", "d", "e", "a", "f"]


def test_an_interrupted_append_resumes(tmp_path, grown, clip_bytes, model):
    out = tmp_path / "tok"
    encode(grown, out, model, "--samples-per-shard", "2")
    (grown / "a.mp4").write_bytes(clip_bytes)
    encode(grown, out, model, "--samples-per-shard", "2", "--append")
    (out / "00002_stats.json").unlink()  # killed before its shard finished
    (out / "00002.tar").unlink()
    summary = encode(grown, out, model, "--samples-per-shard", "2", "--append")
    assert summary["shards_written"] == 1 and summary["videos_ok"] == 1
    assert keys(out) == ["b", "c", "d", "e", "a"]


def test_an_appended_key_never_collides_with_a_recorded_one(tmp_path, grown, clip_bytes, model):
    out = tmp_path / "tok"
    encode(grown, out, model)
    (grown / "b.mp4").unlink()
    (grown / "b.webm").write_bytes(clip_bytes)  # a new input whose key, b, an encoded one has
    one_line_error(run("encode", grown, "-o", out, "--model", model, *COMMON, "--append"), 2)  # b.mp4 was removed
    (grown / "b.mp4").write_bytes(clip_bytes)
    encode(grown, out, model, "--append")
    found = keys(out)
    assert len(found) == len(set(found)) == 5 and found[:4] == ["b", "c", "d", "e"] and found[4].startswith("b_")


def test_a_run_builds_its_listing_once(tmp_path, grown, clip_bytes, model, monkeypatch):
    """The lines of a million inputs take about 1.5 s to build: the manifest's hash and the sidecar share them."""
    from lfqtok.io import shards

    built, real = [], shards._listing_text
    monkeypatch.setattr(shards, "_listing_text", lambda entries: built.append(len(entries)) or real(entries))
    encode(grown, tmp_path / "tok", model)
    encode(grown, tmp_path / "tok", model)  # a resume: only the hash that finds the listing unchanged
    (grown / "a.mp4").write_bytes(clip_bytes)
    encode(grown, tmp_path / "tok", model, "--append")  # the new listing's hash, then the grown one's (another order)
    assert built == [4, 4, 5, 5]


@pytest.mark.parametrize("damage, said", [
    (lambda out: (out / "lfqtok.json").write_text("{not json"), "is unreadable or not an lfqtok manifest"),
    (lambda out: (out / "lfqtok.json").unlink(), "holds token shards but no readable lfqtok.json"),
    (lambda out: [p.unlink() for p in out.glob("lfqtok.listing.*.gz")], "is missing or damaged"),
], ids=["unreadable-manifest", "no-manifest", "no-listing"])
def test_every_refusal_of_an_existing_out_is_a_usage_error(tmp_path, grown, clip_bytes, model, damage, said):
    """What the user fixes by changing the command (another OUT, --overwrite) exits 2, like every usage error."""
    out = tmp_path / "tok"
    encode(grown, out, model)
    damage(out)
    (grown / "a.mp4").write_bytes(clip_bytes)
    before = snapshot(out)
    assert said in one_line_error(run("encode", grown, "-o", out, "--model", model, *COMMON, "--append"), 2)
    assert snapshot(out) == before


def test_num_shards_parts_record_one_identity(tmp_path, grown, model):
    out = tmp_path / "tok"
    for index in (0, 1):
        encode(grown, out, model, "--samples-per-shard", "1", "--num-shards", "2", "--shard-index", str(index))
    assert keys(out) == ["b", "c", "d", "e"]
    listing = json.loads((out / "lfqtok.json").read_text())["listing"]
    assert listing["count"] == 4 and len(listing["sha256"]) == 64
    assert len(list(out.glob("lfqtok.listing.*.gz"))) == 1


def test_an_out_from_before_listings_resumes_as_it_always_did(tmp_path, grown, clip_bytes, model):
    out = tmp_path / "tok"
    encode(grown, out, model)
    manifest = json.loads((out / "lfqtok.json").read_text())
    del manifest["listing"]
    (out / "lfqtok.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (grown / "z.mp4").write_bytes(clip_bytes)
    summary = encode(grown, out, model)
    assert summary["shards_written"] == 0 and summary["shards_skipped"] == 1


def test_a_changed_listing_with_overwrite_starts_over(tmp_path, grown, clip_bytes, model):
    out = tmp_path / "tok"
    encode(grown, out, model, "--samples-per-shard", "2")
    (grown / "a.mp4").write_bytes(clip_bytes)
    encode(grown, out, model, "--samples-per-shard", "2", "--overwrite")
    assert keys(out) == ["a", "b", "c", "d", "e"]


def test_a_grown_prefix_is_refused_then_appended_on_s3(s3, grown, clip_bytes, model):
    import s3fs

    fs = s3fs.S3FileSystem()
    for path in sorted(grown.iterdir()):
        fs.pipe_file(f"{s3[5:]}/videos/{path.name}", path.read_bytes())
    out = f"{s3}/tok"
    encode(f"{s3}/videos", out, model, "--samples-per-shard", "2")
    before = {p: fs.cat_file(p) for p in fs.find(f"{s3[5:]}/tok")}
    fs.pipe_file(f"{s3[5:]}/videos/a.mp4", clip_bytes)
    message = one_line_error(run("encode", f"{s3}/videos", "-o", out, "--model", model, *COMMON, "--samples-per-shard", "2"), 2)
    assert "1 input added, 0 removed since the run in s3://" in message
    fs.invalidate_cache()
    assert {p: fs.cat_file(p) for p in fs.find(f"{s3[5:]}/tok")} == before
    summary = encode(f"{s3}/videos", out, model, "--samples-per-shard", "2", "--append")
    assert summary["shards_written"] == 1 and keys(out) == ["b", "c", "d", "e", "a"]


# 2. never destroy what lfqtok did not write


@pytest.fixture
def wds(tmp_path, clip_bytes) -> Path:
    """A user's WebDataset video shards: wds/00000.tar, wds/00001.tar (mp4 + txt samples)."""
    root = tmp_path / "wds"
    root.mkdir()
    for shard in range(2):
        with tarfile.open(root / f"{shard:05d}.tar", "w") as tar:
            for i in range(2):
                for ext, data in (("mp4", clip_bytes), ("txt", b"a caption")):
                    info = tarfile.TarInfo(f"s{shard}{i}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return root


def test_out_that_holds_the_input_shards_is_refused_even_with_overwrite(tmp_path, wds, model):
    before = snapshot(wds)
    pattern = str(wds / "{00000..00001}.tar")
    for extra in ((), ("--overwrite",)):
        message = one_line_error(run("encode", pattern, "-o", wds, "--model", model, *COMMON, *extra), 2)
        assert "holds the input" in message and "--overwrite" not in message
        assert snapshot(wds) == before


def test_overwrite_never_deletes_video_shards_it_did_not_write(tmp_path, wds, grown, model):
    before = snapshot(wds)
    for extra in ((), ("--overwrite",)):
        message = one_line_error(run("encode", grown, "-o", wds, "--model", model, *COMMON, *extra), 2)
        assert "00000.tar, which lfqtok did not write" in message and "--overwrite" not in message
        assert snapshot(wds) == before


def test_overwrite_deletes_only_lfqtoks_own_files(tmp_path, grown, model):
    out = tmp_path / "tok"
    encode(grown, out, model, "--samples-per-shard", "2")
    (out / "notes.txt").write_text("mine")
    (out / "mine").mkdir()
    (out / "mine" / "keep.mp4").write_bytes(b"not lfqtok's")
    (out / "00007_stats.json").write_text('{"written": "by me"}')
    encode(grown, out, model, "--samples-per-shard", "3", "--overwrite")
    assert (out / "notes.txt").read_text() == "mine" and (out / "mine" / "keep.mp4").read_bytes() == b"not lfqtok's"
    assert (out / "00007_stats.json").read_text() == '{"written": "by me"}'
    assert sorted(p.name for p in out.glob("0000[0-9].tar")) == ["00000.tar", "00001.tar"] and keys(out) == ["b", "c", "d", "e"]


def test_out_inside_an_input_directory_is_refused(tmp_path, grown, model):
    before = snapshot(grown)
    message = one_line_error(run("encode", grown, "-o", grown / "tokens", "--model", model, *COMMON), 2)
    assert "is inside the input" in message and "--overwrite" not in message
    assert snapshot(grown) == before and not (grown / "tokens").exists()


def test_s3_out_that_holds_the_input_shards_is_refused_and_they_stay(s3, wds, model):
    import s3fs

    fs = s3fs.S3FileSystem()
    for path in sorted(wds.iterdir()):
        fs.pipe_file(f"{s3[5:]}/wds/{path.name}", path.read_bytes())
    before = {p: fs.cat_file(p) for p in fs.find(f"{s3[5:]}/wds")}
    for extra in ((), ("--overwrite",)):
        message = one_line_error(run("encode", f"{s3}/wds/{{00000..00001}}.tar", "-o", f"{s3}/wds", "--model", model, *COMMON, *extra), 2)
        assert "holds the input" in message and "--overwrite" not in message
    other = wds.parent / "videos-s3"  # inputs elsewhere: OUT is refused for the tars it holds
    make_video(other / "x.mp4", frames=6, width=40, height=32, fps=10)
    message = one_line_error(run("encode", other, "-o", f"{s3}/wds", "--model", model, *COMMON, "--overwrite"), 2)
    assert "00000.tar, which lfqtok did not write" in message
    fs.invalidate_cache()
    assert {p: fs.cat_file(p) for p in fs.find(f"{s3[5:]}/wds")} == before


# 3. numbers finite and in range


@pytest.mark.parametrize("option, value, named", [
    ("--fps", "inf", "--fps"), ("--fps", "nan", "--fps"), ("--fps", "1e9", "--fps"), ("--fps", "-1", "--fps"),
    ("--video-timeout", "inf", "--video-timeout"), ("--video-timeout", "nan", "--video-timeout"),
    ("--workers", "100000", "--workers"), ("--clip-stride", "0", "--clip-stride"), ("--max-clips", "0", "--max-clips"),
    ("--batch-size", "0", "--batch-size"), ("--samples-per-shard", "0", "--samples-per-shard"),
    ("--clip-frames", "4", "--clip-frames"), ("--size", "12", "--size"), ("--append", "--overwrite", "--append"),
])
def test_encode_numbers_out_of_range_are_one_line(tmp_path, grown, model, option, value, named):
    message = one_line_error(run("encode", grown, "-o", tmp_path / "tok", "--model", model, *COMMON, option, value), 2)
    assert named in message
    assert not (tmp_path / "tok").exists()


def test_a_size_whose_batch_buffers_cannot_fit_names_the_option(tmp_path, grown, model, monkeypatch):
    monkeypatch.setattr(batch, "machine_memory", lambda: 64 * 10**9)  # 3 buffers of 16 clips at 8192: 164 GB
    message = one_line_error(run("encode", grown, "-o", tmp_path / "tok", "--model", model, *COMMON, "--size", "8192", "--clip-frames", "17", "--batch-size", "16"), 2)
    assert "--batch-size 16 at --size 8192" in message and "use --batch-size 3 or less" in message
    message = one_line_error(run("encode", grown, "-o", tmp_path / "tok", "--model", model, *COMMON, "--size", "32768", "--clip-frames", "17", "--batch-size", "1"), 2)
    assert "--size 32768" in message and "use a smaller --size" in message
    assert not (tmp_path / "tok").exists()


def test_stats_and_decode_numbers_out_of_range_are_one_line(tmp_path, grown, model):
    out = tmp_path / "tok"
    encode(grown, out, model)
    assert "--workers" in one_line_error(run("stats", out, "--workers", "100000"), 2)
    assert "--top" in one_line_error(run("stats", out, "--top", "-1"), 2)
    assert "--limit" in one_line_error(run("decode", out, "-o", tmp_path / "prev", "--limit", "0", "--device", "cpu"), 2)


# 5. a thin image's reason


def test_a_thin_image_under_crop_fails_with_a_reason_to_act_on(tmp_path, model):
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (3, 100_000), (200, 10, 10)).save(root / "thin.png")
    summary = encode(root, tmp_path / "crop", model, "--size", "128")
    assert summary["videos_failed"] == 1
    reason = summary["failures"][0]["error"]
    assert reason.startswith("3 x 100000 image: the crop to 128 x 128 would first scale it to 128 x 4,266,667 pixels")
    assert reason.endswith("use --resize pad or fit")
    assert encode(root, tmp_path / "pad", model, "--resize", "pad", "--size", "128x128")["videos_ok"] == 1


# 6. images are never dropped by a rule the user cannot see


def _gif(path: Path) -> None:
    frames = [Image.new("RGB", (40, 30), (i * 60, 0, 0)) for i in range(3)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)


def test_a_stray_gif_among_class_folder_images_keeps_every_image(tmp_path, model):
    root = tmp_path / "imagenet"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (40, 30), (i * 90, 50, 0)).save(root / cls / f"{i}.jpg")
    _gif(root / "dog" / "stray.gif")
    summary = encode(root, tmp_path / "tok", model, "--class-folders")
    assert summary["videos_ok"] == 5 and summary["videos_failed"] == 0 and summary["left_out"] == 0
    found = {key: (tokens.shape, meta) for key, tokens, meta in lfqtok.read_tokens(tmp_path / "tok")}
    assert found["dog_stray"][0][1] == 1 and found["dog_stray"][1]["class"] == "dog"  # the GIF is an image: 1 frame
    manifest = json.loads((tmp_path / "tok" / "lfqtok.json").read_text())
    assert manifest["token_shape"][0] == 1 and "images_left_out" not in manifest


def test_images_left_out_by_the_videos_rule_are_counted_and_named(tmp_path, clip_bytes, model):
    root = tmp_path / "mixed"
    root.mkdir()
    (root / "clip.mp4").write_bytes(clip_bytes)
    _gif(root / "anim.gif")  # beside a video, a GIF is a video
    for name in ("poster.jpg", "thumb.png"):
        Image.new("RGB", (40, 30)).save(root / name)
    summary = encode(root, tmp_path / "tok", model)
    assert summary["videos_ok"] == 2
    assert summary["left_out"] == 2 and summary["left_out_first"] == [str(root / "poster.jpg"), str(root / "thumb.png")]
    manifest = json.loads((tmp_path / "tok" / "lfqtok.json").read_text())
    assert manifest["images_left_out"] == {"count": 2, "first": summary["left_out_first"]}
    result = run("encode", root, "-o", tmp_path / "tok2", "--model", model, *COMMON)
    assert result.exit_code == 0 and "images left" in result.stderr  # the summary table's row


def test_a_dangling_symlink_in_a_folder_is_a_recorded_failure(tmp_path, grown, model):
    """One of a million files is a link to nothing: the user learns it was not read, as for any unreadable input."""
    (grown / "x.mp4").symlink_to(tmp_path / "gone.mp4")
    (grown / "y.mp4").symlink_to(grown / "b.mp4")  # a link that resolves is a video like any other
    summary = encode(grown, tmp_path / "tok", model)
    assert summary["videos_ok"] == 5 and summary["videos_failed"] == 1
    [failure] = json.loads((tmp_path / "tok" / "00000_stats.json").read_text())["failures"]
    assert failure == {"source": str(grown / "x.mp4"), "error": f"broken symlink: target missing ({tmp_path / 'gone.mp4'})"}
    assert keys(tmp_path / "tok") == ["b", "c", "d", "e", "y"]


def test_a_gif_sample_in_a_tar_of_images_is_an_image_and_a_tar_of_videos_counts_its_images(tmp_path, clip_bytes, model):
    def png() -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", (40, 30), (0, 90, 0)).save(buffer, "PNG")
        return buffer.getvalue()

    _gif(tmp_path / "a.gif")
    samples = {"images.tar": [("p0", "png", png()), ("g1", "gif", (tmp_path / "a.gif").read_bytes()), ("p2", "png", png())],
               "videos.tar": [("v0", "mp4", clip_bytes), ("p1", "png", png())]}
    for name, members in samples.items():
        with tarfile.open(tmp_path / name, "w") as tar:
            for key, ext, data in members:
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    images = encode(tmp_path / "images.tar", tmp_path / "tok-images", model)
    assert images["videos_ok"] == 3 and images["left_out"] == 0
    assert {k: t.shape[1] for k, t, _ in lfqtok.read_tokens(tmp_path / "tok-images")} == {"p0": 1, "g1": 1, "p2": 1}
    videos = encode(tmp_path / "videos.tar", tmp_path / "tok-videos", model)
    assert videos["videos_ok"] == 1 and videos["left_out"] == 1 and videos["left_out_first"] == [f"{tmp_path / 'videos.tar'}:p1.png"]


# found by the review of the merged sweep (qa-24)


def test_decode_previews_never_replace_the_source_videos(tmp_path, grown, model):
    """`decode OUT -o VIDEOS`: each preview `{key}.mp4` would land on the video it decodes; refused, videos kept."""
    encode(grown, tmp_path / "tok", model)
    before = snapshot(grown)
    error = one_line_error(run("decode", tmp_path / "tok", "-o", grown, "--device", "cpu", "--compare"), 2)
    assert "source" in error and "b.mp4" in error
    assert snapshot(grown) == before


def test_a_removed_input_is_refused_without_suggesting_append(tmp_path, grown, model):
    """A rename (1 added, 1 removed): --append would be refused too, so the first refusal does not offer it."""
    out = tmp_path / "tok"
    encode(grown, out, model, "--samples-per-shard", "2")
    (grown / "c.mp4").rename(grown / "z.mp4")
    message = one_line_error(run("encode", grown, "-o", out, "--model", model, *COMMON, "--samples-per-shard", "2"), 2)
    assert "1 input added, 1 removed" in message and "new OUT" in message and "add --append" not in message
