"""record.py: the sample json in one place: plain samples keep exactly their old fields; table items add row,
segment, time_range, clip_times and columns, and their caption becomes the `{key}.txt` member."""

from __future__ import annotations

from lfqtok.pipeline.record import ClipOrigin, sample_members, sample_record
from lfqtok.pipeline.sources import VideoItem
from lfqtok.pipeline.video import VideoMeta

META = VideoMeta(fps=30.0, num_frames=300, orig_size=(640, 360), decoder="pyav")
CLIPS = [ClipOrigin([0, 1, 2, 3, 4], 0, (0.0, 0.133333333)), ClipOrigin([5, 6, 7, 8, 8], 1, (0.1666666, 0.2666666))]


def test_a_plain_sample_has_exactly_the_fields_it_always_had():
    record = sample_record(VideoItem("a", "v/a.mp4", "v/a.mp4"), META, CLIPS, (2, 2, 16, 16))
    assert list(record) == ["source", "frame_indices", "clips", "padded_frames", "fps", "num_frames", "orig_size",
                            "decoder", "tokens_shape"]
    assert record["clips"] == [[0, 5], [5, 9]] and record["padded_frames"] == 1
    assert sample_members(VideoItem("a", "v/a.mp4", "v/a.mp4")) == {}


def test_a_table_range_records_where_it_came_from_and_when_each_clip_is():
    item = VideoItem("k", "v/a.mp4", "v/a.mp4", span=(12.5, 20.0), row=7, segment=1, caption="a dog runs ☃",
                     columns={"score": 5.5, "camera motion": "pan"})
    record = sample_record(item, META, CLIPS, (2, 2, 16, 16))
    assert record["row"] == 7 and record["segment"] == 1 and record["time_range"] == [12.5, 20.0]
    assert record["clip_times"] == [[0.0, 0.133333], [0.166667, 0.266667]]
    assert record["columns"] == {"score": 5.5, "camera motion": "pan"}
    assert sample_members(item) == {"txt": "a dog runs ☃".encode()}
