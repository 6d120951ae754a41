"""Do the clips of a `--scenes` encode respect the true cuts? Per labelled video: clips that cross a true cut, and the
clips found inside each true scene against the number expected there.

    lfqtok encode VIDEOS... -o OUT --scenes on --size 128 --device cpu
    python scripts/check_scene_clips.py LABELS_DIR OUT      # LABELS_DIR: from make_cuts.py or get_footage.py

Reads each sample's json (`frame_indices`, `scenes`, `clip_scenes`) and the run's clip settings. A true scene of L
decoded frames expects floor((L - span) / stride) + 1 clips (none when L < span), span = stride = clip_frames at the
native rate (the defaults; `--fps` and `--clip-stride` runs are not handled). Exits 1 when a clip crosses a true cut
or a true scene has other than its expected clips.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lfqtok import read_tokens


def expected_clips(length: int, span: int, stride: int) -> int:
    return (length - span) // stride + 1 if length >= span else 0


def check(labels: dict, out: Path) -> tuple[list[dict], bool]:
    """One row per sample whose source is labelled; whether every row is clean."""
    clip = json.loads((out / "lfqtok.json").read_text())["clip"]
    if clip.get("fps") or clip.get("clip_stride") not in (None, clip["clip_frames"]):
        raise SystemExit("only runs at the native rate with the default stride are handled")
    span = stride = clip["clip_frames"]
    by_path = {str(Path(v["path"]).resolve()): (name, v) for name, v in labels.items()}
    rows, clean = [], True
    for _, _, meta in read_tokens(out):
        if str(Path(meta["source"]).resolve()) not in by_path:
            continue
        name, label = by_path[str(Path(meta["source"]).resolve())]
        bounds = [0, *label["cuts"], label["frames"]]
        scenes = list(zip(bounds, bounds[1:]))
        clips = [(min(f), max(f)) for f in meta["frame_indices"]]
        crossing = [c for c in clips if any(c[0] < cut <= c[1] for cut in label["cuts"])]
        inside = [sum(1 for a, b in clips if start <= a and b < stop) for start, stop in scenes]
        expected = [expected_clips(stop - start, span, stride) for start, stop in scenes]
        wrong = [f"scene {start}-{stop - 1}: {got} not {want}" for (start, stop), got, want in zip(scenes, inside, expected) if got != want]
        if meta.get("padded_frames"):  # a one-scene video shorter than one clip: one padded clip is expected
            wrong = []
        clean &= not crossing and not wrong
        rows.append({"video": name, "true_cuts": len(label["cuts"]), "detected_scenes": len(meta.get("scenes", [])),
                     "clips": len(clips), "expected_clips": sum(expected), "crossing": crossing, "wrong_counts": wrong})
    return rows, clean


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("labels", type=Path, help="the folder holding labels.json")
    ap.add_argument("out", type=Path, help="the encode's output folder")
    args = ap.parse_args()
    rows, clean = check(json.loads((args.labels / "labels.json").read_text()), args.out)
    for row in rows:
        print(json.dumps(row))
    print(f"{len(rows)} videos, {sum(r['clips'] for r in rows)} clips (expected {sum(r['expected_clips'] for r in rows)}), "
          f"{sum(len(r['crossing']) for r in rows)} crossing a true cut: {'clean' if clean else 'NOT clean'}")
    sys.exit(0 if clean else 1)


if __name__ == "__main__":
    main()
