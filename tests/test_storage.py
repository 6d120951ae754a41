"""Object storage end to end against a real S3-compatible server (moto's, started on 127.0.0.1 by conftest's `s3`
fixture) through the real s3fs client: encode from and to a bucket equals a local encode, kill and resume, the
readers, and one clear line for each thing a user can get wrong. Samples' `source` differs by nature (a path vs a
URL): outputs are compared with it replaced by the source relative to its input root."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import s3fs
from typer.testing import CliRunner

import lfqtok
from lfqtok import storage
from lfqtok.cli import app
from lfqtok.errors import InputError, UsageError
from lfqtok.shards import read_tokens
from conftest import S3_SECRET, start_s3_server, use_s3_server
from videos import make_video

SIZE, FRAMES = 32, 9
OPTIONS = {"size": SIZE, "clip_frames": FRAMES, "workers": 0, "batch_size": 4, "device": "cpu"}


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    make_video(root / "a.mp4", frames=30, width=64, height=48, fps=24)
    make_video(root / "sub" / "b.webm", frames=20, width=48, height=64, fps=12, codec="libvpx-vp9")
    make_video(root / "c.MP4", frames=5, width=40, height=40, fps=10)
    (root / "notes.txt").write_text("not a video, ignored")
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a real video")
    return root


def upload(local: Path, url: str) -> None:
    fs, path = storage.filesystem(url)
    for file in sorted(p for p in local.rglob("*") if p.is_file()):
        fs.pipe_file(f"{path}/{file.relative_to(local).as_posix()}", file.read_bytes())


def _relative_source(source: str, roots: tuple[str, ...]) -> str:
    for root in roots:
        if source.startswith(root):
            return source[len(root):].lstrip("/")
    return source


def contents(out: str | Path, roots: tuple[str, ...]) -> dict[str, object]:
    """Every shard's members (json with `source` made relative to its input root) and stats minus `seconds`,
    read from a local dir or a URL prefix."""
    names = storage.list_names(str(out)) if storage.is_url(out) else sorted(p.name for p in Path(out).iterdir())
    files: dict[str, object] = {}
    for name in names:
        if name == "lfqtok.json":
            continue
        data = storage.read_bytes(storage.join(out, name))
        if name.endswith("_stats.json"):
            stats = json.loads(data)
            stats.pop("seconds")
            for failure in stats["failures"]:
                failure["source"] = _relative_source(failure["source"], roots)
            files[name] = stats
        else:
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
            for member, raw in members.items():
                if member.endswith(".json"):
                    meta = json.loads(raw)
                    meta["source"] = _relative_source(meta["source"], roots)
                    members[member] = meta
            files[name] = members
    return files


def test_encode_from_and_to_a_bucket_equals_a_local_encode(tmp_path, videos, model, s3):
    upload(videos, f"{s3}/videos")
    local = lfqtok.encode_dataset([str(videos)], tmp_path / "tok", model=model, samples_per_shard=2, **OPTIONS)
    remote = lfqtok.encode_dataset([f"{s3}/videos"], f"{s3}/tok", model=model, samples_per_shard=2, **OPTIONS)
    assert (remote.videos_ok, remote.videos_failed, remote.shards_written) == (local.videos_ok, local.videos_failed, 2)
    roots = (str(videos), f"{s3}/videos")
    assert contents(f"{s3}/tok", roots) == contents(tmp_path / "tok", roots)
    manifest = json.loads(storage.read_bytes(f"{s3}/tok/lfqtok.json"))
    assert manifest["inputs"] == [f"{s3}/videos"] and manifest["size"] == SIZE
    again = lfqtok.encode_dataset([f"{s3}/videos"], f"{s3}/tok", model=model, samples_per_shard=2, **OPTIONS)
    assert (again.shards_written, again.shards_skipped) == (0, 2)
