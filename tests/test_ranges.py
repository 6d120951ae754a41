"""A sample per time range (a table's clip ranges, `VideoItem.span`): reached by seeking, laid only over the frames
whose times fall in [start, end), never padded (a range shorter than one clip is recorded as skipped), and the
same frames as a decode from frame 0. Ranged items are driven through the Python API, the pool and ShardEncoder."""

from __future__ import annotations

import json
import math
import re
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from lfqtok.errors import VideoError
from lfqtok.inspect.decode import decode_samples
from lfqtok.io.shards import read_tokens
from lfqtok.pipeline import video
from lfqtok.pipeline.pool import DecodePool, DoneEvent, FailEvent, SkipEvent
from lfqtok.pipeline.sources import ShardJob, VideoItem
from lfqtok.pipeline.video import ClipSpec, RangeTooShort, iter_clips
from lfqtok.pipeline.worker import Counters, ShardEncoder

FPS = 30
BITS = 10  # frame index in binary: one 8x8 block per bit, white for 1 (survives any lossy codec)


def indexed_video(path: Path, frames: int, codec: str = "libx264", options: dict | None = None) -> Path:
    """`frames` frames at FPS of 64x48, each showing its own index in binary, a keyframe every second."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(FPS))
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.gop_size = FPS
        stream.options = options if options is not None else {"preset": "ultrafast", "threads": "1"}
        for i in range(frames):
            image = np.full((48, 64, 3), 40, np.uint8)
            for bit in range(BITS):
                if i >> bit & 1:
                    image[8 * (bit // 5) : 8 * (bit // 5) + 8, 8 * (bit % 5) : 8 * (bit % 5) + 8] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def shown(frame: np.ndarray) -> int:
    """The index a frame of `indexed_video` shows (read at native size: 64x48)."""
    return sum(1 << bit for bit in range(BITS) if frame[8 * (bit // 5) + 4, 8 * (bit % 5) + 4].mean() > 128)


NATIVE = ClipSpec(size=(48, 64), resize="crop", clip_frames=5)  # frames as encoded, so `shown` reads them


def shown_clips(path: Path, span: tuple[float, float], spec: ClipSpec = NATIVE) -> list[list[int]]:
    _, clips = iter_clips(str(path), spec, span=span)
    return [[shown(f) for f in clip.frames] for clip in clips]


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> Path:
    """10 s, with B-frames and an open GOP (x264's leading pictures before each keyframe)."""
    path = tmp_path_factory.mktemp("ranges") / "long.mp4"
    return indexed_video(path, 10 * FPS, options={"preset": "fast", "threads": "1", "x264-params": "open-gop=1:bframes=3"})


CODECS = {  # codec, container, options: B-frames with open GOPs (HEVC's CRA leading pictures), VP9, MPEG-TS
    "hevc_open_gop.mp4": ("libx265", {"preset": "ultrafast", "x265-params": "open-gop=1:bframes=4:log-level=error"}),
    "vp9.webm": ("libvpx-vp9", {"deadline": "realtime", "cpu-used": "8"}),
    "h264.ts": ("libx264", {"preset": "ultrafast", "threads": "1"}),
}


@pytest.mark.parametrize("span", [(3.5, 4.2), (5.95, 6.5), (8.0, 8.4)])
def test_clips_lie_over_the_frames_of_their_range(long_video, span):
    start, end = span
    clips = shown_clips(long_video, span)
    first, last = math.ceil(start * FPS - 1e-6), math.ceil(end * FPS - 1e-6) - 1  # frames k with k / 30 in [start, end)
    assert clips[0][0] == first
    assert all(first <= i <= last for clip in clips for i in clip)
    assert [i for clip in clips for i in clip] == list(range(first, first + 5 * len(clips)))
    assert first + 5 * len(clips) + 5 > last + 1  # no room for one more clip in the range


def test_frame_indices_count_from_the_range_start_and_times_from_the_video_start(long_video):
    _, clips = iter_clips(str(long_video), NATIVE, span=(2.0, 2.5))
    clips = list(clips)
    assert [c.frame_indices for c in clips] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14]]
    assert [t for c in clips for t in c.times] == pytest.approx([k / FPS for k in (60, 64, 65, 69, 70, 74)])


