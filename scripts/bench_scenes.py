"""Shot detection, measured: accuracy and speed of each `--scenes` detector, and what `--scenes on` costs an encode.

    python scripts/make_cuts.py /tmp/cuts            # the test set (real cuts at known frames, cut-free stretches)
    python scripts/bench_scenes.py /tmp/cuts [--encode [--footage ../shared/data/videos/train]]

Per detector: precision, recall and F1 of the cuts in the cut videos (a cut found within one frame of a true one
counts), the cuts it invents in the cut-free videos (each named), and frames/s of the detector alone on the
thumbnails (one torch thread, as in a decode worker). Thumbnails come from lfqtok's own decode path
(`iter_frames` at the pipeline's scaled size, then `scenes.thumbnail`). Then `--scenes on` through the encode's
decode path with decord and with PyAV: the same scenes? `--encode`: the same encode of the cut videos with
`--scenes off` and `--scenes on` (CPU, default model), once and over `--copies` copies, best of `--repeats`: the
on/off throughput ratio end to end and in the steady state of a long run (wall and CPU seconds).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from lfqtok.pipeline.scenes import detect_cuts, make_detector, scene_spec, thumbnail
from lfqtok.pipeline.video import ClipSpec, iter_clips, iter_frames

TOLERANCE = 1  # frames


def score(found: list[int], truth: list[int]) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives): each true cut matched at most once, within TOLERANCE."""
    left = list(truth)
    tp = 0
    for cut in found:
        near = [t for t in left if abs(t - cut) <= TOLERANCE]
        if near:
            left.remove(min(near, key=lambda t: abs(t - cut)))
            tp += 1
    return tp, len(found) - tp, len(left)


def bench_detectors(labels: dict, size: int) -> dict:
    thumbs = {name: [thumbnail(f) for f in iter_frames(v["path"], size=size, decoder="pyav")] for name, v in labels.items()}
    results = {}
    for mode in ("content", "transnetv2", "on"):
        spec = scene_spec(mode)
        detect_cuts(thumbs[next(iter(thumbs))][:10], spec)  # load the model outside the timing
        tp = fp = fn = frames = 0
        invented, misses, seconds, windows, rechecked = [], [], 0.0, 0, 0
        for name, v in labels.items():
            start = time.perf_counter()
            detector = make_detector(spec)
            found = [cut for thumb in thumbs[name] for cut in detector.push(thumb)] + detector.finish()
            seconds += time.perf_counter() - start
            windows += getattr(detector, "windows", 0)
            rechecked += getattr(detector, "rechecked", 0)
            frames += len(thumbs[name])
            t, f, n = score(found, v["cuts"])
            if v["kind"] == "cuts":
                tp, fp, fn = tp + t, fp + f, fn + n
                misses += [f"{name}: missed {sorted(set(v['cuts']) - {c for c in v['cuts'] if any(abs(c - x) <= TOLERANCE for x in found)})}"] if n else []
                misses += [f"{name}: extra {[x for x in found if all(abs(c - x) > TOLERANCE for c in v['cuts'])]}"] if f else []
            elif found:
                invented.append(f"{name}: {found}")
        precision, recall = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
        results[mode] = {
            **spec.settings(), "cuts": tp + fn, "precision": round(precision, 3),
            "recall": round(recall, 3), "f1": round(2 * precision * recall / max(precision + recall, 1e-9), 3),
            "errors_in_cut_videos": misses, "invented_in_cut_free": invented,
            "frames_per_s": round(frames / seconds, 1), "frames": frames,
            **({"network_windows": windows, "rechecked_in_float32": rechecked} if mode != "content" else {}),
        }
        print(json.dumps({mode: results[mode]}), flush=True)
    return results


def bench_decoders(labels: dict, size: int) -> dict:
    """`--scenes on` through the encode's decode path (`iter_clips`) with decord and with PyAV: the scene starts of
    every video decord reads, per decoder, and whether they agree."""
    spec = ClipSpec(size=size, scenes=scene_spec("on"))
    result = {}
    for name, v in labels.items():
        starts = {}
        for decoder in ("decord", "pyav"):
            meta, clips = iter_clips(v["path"], spec, decoder=decoder)
            for _ in clips:
                pass
            starts[meta.decoder] = [round(start, 3) for start, _ in meta.scenes]
        if "decord" in starts:  # decord reads it (else both runs were PyAV's)
            result[name] = {"same": starts["decord"] == starts["pyav"], "scene_starts_s": starts["pyav"]}
    print(json.dumps({"decoders": result}), flush=True)
    return result


