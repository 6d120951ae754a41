"""video.py: clip shapes, sampling, padding, crop geometry, decoder agreement, rotation, and every real file."""

from __future__ import annotations

import numpy as np
import pytest
from videos import make_video

from lfqtok.errors import UsageError, VideoError
from lfqtok.pipeline.video import ClipSpec, iter_clips, validate_spec


def clips_of(video, **spec):
    meta, clips = iter_clips(str(video) if not isinstance(video, bytes) else video, ClipSpec(**spec))
    return meta, list(clips)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / max(mse, 1e-10)))


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("v") / "wide.mp4", frames=40, width=96, height=64, fps=24)


@pytest.mark.parametrize(
    "spec, message",
    [
        (ClipSpec(size=30), "--size"),
        (ClipSpec(size=0), "--size"),
        (ClipSpec(clip_frames=16), "--clip-frames"),
        (ClipSpec(clip_stride=0), "--clip-stride"),
        (ClipSpec(fps=0), "--fps"),
        (ClipSpec(max_clips=0), "--max-clips"),
    ],
)
def test_validate_spec_names_the_bad_option(spec, message):
    with pytest.raises(UsageError, match=message):
        validate_spec(spec)


def test_clips_are_uint8_rgb_windows_of_consecutive_frames(wide):
    meta, clips = clips_of(wide, size=32, clip_frames=9)
    assert (meta.fps, meta.num_frames, meta.orig_size) == (24.0, 40, (96, 64))
    assert meta.decoder in ("decord", "pyav")
    assert len(clips) == 4  # 40 frames // 9; the last partial window is dropped
    for k, clip in enumerate(clips):
        assert clip.frames.shape == (9, 32, 32, 3) and clip.frames.dtype == np.uint8
        assert clip.frame_indices == list(range(9 * k, 9 * k + 9)) and clip.padded == 0


@pytest.mark.parametrize(
    "stride, max_clips, starts",
    [(4, None, list(range(0, 32, 4))), (15, None, [0, 15, 30]), (9, 2, [0, 9]), (1, 3, [0, 1, 2])],
)
def test_stride_and_max_clips_choose_the_window_starts(wide, stride, max_clips, starts):
    _, clips = clips_of(wide, size=16, clip_frames=9, clip_stride=stride, max_clips=max_clips)
    assert [c.frame_indices[0] for c in clips] == starts
    assert all(c.frame_indices == list(range(c.frame_indices[0], c.frame_indices[0] + 9)) for c in clips)


def test_overlapping_clips_share_identical_frames(wide):
    _, clips = clips_of(wide, size=16, clip_frames=9, clip_stride=4, max_clips=2)
    np.testing.assert_array_equal(clips[0].frames[4:], clips[1].frames[:5])


def test_fps_resampling_picks_the_nearest_frames(wide):
    _, half = clips_of(wide, size=16, clip_frames=5, fps=12)
    assert [c.frame_indices for c in half] == [[0, 2, 4, 6, 8], [10, 12, 14, 16, 18], [20, 22, 24, 26, 28], [30, 32, 34, 36, 38]]
    _, double = clips_of(wide, size=16, clip_frames=9, fps=48, max_clips=2)
    assert [c.frame_indices for c in double] == [[0, 0, 1, 1, 2, 2, 3, 3, 4], [4, 5, 5, 6, 6, 7, 7, 8, 8]]  # ties: earlier


def test_short_video_is_padded_with_its_last_frame_or_fails(tmp_path):
    short = make_video(tmp_path / "short.mp4", frames=5, width=40, height=40, fps=10)
    _, clips = clips_of(short, size=16, clip_frames=9)
    assert len(clips) == 1 and clips[0].padded == 4
    assert clips[0].frame_indices == [0, 1, 2, 3, 4, 4, 4, 4, 4]
    np.testing.assert_array_equal(clips[0].frames[4], clips[0].frames[8])
    meta, clips = iter_clips(str(short), ClipSpec(size=16, clip_frames=9, pad_short=False))
    with pytest.raises(VideoError, match="shorter than one clip"):
        list(clips)