@pytest.mark.parametrize("name", sorted(CODECS))
def test_a_seek_gives_the_frames_of_a_decode_from_frame_0(tmp_path, monkeypatch, name):
    codec, options = CODECS[name]
    path = indexed_video(tmp_path / name, 8 * FPS, codec, options)
    spans = [(2.9, 3.6), (3.98, 4.5), (7.1, 9.0)]

    def frames_of(span):
        _, clips = iter_clips(str(path), ClipSpec(size=32, clip_frames=5), span=span)
        return [((c.frame_indices, c.times), c.frames) for c in clips]

    with monkeypatch.context() as patch:  # the seek path alone: decoding from frame 0 would fail
        patch.setattr(video, "_pyav_frames", lambda *a: pytest.fail("decoded from frame 0 instead of seeking"))
        seeking = [frames_of(span) for span in spans]
    monkeypatch.setattr(video, "SEEK_TRIES", 0)  # no seek: every frame from the first on
    for sought, decoded in zip(seeking, [frames_of(span) for span in spans]):
        assert [i for i, _ in sought] == [i for i, _ in decoded]
        assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(sought, decoded))
    assert [len(s) for s in seeking] == [4, 3, 5]


def test_a_range_of_a_videos_bytes_is_the_range_of_its_file(long_video):
    """Remote videos and tar members are decoded from their bytes: the seek works in memory the same."""
    spec = ClipSpec(size=32, clip_frames=5)
    _, from_file = iter_clips(str(long_video), spec, span=(6.1, 6.9))
    _, from_bytes = iter_clips(long_video.read_bytes(), spec, span=(6.1, 6.9))
    pairs = list(zip(from_file, from_bytes, strict=True))
    assert len(pairs) == 4 and all(a.frame_indices == b.frame_indices and np.array_equal(a.frames, b.frames) for a, b in pairs)


def test_a_range_that_ends_past_the_video_is_cut_at_its_end(long_video):
    clips = shown_clips(long_video, (9.0, 60.0))
    assert [i for clip in clips for i in clip] == list(range(270, 300))


@pytest.mark.parametrize(
    ("span", "reason"),
    [((4.0, 4.1), "range [4.000, 4.100) s has 3 sampled frames, fewer than one clip of 5"),
     ((12.0, 14.0), "no frame of the video falls in the range [12.000, 14.000) s")],
)
def test_a_range_shorter_than_one_clip_is_not_padded(long_video, span, reason):
    _, clips = iter_clips(str(long_video), NATIVE, span=span)
    with pytest.raises(RangeTooShort, match=re.escape(reason)):
        next(clips)


@pytest.mark.parametrize("span", [(3.0, 3.0), (-1.0, 2.0), (1.0, float("inf")), ("a", "b")])
def test_a_range_no_video_could_have_is_a_video_error(long_video, span):
    with pytest.raises(VideoError, match="time range"):
        iter_clips(str(long_video), NATIVE, span=span)


def test_fps_sampling_targets_start_at_the_range_start(long_video):
    # 10 fps from 1.05 s: targets 1.05 + k / 10 -> the nearest frame in the range (frame 31, at 1.033 s, is not;
    # x.5 ties go to the earlier one); targets k / 10 from the video's start would give 33, 36, 39, ...
    clips = shown_clips(long_video, (1.05, 2.6), ClipSpec(size=(48, 64), resize="crop", clip_frames=5, fps=10))
    assert [i for clip in clips for i in clip] == [32, 34, 37, 40, 43, 46, 49, 52, 55, 58, 61, 64, 67, 70, 73]