def bench_decode_stage(name: str, inputs: list[str], size: int, repeats: int) -> dict:
    """The decode stage alone (`iter_clips` in this process, what one decode worker does), --scenes off vs on: best
    of `repeats` seconds each, and the clip frames it cut."""
    result: dict = {"inputs": name}
    for mode in ("off", "on"):
        spec = ClipSpec(size=size, scenes=scene_spec(mode))
        best, frames = 1e9, 0
        for _ in range(repeats):
            start, frames = time.perf_counter(), 0
            for path in inputs:
                _, clips = iter_clips(path, spec)
                frames += sum(len(clip.frame_indices) for clip in clips)
            best = min(best, time.perf_counter() - start)
        result |= {f"seconds_{mode}": round(best, 2), f"clip_frames_{mode}": frames}
    print(json.dumps({"decode_stage": result}), flush=True)
    return result


def bench_encode(name: str, inputs: list[str], repeats: int, copies: int) -> dict:
    """`lfqtok encode` of `inputs` (default model, CPU, --size 128, one decode worker), --scenes off vs on, once over
    the inputs and once over `copies` copies of them (links with other names): best of `repeats` runs each,
    alternating, every run into a fresh OUT. Wall and CPU seconds (the run's processes, decode worker included), and
    on/off ratios of throughput: end to end (one pass, start-up included) and steady (the time the extra copies
    took: start-up, the model load and a worker's first network load cancel out, as in a long dataset run)."""
    best: dict[tuple[str, int], tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        lists = {}
        for count in (1, copies):
            links = Path(tmp) / f"x{count}"
            links.mkdir()
            for copy in range(count):
                for path in inputs:
                    (links / f"{copy}_{Path(path).name}").symlink_to(Path(path).resolve())
            lists[count] = Path(tmp) / f"x{count}.txt"
            lists[count].write_text("".join(f"{link}\n" for link in sorted(links.iterdir())))
        for repeat in range(repeats):
            for count in (1, copies):
                for mode in ("off", "on"):
                    out = Path(tmp) / f"out_{mode}_{count}_{repeat}"  # a fresh OUT each time: a rerun into the same one resumes
                    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
                    done = subprocess.run([sys.executable, "-m", "lfqtok", "encode", f"@{lists[count]}", "-o", str(out),
                                           "--size", "128", "--device", "cpu", "--scenes", mode, "--workers", "1", "--json"],
                                          check=True, capture_output=True, text=True)
                    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
                    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
                    best[mode, count] = tuple(min(a, b) for a, b in zip(best.get((mode, count), (1e9, 1e9)), (wall, cpu)))
                    if count == 1:
                        frames = json.loads(done.stdout)["frames"]
    result = {"inputs": name, "videos": len(inputs), "frames_encoded_on": frames, "copies": copies}
    for i, clock in enumerate(("wall", "cpu")):
        result |= {f"{clock}_s_{mode}_x{count}": round(best[mode, count][i], 2) for mode in ("off", "on") for count in (1, copies)}
        result[f"{clock}_end_to_end_on_vs_off"] = round(best["off", 1][i] / best["on", 1][i], 3)
        result[f"{clock}_steady_on_vs_off"] = round((best["off", copies][i] - best["off", 1][i]) / (best["on", copies][i] - best["on", 1][i]), 3)
    print(json.dumps({"encode": result}), flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cuts", type=Path, help="the folder scripts/make_cuts.py wrote")
    ap.add_argument("--size", type=int, default=128, help="the encode's --size: frames are scaled to it, then thumbnailed")
    ap.add_argument("--encode", action="store_true", help="also time an encode with --scenes off and on")
    ap.add_argument("--encode-only", action="store_true", help="only the encode timing")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--copies", type=int, default=3, help="the steady-state timing encodes this many copies of the inputs")
    ap.add_argument("--footage", type=Path, help="also time the encode of this folder's videos (footage with few cuts)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    labels = json.loads((args.cuts / "labels.json").read_text())
    if not args.encode_only:
        bench_detectors(labels, args.size)
        bench_decoders(labels, args.size)
    if args.encode or args.encode_only:
        sets = {"cut videos": [v["path"] for v in labels.values() if v["kind"] == "cuts"]}
        if args.footage:
            sets[str(args.footage)] = sorted(str(p) for p in args.footage.iterdir() if p.suffix in (".mp4", ".webm", ".avi"))
        for name, inputs in sets.items():
            bench_decode_stage(name, inputs, args.size, args.repeats)
            bench_encode(name, inputs, args.repeats, args.copies)


if __name__ == "__main__":
    main()