def test_center_crop_keeps_the_middle_of_a_wide_frame(wide):
    # short side 64 -> 32: the frame becomes 48 x 32 and columns 8..40 remain, i.e. source x 16..80 of 96;
    # the red channel is a horizontal ramp (x * 255 / 95), the green one a vertical ramp over the full height
    _, clips = clips_of(wide, size=32, clip_frames=1, max_clips=1)
    frame = clips[0].frames[0].astype(float)
    assert abs(frame[16:, 0, 0].mean() - 16 * 255 / 95) < 12
    assert abs(frame[16:, -1, 0].mean() - 80 * 255 / 95) < 12
    assert frame[0, :10, 1].mean() < 20 and frame[-1, :10, 1].mean() > 235


def test_portrait_video_is_cropped_vertically(tmp_path):
    tall = make_video(tmp_path / "tall.webm", frames=9, width=48, height=80, fps=12, codec="libvpx-vp9")
    meta, clips = clips_of(tall, size=16, clip_frames=9)
    assert meta.orig_size == (48, 80) and meta.num_frames is None  # WebM: no frame count in the container
    assert clips[0].frames.shape == (9, 16, 16, 3)


@pytest.fixture(scope="module")
def mid(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("v") / "mid.mp4", frames=30, width=160, height=120, fps=24)


def test_decord_and_pyav_give_the_same_frames(mid):
    spec = ClipSpec(size=64, clip_frames=9, fps=16)
    meta_a, auto = iter_clips(str(mid), spec)
    meta_p, pyav = iter_clips(str(mid), spec, decoder="pyav")
    auto, pyav = list(auto), list(pyav)
    assert (meta_a.decoder, meta_p.decoder) == ("decord", "pyav")
    assert [c.frame_indices for c in auto] == [c.frame_indices for c in pyav] and len(auto) == 2
    assert min(psnr(a.frames, b.frames) for a, b in zip(auto, pyav)) > 30  # bilinear vs AREA scaling only


def test_pyav_takes_over_when_decord_fails_mid_video(mid, monkeypatch):
    import lfqtok.pipeline.video as video

    real = video._decord_frames

    def failing(*args):
        for frame in real(*args):
            if frame.index == 12:
                raise video.decord.DECORDError("simulated failure")
            yield frame

    _, reference = clips_of(mid, size=64, clip_frames=9)
    monkeypatch.setattr(video, "_decord_frames", failing)
    meta, clips = iter_clips(str(mid), ClipSpec(size=64, clip_frames=9))
    clips = list(clips)
    assert meta.decoder == "pyav"
    assert [c.frame_indices for c in clips] == [c.frame_indices for c in reference] == [list(range(0, 9)), list(range(9, 18)), list(range(18, 27))]
    assert psnr(clips[1].frames, reference[1].frames) > 30


def test_bytes_and_path_give_identical_clips(wide):
    _, from_path = clips_of(wide, size=16, clip_frames=5)
    _, from_bytes = clips_of(wide.read_bytes(), size=16, clip_frames=5)
    assert all(np.array_equal(a.frames, b.frames) for a, b in zip(from_path, from_bytes))
    assert len(from_path) == len(from_bytes) == 8


