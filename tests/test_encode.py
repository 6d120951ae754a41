"""encode_dataset end to end on generated videos with a tiny random tokenizer: format, resume, determinism,
failures, tar inputs with passthrough members, shard splitting, and the encoder stage's storage dtypes."""

import io
import json
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

import lfqtok
from lfqtok.pipeline.encode import EncodeConfig
from lfqtok.pipeline.engines import run_local
from lfqtok.errors import OutputError, UsageError
from lfqtok.pipeline.sources import list_items, plan_shards
from token_shards import output_bytes
from conftest import kill_9_once
from videos import make_video

SIZE, FRAMES = 32, 9


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    make_video(root / "a.mp4", frames=30, width=64, height=48, fps=24)
    make_video(root / "sub" / "b.webm", frames=20, width=48, height=64, fps=12, codec="libvpx-vp9")
    make_video(root / "c.MP4", frames=5, width=40, height=40, fps=10)  # shorter than one clip: padded
    (root / "notes.txt").write_text("not a video, ignored")
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a real video")
    return root


def encode(videos, out, model, **options):
    options = {"size": SIZE, "clip_frames": FRAMES, "workers": 0, "batch_size": 4, "device": "cpu", **options}
    return lfqtok.encode_dataset([str(videos)], out, model=model, **options)


def tar_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def test_encode_writes_the_design_format(tmp_path, videos, model):
    out = tmp_path / "tok"
    summary = encode(videos, out, model)
    manifest = json.loads((out / "lfqtok.json").read_text())
    assert manifest["format"] == "lfqtok-tokens" and manifest["format_version"] == 1
    assert manifest["bit_order"] == "msb_first" and manifest["token_dtype"] == "uint16"
    assert manifest["clip_frames"] == FRAMES and manifest["size"] == SIZE
    t, h, w = manifest["token_shape"]
    assert (t, h, w) == (1 + (FRAMES - 1) // 4, SIZE // 8, SIZE // 8)

    members = tar_members(out / "00000.tar")
    keys = sorted({name.split(".")[0] for name in members})
    assert len(keys) == 3 and all("." not in k and "/" not in k for k in keys)
    for key in keys:
        tokens = np.load(io.BytesIO(members[f"{key}.tokens.npy"]))
        meta = json.loads(members[f"{key}.json"])
        assert tokens.dtype == np.uint16 and tokens.shape[1:] == (t, h, w)
        assert meta["tokens_shape"] == list(tokens.shape)
        assert len(meta["frame_indices"]) == tokens.shape[0] == len(meta["clips"])
        assert int(tokens.max()) < manifest["codebook_size"]

    stats = json.loads((out / "00000_stats.json").read_text())
    assert stats["samples"] == 3 and stats["clips"] == summary.clips
    assert [f["source"] for f in stats["failures"]] == [str(videos / "broken.mp4")]
    assert stats["failures"][0]["error"] and "\n" not in stats["failures"][0]["error"]
    assert summary.videos_ok == 3 and summary.videos_failed == 1
    assert not list(out.glob("*.tmp*"))


def test_clip_counts_follow_the_video_lengths(tmp_path, videos, model):
    out = tmp_path / "tok"
    encode(videos, out, model)
    clips = {meta["source"]: tokens.shape[0] for _, tokens, meta in lfqtok.read_tokens(out)}
    assert clips[str(videos / "a.mp4")] == 30 // FRAMES
    assert clips[str(videos / "sub" / "b.webm")] == 20 // FRAMES
    short = [m for _, _, m in lfqtok.read_tokens(out) if m["source"].endswith("c.MP4")][0]
    assert clips[str(videos / "c.MP4")] == 1 and short["padded_frames"] == FRAMES - 5


def test_output_reads_back_with_plain_webdataset(tmp_path, videos, model):
    out = tmp_path / "tok"
    encode(videos, out, model)
    ours = {key: tokens for key, tokens, _ in lfqtok.read_tokens(out)}
    theirs = {s["__key__"]: s["tokens.npy"] for s in wds.WebDataset(str(out / "00000.tar"), shardshuffle=False).decode()}
    assert ours.keys() == theirs.keys()
    for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key])


def test_tokens_do_not_depend_on_batch_size_or_workers(tmp_path, videos, model):
    a = encode(videos, tmp_path / "a", model, batch_size=1, workers=0)
    b = encode(videos, tmp_path / "b", model, batch_size=5, workers=2)
    assert a.clips == b.clips
    assert output_bytes(tmp_path / "a") == output_bytes(tmp_path / "b")