def ranged_items(path: Path, spans: list[tuple[float, float]]) -> list[VideoItem]:
    return [
        VideoItem(key=f"long_{k}", source=str(path), path=str(path), span=span, row=3, segment=k)
        for k, span in enumerate(spans)
    ]


@pytest.mark.parametrize("workers", [0, 2])
def test_the_pool_gives_a_ranges_clips_or_a_skip(long_video, workers):
    items = ranged_items(long_video, [(1.0, 1.5), (4.0, 4.1)]) + [VideoItem("gone", "gone.mp4", "/nonexistent/gone.mp4", span=(0.0, 1.0))]
    with DecodePool(NATIVE, workers=workers) as pool:
        events = list(pool.run(items))
    verdicts = {e.item: e for e in events if not hasattr(e, "clip")}
    assert isinstance(verdicts[0], DoneEvent) and verdicts[0].num_clips == 3 and verdicts[0].meta.decoder == "pyav"
    assert isinstance(verdicts[1], SkipEvent) and "fewer than one clip" in verdicts[1].reason
    assert isinstance(verdicts[2], FailEvent)


@pytest.fixture(scope="module")
def ranged_run(tmp_path_factory, long_video, model) -> tuple[Path, list, Counters]:
    """Shard 0: three ranges of one row (the middle one shorter than a clip) and a missing video's range; shard 1:
    a plain video."""
    out = tmp_path_factory.mktemp("ranged_out")
    items = ranged_items(long_video, [(1.0, 1.5), (4.0, 4.1), (9.3, 20.0)])
    items.append(VideoItem("gone", "gone.mp4", str(out / "gone.mp4"), span=(0.0, 1.0), row=4, segment=0))
    plain = indexed_video(out.parent / f"{out.name}_plain.mp4", 10)
    encoder = ShardEncoder(out, ClipSpec(size=32, clip_frames=5), model=model, device="cpu", batch_size=4, workers=1)
    progress: list[Counters] = []
    results = encoder([ShardJob(0, tuple(items)), ShardJob(1, (VideoItem("plain", str(plain), str(plain)),))], progress.append)
    return out, results, progress[-1]


@pytest.fixture(scope="module")
def ranged_shard(ranged_run) -> Path:
    return ranged_run[0]


def test_shard_stats_record_the_short_range_as_skipped_and_the_missing_video_with_its_row(ranged_shard):
    stats = json.loads((ranged_shard / "00000_stats.json").read_text())
    assert stats["samples"] == 2 and stats["clips"] == 3 + 4  # 1.0-1.5 s: 15 frames; 9.3-10 s (the video's end): 21
    assert stats["skipped"] == [{"source": stats["skipped"][0]["source"], "row": 3, "segment": 1,
                                 "reason": "range [4.000, 4.100) s has 3 sampled frames, fewer than one clip of 5"}]
    assert [(f["source"], f["row"], f["segment"]) for f in stats["failures"]] == [("gone.mp4", 4, 0)]
    plain = json.loads((ranged_shard / "00001_stats.json").read_text())  # as it always was: no `skipped`
    assert list(plain) == ["shard", "samples", "clips", "tokens", "frames", "failures", "seconds"]


def test_a_skipped_range_counts_toward_the_runs_progress_and_results(ranged_run):
    _, results, progress = ranged_run
    assert (progress.videos_done, progress.videos_failed, progress.videos_skipped, progress.videos_total) == (3, 1, 1, 5)
    assert Counters.of(results).videos_skipped == 1 and [len(r.skipped) for r in results] == [1, 0]