def test_rotated_video_is_decoded_as_displayed(tmp_path):
    import av

    from videos import pattern

    paths = {}
    for name, rotation in (("plain", None), ("rotated", 90)):
        paths[name] = tmp_path / f"{name}.mp4"
        with av.open(str(paths[name]), "w") as out:
            stream = out.add_stream("libx264", rate=10)
            stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
            if rotation:
                stream.set_display_rotation(rotation)
            for i in range(5):
                for packet in stream.encode(av.VideoFrame.from_ndarray(pattern(i, 64, 32), format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
    meta, rotated = clips_of(paths["rotated"], size=16, clip_frames=5)
    _, plain = clips_of(paths["plain"], size=16, clip_frames=5)
    assert meta.orig_size == (32, 64)  # displayed portrait
    assert psnr(rotated[0].frames, np.rot90(plain[0].frames, k=1, axes=(1, 2))) > 25
    buckets = ((16, 32), (32, 16))  # the bucket follows the displayed aspect: the rotated video is portrait
    meta, rotated = clips_of(paths["rotated"], size=16, clip_frames=5, buckets=buckets, resize="pad")
    _, plain = clips_of(paths["plain"], size=16, clip_frames=5, buckets=buckets, resize="pad")
    assert meta.plan.bucket == (32, 16) and rotated[0].frames.shape == (5, 32, 16, 3)
    assert psnr(rotated[0].frames, np.rot90(plain[0].frames, k=1, axes=(1, 2))) > 25


@pytest.mark.parametrize("content", [b"", b"\x00" * 4096, b"not a video at all" * 100])
def test_garbage_raises_video_error(tmp_path, content):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoError):
        meta, clips = iter_clips(str(path), ClipSpec(size=16, clip_frames=5))
        list(clips)


def test_every_real_video_gives_clips_or_a_clear_reason(real_videos):
    files = sorted(p for d in ("edge", "train", "eval") for p in (real_videos / d).glob("*") if p.is_file())
    assert files
    outcomes = {}
    for path in files:
        try:
            meta, clips = iter_clips(str(path), ClipSpec(size=32, clip_frames=5, max_clips=2))
            clips = list(clips)
            assert clips and all(c.frames.shape == (5, 32, 32, 3) and c.frames.dtype == np.uint8 for c in clips)
            outcomes[path.name] = meta.decoder
        except VideoError as exc:
            assert str(exc) and "\n" not in str(exc)
            outcomes[path.name] = f"error: {exc}"
    # the odd ones decord cannot open or reads wrong go to PyAV; all of them decode
    for name in ("av1.mkv", "newtonscradle.gif", "pigs_in_a_polka.gif", "vp9_no_duration.webm", "fire.mp4"):
        if name in outcomes:
            assert outcomes[name] == "pyav", (name, outcomes[name])
    assert not [n for n, o in outcomes.items() if o.startswith("error")], outcomes


def test_each_fixture_video_gives_full_or_padded_clips(video_dir):
    from lfqtok.pipeline.sources import list_items

    items = list_items([str(video_dir)])
    assert [i.key for i in items] == ["short", "sub_tall", "wide"]  # notes.txt is not a video
    results = {}
    for item in items:
        meta, clips = iter_clips(item.path, ClipSpec(size=32))
        results[item.key] = [(c.frames.shape, c.padded) for c in clips]
    assert results == {
        "short": [((17, 32, 32, 3), 12)],
        "sub_tall": [((17, 32, 32, 3), 0)],
        "wide": [((17, 32, 32, 3), 0), ((17, 32, 32, 3), 0)],
    }


def test_decoding_stops_at_max_clips_and_skips_converting_gaps(wide, monkeypatch):
    import lfqtok.pipeline.video as video

    decoded, converted = [], []
    real_frames, real_rgb = video._pyav_frames, video.frame_to_rgb

    def counting_frames(*args):
        for frame in real_frames(*args):
            decoded.append(frame.index)
            yield frame

    def counting_rgb(frame, *args):
        converted.append(frame)
        return real_rgb(frame, *args)

    monkeypatch.setattr(video, "_pyav_frames", counting_frames)
    monkeypatch.setattr(video, "frame_to_rgb", counting_rgb)
    meta, clips = iter_clips(str(wide), ClipSpec(size=16, clip_frames=9, max_clips=1), decoder="pyav")
    assert len(list(clips)) == 1 and decoded == list(range(9)) and len(converted) == 9  # a long video costs the same
    decoded.clear()
    converted.clear()
    meta, clips = iter_clips(str(wide), ClipSpec(size=16, clip_frames=9, clip_stride=15), decoder="pyav")
    assert len(list(clips)) == 3 and len(decoded) == 40 and len(converted) == 27  # gaps decoded, not converted


def test_a_corrupt_packet_is_skipped_not_fatal(tmp_path):
    data = bytearray(make_video(tmp_path / "v.mp4", frames=60, width=160, height=120, fps=24).read_bytes())
    middle = len(data) // 2
    data[middle : middle + 1000] = bytes(1000)  # zero a run of one frame's data (mp4: the index is at the end)
    (tmp_path / "broken.mp4").write_bytes(bytes(data))
    meta, clips = iter_clips(str(tmp_path / "broken.mp4"), ClipSpec(size=16, clip_frames=9), decoder="pyav")
    assert len(list(clips)) >= 5  # 6 with every frame; the bad packet costs at most its frame