def test_rerun_resumes_and_leaves_finished_shards_byte_identical(tmp_path, videos, model):
    out = tmp_path / "tok"
    first = encode(videos, out, model, samples_per_shard=2)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    second = encode(videos, out, model, samples_per_shard=2)
    assert first.shards_written == 2 and second.shards_written == 0 and second.shards_skipped == 2
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before


def test_other_settings_into_an_existing_out_are_refused_unless_overwrite(tmp_path, videos, model):
    out = tmp_path / "tok"
    encode(videos, out, model)
    with pytest.raises(OutputError, match="overwrite"):
        encode(videos, out, model, size=SIZE * 2)
    summary = encode(videos, out, model, size=SIZE * 2, overwrite=True)
    assert summary.shards_written == 1
    assert json.loads((out / "lfqtok.json").read_text())["size"] == SIZE * 2


@pytest.mark.slow
def test_kill_9_then_rerun_equals_an_uninterrupted_run(tmp_path, videos, model):
    whole = tmp_path / "whole"
    encode(videos, whole, model, samples_per_shard=1)
    out = tmp_path / "killed"
    script = (
        "import sys, lfqtok; lfqtok.encode_dataset([sys.argv[1]], sys.argv[2], model=sys.argv[3], size=%d, "
        "clip_frames=%d, workers=0, batch_size=1, device='cpu', samples_per_shard=1)" % (SIZE, FRAMES)
    )
    kill_9_once([sys.executable, "-c", script, str(videos), str(out), model], lambda: list(out.glob("0000[0-9]_stats.json")))
    encode(videos, out, model, samples_per_shard=1)
    assert output_bytes(out) == output_bytes(whole)


def test_tar_inputs_pass_their_other_members_through(tmp_path, videos, model):
    shard = tmp_path / "in-000.tar"
    with tarfile.open(shard, "w") as tar:
        for key, name in (("clip1", "a.mp4"), ("clip2", "c.MP4")):
            for member, data in (
                (f"{key}.mp4", (videos / name).read_bytes()),
                (f"{key}.txt", f"caption of {key}".encode()),
                (f"{key}.json", json.dumps({"id": key}).encode()),
            ):
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "tok"
    summary = lfqtok.encode_dataset([str(shard)], out, model=model, size=SIZE, clip_frames=FRAMES, workers=0, device="cpu")
    assert summary.videos_ok == 2
    members = tar_members(out / "00000.tar")
    captions = sorted(v.decode() for k, v in members.items() if k.endswith(".txt"))
    assert captions == ["caption of clip1", "caption of clip2"]
    src = [json.loads(v) for k, v in members.items() if k.endswith(".src.json")]
    assert sorted(s["id"] for s in src) == ["clip1", "clip2"]


def test_shard_index_splits_the_work_without_overlap(tmp_path, videos, model):
    encode(videos, tmp_path / "all", model, samples_per_shard=1)
    for index in (0, 1):
        encode(videos, tmp_path / "split", model, samples_per_shard=1, num_shards=2, shard_index=index)
    assert output_bytes(tmp_path / "split") == output_bytes(tmp_path / "all")
    items = list_items([str(videos)])
    jobs = plan_shards(items, 1, num_shards=2, shard_index=1)
    assert [j.index for j in jobs] == [1, 3]


def test_bad_options_fail_before_any_work(tmp_path, videos, model):
    for options in ({"clip_frames": 8}, {"batch_size": 0}, {"size": 30}, {"shard_index": 3, "num_shards": 2}):
        with pytest.raises(UsageError):
            encode(videos, tmp_path / "tok", model, **options)
    assert not (tmp_path / "tok").exists()


@pytest.mark.slow
def test_one_process_per_device_gives_the_same_shards(tmp_path, videos, model):
    config = EncodeConfig(model=model, size=SIZE, clip_frames=FRAMES, workers=1, batch_size=2, device="cpu", samples_per_shard=1)
    encode(videos, tmp_path / "single", model, samples_per_shard=1)
    out = tmp_path / "multi"
    lfqtok.encode_dataset([str(videos)], out, config, workers=0)  # writes the manifest and shards once ...
    for stats in out.glob("*_stats.json"):  # ... then redo every shard with two device processes
        stats.unlink()
    jobs = plan_shards(list_items([str(videos)]), 1)
    results = run_local(config.shard_encoder(out), jobs, devices=["cpu", "cpu"])
    assert sorted(r.shard for r in results) == [0, 1, 2, 3]
    assert output_bytes(out) == output_bytes(tmp_path / "single")