def test_a_ranged_sample_records_its_time_range_and_range_relative_frame_indices(ranged_shard):
    samples = {key: meta for key, _, meta in read_tokens(ranged_shard)}
    assert list(samples) == ["long_0", "long_2", "plain"]
    assert not {"time_range", "clip_times", "row", "segment"} & set(samples["plain"])
    assert samples["long_0"]["time_range"] == [1.0, 1.5]
    assert samples["long_2"]["time_range"] == [9.3, 20.0]  # as asked; its frames end with the video (10 s)
    assert samples["long_0"]["frame_indices"] == [list(range(k, k + 5)) for k in (0, 5, 10)]
    assert samples["long_2"]["frame_indices"] == [list(range(k, k + 5)) for k in range(0, 20, 5)]
    assert samples["long_0"]["padded_frames"] == samples["long_2"]["padded_frames"] == 0
    assert samples["long_0"]["clip_times"] == [[1.0, 1.133333], [1.166667, 1.3], [1.333333, 1.466667]]
    assert samples["long_2"]["clip_times"][-1] == [9.8, 9.933333]  # then the video ends: one frame left over


def test_decode_compare_of_a_ranged_sample_scores_it_against_its_range(ranged_shard, model, tmp_path, monkeypatch):
    spans = []

    def spy(source, spec, **kwargs):
        spans.append(kwargs.get("span"))
        return iter_clips(source, spec, **kwargs)

    monkeypatch.setattr(video, "iter_clips", spy)
    rows = decode_samples(ranged_shard, tmp_path / "prev", keys=["long_0", "long_2"], fmt="png", compare=True, model=model, device="cpu")
    assert spans == [(1.0, 1.5), (9.3, 20.0)]  # the source re-read over each sample's range
    assert [(r["key"], r["frames"]) for r in rows] == [("long_0", 15), ("long_2", 20)]
    assert all(r["psnr"] is not None and "psnr" not in (r["note"] or "") for r in rows)  # every clip scored


@pytest.mark.slow
def test_ray_decode_tasks_give_the_pools_events_for_ranges(long_video):
    ray = pytest.importorskip("ray")
    from lfqtok.pipeline.ray_engine import RayDecodePool

    items = ranged_items(long_video, [(1.0, 1.5), (4.0, 4.1), (9.0, 60.0)])
    summary = lambda events: [(type(e).__name__, e.item, getattr(getattr(e, "clip", None), "frame_indices", None)) for e in events]
    with DecodePool(NATIVE, workers=0) as pool:
        local = summary(pool.run(items))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with RayDecodePool(NATIVE, workers=2) as pool:
            remote = summary(pool.run(items))
    finally:
        ray.shutdown()
    assert sorted(remote, key=lambda e: e[1]) == sorted(local, key=lambda e: e[1])  # interleaved across videos
    assert ("SkipEvent", 1, None) in remote


@pytest.mark.slow
def test_every_real_video_seeks_to_the_frames_of_a_decode_from_frame_0(real_videos, monkeypatch):
    """Seeking must not change a frame: open GOPs, B-frames, in-band parameter sets (cockatoo.mp4), AVI, GIF, AV1."""
    spec = ClipSpec(size=32, clip_frames=5)
    paths = sorted(p for p in real_videos.glob("*/*") if p.suffix.lower() != ".md")

    def clips(path: Path, span: tuple[float, float]) -> list:
        try:
            _, found = iter_clips(str(path), spec, span=span)
            return [(c.frame_indices, c.times, c.frames) for c in found]
        except VideoError as exc:
            return [str(exc)]

    spans = {}
    for path in paths:
        with av.open(str(path)) as container:
            seconds = container.duration / av.time_base if container.duration else 4.0
        spans[path] = [(round(f * seconds, 3), round(f * seconds, 3) + 1.0) for f in (0.37, 0.81)]
    sought = {path: [clips(path, span) for span in spans[path]] for path in paths}
    monkeypatch.setattr(video, "SEEK_TRIES", 0)
    for path in paths:
        for span, seek in zip(spans[path], sought[path]):
            decoded = clips(path, span)
            assert len(seek) == len(decoded), (path.name, span)
            for a, b in zip(seek, decoded):
                assert a == b if isinstance(a, str) else (a[:2] == b[:2] and np.array_equal(a[2], b[2])), (path.name, span)
