"""Benchmark encoding from and to object storage against the same videos on local disk, in one run.

    python scripts/bench_storage.py VIDEO_DIR [--model default] [--size 64] [--max-clips 2] [--latency-ms 20] [--repeat 2] [--samples-per-shard 1000]

Starts moto's S3 server on 127.0.0.1 behind a proxy that delays every request by --latency-ms (localhost has no
network latency; a cloud bucket has tens of ms per request), puts four copies of VIDEO_DIR on it and on local
disk, then runs in subprocesses, interleaved, --repeat times:
- local 1x / 4x: `lfqtok.encode_dataset` of one copy / all four copies on local disk to a local dir;
- s3 1x / 4x: the same videos from `s3://bench/videos/...` to `s3://bench/tokens-.../` (read-ahead, streamed upload).
Prints frames/s of each (best of --repeat; a run's time includes its start: imports, listing, model load), the
s3/local ratio at both sizes and of the marginal throughput (what the 3 extra copies add: start-up cancels
out, which is what a large dataset sees), peak RSS of the encode process at 1x and 4x (decode workers are separate
processes whose memory does not grow with the dataset either), and the CPU seconds the S3 server and the proxy
spent during each run: on this machine they share the cores with the encode, which a real bucket does not.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

RUN = """
import json, resource, sys, time
import lfqtok
t = time.perf_counter()
s = lfqtok.encode_dataset(json.loads(sys.argv[1]), sys.argv[2], **json.loads(sys.argv[3]))
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "frames": s.frames, "videos": s.videos_ok, "failed": s.videos_failed,
                  "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server() -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("moto server did not start")


def delaying_proxy(upstream: int, latency: float) -> int:
    """A TCP forwarder that holds each request `latency` seconds before passing it on (one round trip's worth)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def pump(a: socket.socket, b: socket.socket, delay: float) -> None:
        try:
            while data := a.recv(1 << 16):
                if delay and (data[:4] in (b"GET ", b"PUT ", b"HEAD", b"POST", b"DELE")):
                    time.sleep(delay)
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.close()
            except OSError:
                pass

    def accept() -> None:
        while True:
            client, _ = listener.accept()
            server = socket.create_connection(("127.0.0.1", upstream))
            threading.Thread(target=pump, args=(client, server, latency), daemon=True).start()
            threading.Thread(target=pump, args=(server, client, 0.0), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def encode(inputs: list[str], out: str, options: dict) -> dict:
    done = subprocess.run([sys.executable, "-c", RUN, json.dumps(inputs), out, json.dumps(options)],
                          capture_output=True, text=True, env=os.environ)
    if done.returncode != 0:
        raise SystemExit(f"encode failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("videos", type=Path)
    parser.add_argument("--model", default="default")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--clip-frames", type=int, default=17)
    parser.add_argument("--max-clips", type=int, default=2)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--samples-per-shard", type=int, default=1000, help="as `lfqtok encode` (its default)")
    args = parser.parse_args()

    server, port = start_server()
    try:
        proxy = delaying_proxy(port, args.latency_ms / 1000)
        os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{proxy}", AWS_ACCESS_KEY_ID="bench",
                          AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
        import s3fs

        fs = s3fs.S3FileSystem()
        fs.mkdir("bench")
        files = sorted(p for p in args.videos.rglob("*") if p.is_file())
        size = sum(p.stat().st_size for p in files)
        for copy in range(4):
            for p in files:
                fs.pipe_file(f"bench/videos/{copy}/{p.relative_to(args.videos).as_posix()}", p.read_bytes())
        options = {"model": args.model, "size": args.size, "clip_frames": args.clip_frames, "max_clips": args.max_clips,
                   "device": "cpu", "samples_per_shard": args.samples_per_shard}
        runs: dict[str, list[dict]] = {name: [] for name in ("local 1x", "s3 1x", "local 4x", "s3 4x")}
        with tempfile.TemporaryDirectory() as tmp:
            for copy in range(4):
                shutil.copytree(args.videos, f"{tmp}/videos/{copy}")
            inputs = {"local 1x": f"{tmp}/videos/0", "s3 1x": "s3://bench/videos/0", "local 4x": f"{tmp}/videos",
                      "s3 4x": "s3://bench/videos"}
            for n in range(args.repeat):  # interleaved, so a busy moment of the shared machine hits every kind
                for name, src in inputs.items():
                    out = f"s3://bench/tokens-{n}-{name[-2:]}" if name.startswith("s3") else f"{tmp}/tokens-{n}-{name[-2:]}"
                    before = cpu_seconds(server.pid) + sum(os.times()[:2])
                    runs[name].append(encode([src], out, options))
                    runs[name][-1]["server_cpu"] = cpu_seconds(server.pid) + sum(os.times()[:2]) - before
        best = {k: min(v, key=lambda r: r["seconds"]) for k, v in runs.items()}
        fps = {k: r["frames"] / r["seconds"] for k, r in best.items()}
        print(f"{len(files)} files ({size / 2**20:.1f} MiB) per copy, size {args.size}, {args.clip_frames}-frame clips, "
              f"max {args.max_clips} clips/video, {args.latency_ms:g} ms per request, best of {args.repeat}, {os.cpu_count()} CPUs")
        print(f"{'run':<12}{'videos':>8}{'frames':>8}{'seconds':>9}{'frames/s':>10}{'peak RSS MiB':>14}{'server CPU s':>14}")
        for name, r in best.items():
            print(f"{name:<12}{r['videos']:>8}{r['frames']:>8}{r['seconds']:>9.2f}{fps[name]:>10.1f}{r['rss_mib']:>14.0f}"
                  f"{r['server_cpu']:>14.2f}")
        print(f"s3 / local throughput: 1x {fps['s3 1x'] / fps['local 1x']:.3f}, 4x {fps['s3 4x'] / fps['local 4x']:.3f}")
        marginal = {k: (best[f"{k} 4x"]["frames"] - best[f"{k} 1x"]["frames"]) / (best[f"{k} 4x"]["seconds"] - best[f"{k} 1x"]["seconds"])
                    for k in ("local", "s3")}  # the 3 extra copies' frames over their extra seconds: start-up cancels out
        print(f"marginal frames/s (4x minus 1x, start-up excluded): local {marginal['local']:.1f}, s3 {marginal['s3']:.1f}, "
              f"s3 / local {marginal['s3'] / marginal['local']:.3f}")
        print(f"peak RSS 4x / 1x: s3 {best['s3 4x']['rss_mib'] / best['s3 1x']['rss_mib']:.3f}, "
              f"local {best['local 4x']['rss_mib'] / best['local 1x']['rss_mib']:.3f}")
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