class _FakeTokenizer(torch.nn.Module):
    """Returns fixed large ids, to check they survive the on-device narrowing to the storage dtype."""

    def __init__(self, codebook_size: int, ids: list[int]):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.codebook_size, self.num_codebooks = codebook_size, 1
        self.ids = torch.tensor(ids)

    def encode_to_device(self, video: torch.Tensor) -> torch.Tensor:
        return self.ids.expand(video.shape[0], 1, 1, len(self.ids)).clone()


@pytest.mark.parametrize("codebook_size, dtype", [(2**16, np.uint16), (2**18, np.uint32), (2**31, np.uint32)])
def test_large_ids_keep_their_value_in_the_storage_dtype(tmp_path, videos, model, codebook_size, dtype):
    ids = [0, 1, 32767, 32768, codebook_size - 2, codebook_size - 1]
    config = EncodeConfig(model=model, size=SIZE, clip_frames=FRAMES, workers=0, device="cpu")
    lfqtok.encode_dataset([str(videos / "a.mp4")], tmp_path / "tok", config)  # manifest + a real run first
    encoder = config.shard_encoder(tmp_path / "fake")
    encoder._tokenizer = _FakeTokenizer(codebook_size, ids)
    (tmp_path / "fake").mkdir()
    [result] = encoder(plan_shards(list_items([str(videos / "a.mp4")]), 10))
    [(_, tokens, _)] = list(lfqtok.read_tokens(str(tmp_path / "fake" / "00000.tar")))
    assert tokens.dtype == dtype and tokens.reshape(-1, len(ids))[0].tolist() == ids
    assert result.clips == tokens.shape[0]


# a slow encoder: decode workers stay at most a few batches ahead (memory flat whatever the model's speed)

BP_CLIPS, BP_SPEC = 12, dict(size=128, clip_frames=5)  # 240 KiB clips: more than a pipe buffer (64 KiB), like real ones


def many_clips(index, item, spec, decoder):
    """A fake decoder (module level, so spawned workers can load it): BP_CLIPS tiny clips per video, each
    recorded by a file written before it is sent, so the test sees how far decoding ran ahead."""
    from lfqtok.pipeline.pool import ClipEvent, DoneEvent
    from lfqtok.pipeline.video import Clip, VideoMeta

    for i in range(BP_CLIPS):
        Path(item.path).with_name(f"{Path(item.path).stem}.{i}.made").write_bytes(b"")
        yield ClipEvent(index, i, Clip(np.zeros((spec.clip_frames, spec.size, spec.size, 3), np.uint8), list(range(5)), 0))
    yield DoneEvent(index, VideoMeta(None, None, (spec.size, spec.size), "fake"), BP_CLIPS, {})


class _SlowTokenizer(torch.nn.Module):
    """Sleeps on every call and notes how many clips the decode workers had made by then."""

    def __init__(self, made_dir: Path):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.codebook_size, self.num_codebooks = 256, 1
        self.made_dir, self.calls, self.ahead = made_dir, 0, []

    def encode_to_device(self, video: torch.Tensor) -> torch.Tensor:
        made = len(list(self.made_dir.glob("*.made")))
        self.ahead.append(made - 2 * self.calls)  # 2 clips (one batch) encoded per earlier call
        self.calls += 1
        time.sleep(0.02)
        return torch.zeros(video.shape[0], 1, 1, 1, dtype=torch.int64)


def test_decode_workers_never_run_more_than_a_few_batches_ahead_of_a_slow_encoder(tmp_path):
    import dataclasses

    from lfqtok.pipeline.pool import DecodePool
    from lfqtok.pipeline.worker import CPU_ENCODE_NICE

    src = tmp_path / "src"
    src.mkdir()
    for i in range(10):
        (src / f"v{i}.mp4").write_bytes(b"")
    items = list_items([str(src)])
    config = EncodeConfig(batch_size=2, workers=2, device="cpu", **BP_SPEC)
    asked = {}

    def pool(*args, **kwargs):
        asked.update(kwargs)
        return DecodePool(*args, max_pending_clips=4, decode=many_clips, **kwargs)

    encoder = dataclasses.replace(config.shard_encoder(tmp_path / "out"), pool_factory=pool)
    encoder._tokenizer = _SlowTokenizer(src)
    (tmp_path / "out").mkdir()
    [result] = encoder(plan_shards(items, 100))
    assert result.clips == 10 * BP_CLIPS and encoder._tokenizer.calls == 10 * BP_CLIPS // 2
    # bound: 3 batch buffers (6 clips) + 1 clip waiting for a buffer + 4 pending events + 2 per worker (pipe, making)
    assert max(encoder._tokenizer.ahead) <= 6 + 1 + 4 + 2 * 2, encoder._tokenizer.ahead
    assert asked["nice"] == CPU_ENCODE_NICE  # the CPU encoder's threads get the cores first
