"""The sample record: each sample's `{key}.json`, built in this one place from what the run learned about it.

Every field, and when it is present, is documented in docs/format.md; the writer thread only hands over the item,
what its decode reported and where each clip came from. Fields that a run does not use are left out, so runs
without shape options, tables or scenes write exactly the records they always did.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from .shapes import Plan
from .sources import VideoItem
from .video import VideoMeta

TIME_DIGITS = 6  # seconds are recorded to the microsecond


@dataclass
class ClipOrigin:
    """Where a clip's frames came from: all the writer keeps of a clip besides its tokens."""

    frame_indices: list[int]
    padded: int  # padding frames at its end (a video shorter than one clip)
    times: tuple[float, float] = (0.0, 0.0)  # presentation times (s) of its first and last source frame
    scene: int = 0  # the scene it lies in
    flipped: bool = False  # the tokens of the mirrored clip (--hflip)


def shape_fields(plan: Plan) -> dict[str, Any]:
    """A sample's fields in a run with shape options: frame size, valid (unpadded) box, bucket."""
    fields = {"frame_size": list(plan.layout.frame), "valid": list(plan.layout.valid)}
    return fields | ({"bucket": list(plan.bucket)} if plan.bucket is not None else {})


def seconds(t: float) -> float:
    """A time as recorded: float seconds rounded to the microsecond."""
    return round(float(t), TIME_DIGITS)


def sample_record(
    item: VideoItem, meta: VideoMeta, clips: Sequence[ClipOrigin], tokens_shape: Sequence[int], *,
    shaped: bool = False,
) -> dict[str, Any]:
    """The json of one sample: its source, each clip's frames, what the video is, its token shape, then what the
    run's options add: `shaped` (shape options: frame size, valid box, bucket), the item's class and label, its
    table row and range, and each clip's first and last frame time where time matters (a table's item, a `--scenes`
    run: the decode recorded `meta.scenes`), with the scenes and each clip's scene."""
    indices = [list(map(int, c.frame_indices)) for c in clips]
    record: dict[str, Any] = {
        "source": item.source,
        "frame_indices": indices,
        "clips": [[ix[0], ix[-1] + 1] for ix in indices],
        "padded_frames": int(sum(c.padded for c in clips)),
        "fps": meta.fps,
        "num_frames": meta.num_frames,
        "orig_size": list(meta.orig_size),
        "decoder": meta.decoder,
        **(shape_fields(meta.plan) if shaped and meta.plan is not None else {}),
        "tokens_shape": list(tokens_shape),
    }
    if item.class_name is not None:
        record.update({"class": item.class_name, "label": item.label})
    table = {"row": item.row, "segment": item.segment,
             "time_range": [seconds(t) for t in item.span] if item.span is not None else None}
    record.update({name: value for name, value in table.items() if value is not None})
    scenes = meta.scenes if not item.is_image else None  # a --scenes run
    timed = item.row is not None or item.span is not None or scenes is not None
    if timed and not item.is_image:
        record["clip_times"] = [[seconds(c.times[0]), seconds(c.times[1])] for c in clips]
    if scenes is not None:
        record["scenes"] = [[seconds(start), seconds(end)] for start, end in scenes]
        record["clip_scenes"] = [int(c.scene) for c in clips]
    if item.columns is not None:
        record["columns"] = item.columns
    return record


def sample_members(item: VideoItem) -> dict[str, bytes]:
    """Members the record adds beside the json: the caption as `{key}.txt` (UTF-8), what webdataset, Hugging Face
    datasets and video2dataset readers take as a sample's text."""
    return {"txt": item.caption.encode("utf-8")} if item.caption is not None else {}
