"""Shared fixtures: synthetic videos (tests/videos.py, importable as `videos`) and the real test data dir."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # `from videos import make_video` in any test module

from videos import make_video  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LFQTOK_SHARED") or REPO.parent / "shared")  # the shared data dir beside the checkout
DATA = SHARED / "data" / "videos"


def shared_dir() -> Path | None:
    """The project's shared folder: $LFQTOK_SHARED, else the first `shared` beside the repo or one of its parents."""
    if os.environ.get("LFQTOK_SHARED"):
        return Path(os.environ["LFQTOK_SHARED"])
    repo = Path(__file__).resolve().parents[1]
    return next((p / "shared" for p in repo.parents if (p / "shared").is_dir()), None)


@pytest.fixture(scope="session")
def omv2_golden() -> Path:
    """Golden vectors of an Open-MAGVIT2 video tokenizer (shared/golden/open_magvit2_video); skipped where absent."""
    shared = shared_dir()
    path = shared / "golden" / "open_magvit2_video" if shared else None
    if path is None or not (path / "video_small.ckpt").is_file():
        pytest.skip(f"Open-MAGVIT2 golden vectors not found ({path or 'no shared folder beside the repo'}; set LFQTOK_SHARED)")
    return path


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory) -> Path:
    """A small directory of synthetic videos: landscape, portrait, VP9 WebM, one shorter than a clip, a non-video."""
    root = tmp_path_factory.mktemp("videos")
    make_video(root / "wide.mp4", frames=40, width=96, height=64, fps=24)
    make_video(root / "sub" / "tall.webm", frames=20, width=48, height=80, fps=12, codec="libvpx-vp9")
    make_video(root / "short.MP4", frames=5, width=40, height=40, fps=10)
    (root / "notes.txt").write_text("not a video")
    return root


@pytest.fixture(scope="session")
def model(tmp_path_factory) -> str:
    """Path of a tiny random tokenizer checkpoint (seeded): what tests pass as `--model`."""
    import torch

    from lfqtok.tokenizers.model import Tokenizer, TokenizerConfig, save_tokenizer

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_tokenizer(Tokenizer(TokenizerConfig.tiny()), path)
    return str(path)


@pytest.fixture
def one_thread():
    """One torch thread: on a busy shared CPU two threads make tiny convs 10-50x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def real_videos() -> Path:
    """SHARED/data/videos (train, eval, edge): ../shared beside the repository, or $LFQTOK_SHARED; tests using
    it are skipped, saying where they looked, where it is absent."""
    if not DATA.is_dir():
        pytest.skip(f"real test videos not found at {DATA} (put the shared data dir beside the repository or set LFQTOK_SHARED)")
    return DATA


__all__ = ["make_video"]


# an S3-compatible server on 127.0.0.1 (moto's standalone server, as s3fs's own tests use)

S3_SECRET = "lfqtok-test-secret-Zq81"  # the secret key every S3 test uses: it must appear in no output


def kill_9_once(args: list[str], done) -> None:
    """Run `args` and kill -9 it as soon as `done()` holds (a shard committed, say), or after 60 s, or not at all if
    it ended first: an encode killed mid-run."""
    proc = subprocess.Popen(args)
    deadline = time.time() + 60
    while not done() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_s3_server(**env: str):
    """`python -m moto.server` on a free port (a real process, so tests can stop it); returns (process, endpoint)."""
    import socket

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **env},
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto server did not start")


def use_s3_server(monkeypatch, endpoint: str) -> None:
    """Point the standard AWS variables (what every s3fs client and `lfqtok` subprocess reads) at `endpoint`."""
    import s3fs

    for name, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "lfqtok-test-key",
                        "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()  # a client made for another endpoint must not be reused


@pytest.fixture(scope="session")
def s3_server():
    """One moto S3 server for the session: its endpoint URL."""
    pytest.importorskip("s3fs")
    pytest.importorskip("moto.server")
    proc, endpoint = start_s3_server()
    yield endpoint
    proc.kill()
    proc.wait()


@pytest.fixture
def s3(s3_server, monkeypatch) -> str:
    """A fresh empty bucket on the test server, as "s3://bucket", with the AWS environment pointing at it."""
    import uuid

    import s3fs

    use_s3_server(monkeypatch, s3_server)
    bucket = f"lfqtok-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem().mkdir(bucket)
    return f"s3://{bucket}"


# an HTTP server on 127.0.0.1 that serves a folder and can stall, answer 403/500 or hang up (tests/http_server.py)


@pytest.fixture
def http_server(tmp_path_factory):
    """A started `HttpServer` serving a fresh empty folder (`http_server.root`: put files there; `behave(path, how)`
    makes a path misbehave); stopped, with every thread joined, after the test."""
    pytest.importorskip("aiohttp")  # what fsspec's http backend needs
    from http_server import HttpServer

    with HttpServer(tmp_path_factory.mktemp("http")) as server:
        yield server
