"""The clip planner (video.plan_clips): clips inside scenes, alignment per scene, --max-clips over the video,
padding only for a one-scene video, and each clip's first and last frame time."""

from __future__ import annotations

import numpy as np
import pytest

from lfqtok.errors import VideoError
from lfqtok.pipeline.video import ClipSpec, Frame, plan_clips

FPS = 10.0


def frames(*scene_lengths: int):
    """A stream of tiny frames, scene by scene; each frame's pixels hold its index."""
    index = 0
    for scene, length in enumerate(scene_lengths):
        for _ in range(length):
            yield Frame(index, index / FPS, np.full((2, 2, 3), index % 256, np.uint8), scene)
            index += 1


def plan(*scene_lengths: int, **spec):
    return list(plan_clips(frames(*scene_lengths), ClipSpec(**spec), lambda f: f.data))


def test_one_scene_plans_as_fixed_windows():
    clips = plan(23, clip_frames=5)
    assert [c.frame_indices[0] for c in clips] == [0, 5, 10, 15]
    assert all(c.scene == 0 and c.padded == 0 for c in clips)


def test_no_clip_holds_frames_of_two_scenes_and_each_scene_starts_its_own_clips():
    clips = plan(23, 12, clip_frames=5)
    starts = [c.frame_indices[0] for c in clips]
    assert starts == [0, 5, 10, 15, 23, 28]  # frames 20-22 (the rest of scene 0) are dropped, scene 1 starts at 23
    assert [c.scene for c in clips] == [0, 0, 0, 0, 1, 1]
    for clip in clips:
        assert all((i >= 23) == (clip.scene == 1) for i in clip.frame_indices)


@pytest.mark.parametrize("stride", [2, 5, 9])
def test_strides_restart_at_every_scene(stride):
    clips = plan(12, 12, clip_frames=5, clip_stride=stride)
    for scene, first in ((0, 0), (1, 12)):
        starts = [c.frame_indices[0] for c in clips if c.scene == scene]
        assert starts == list(range(first, first + 12 - 5 + 1, stride))


def test_a_scene_shorter_than_a_clip_gives_none_and_is_never_padded():
    clips = plan(10, 3, 10, clip_frames=5)
    assert [c.scene for c in clips] == [0, 0, 2, 2]
    assert plan(3, 4, clip_frames=5) == []  # several short scenes: no clip, not a padded one


def test_a_one_scene_video_shorter_than_a_clip_is_padded_as_before():
    [clip] = plan(3, clip_frames=5)
    assert clip.frame_indices == [0, 1, 2, 2, 2] and clip.padded == 2
    assert clip.times == (0.0, 0.2)
    with pytest.raises(VideoError, match="shorter than one clip"):
        plan(3, clip_frames=5, pad_short=False)


def test_max_clips_counts_over_the_whole_video():
    clips = plan(10, 10, 10, clip_frames=5, max_clips=3)
    assert [(c.scene, c.frame_indices[0]) for c in clips] == [(0, 0), (0, 5), (1, 10)]


def test_clip_times_are_the_first_and_last_frame_times():
    clips = plan(8, 9, clip_frames=5)
    assert [c.times for c in clips] == [(0.0, 0.4), (0.8, 1.2)]
    assert all(np.all(c.frames[:, 0, 0, 0] == c.frame_indices) for c in clips)
