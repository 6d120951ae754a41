"""Token shards read with the libraries users already have: Hugging Face `datasets` and Ray Data return the same
tokens (and json) as lfqtok's own reader, for shards from an independent writer and from `encode_dataset`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from token_shards import write_token_dir

import lfqtok


@pytest.fixture(scope="module")
def token_dirs(tmp_path_factory, model, video_dir) -> list[Path]:
    """Two token dirs: one from the independent writer, one from encode_dataset with the tiny model."""
    from lfqtok.pipeline.encode import EncodeConfig, encode_dataset

    root = tmp_path_factory.mktemp("interop")
    write_token_dir(root / "written", [3, 2])
    config = EncodeConfig(model=model, size=32, clip_frames=5, workers=0, device="cpu", samples_per_shard=2)
    encode_dataset([video_dir], root / "encoded", config)
    return [root / "written", root / "encoded"]


def expected(tokens_dir: Path) -> dict[str, tuple[np.ndarray, dict]]:
    return {key: (tokens, meta) for key, tokens, meta in lfqtok.read_tokens(tokens_dir)}


def test_hugging_face_datasets_reads_the_same_tokens(tmp_path, token_dirs, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    from datasets import load_dataset

    for tokens_dir in token_dirs:
        tars = sorted(str(p) for p in tokens_dir.glob("*.tar"))
        ds = load_dataset("webdataset", data_files={"train": tars}, split="train", cache_dir=str(tmp_path / "cache"))
        rows = {row["__key__"]: row for row in ds.with_format("numpy")}
        want = expected(tokens_dir)
        assert set(rows) == set(want)
        for key, (tokens, meta) in want.items():
            got = np.asarray(rows[key]["tokens.npy"])
            assert got.shape == tokens.shape and np.array_equal(got, tokens)
            assert rows[key]["json"]["source"] == meta["source"]


def test_ray_data_reads_the_same_tokens(token_dirs):
    # this file runs after test_ray_engine.py (file order): a cluster torn down seconds earlier in the same process
    # is still found by ray.init(address="auto"), which that module's first test expects to fail
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)  # never a cluster already here
    try:
        for tokens_dir in token_dirs:
            rows = ray.data.read_webdataset(str(tokens_dir), file_extensions=["tar"]).take_all()
            got = {row["__key__"]: row for row in rows}
            want = expected(tokens_dir)
            assert set(got) == set(want)
            for key, (tokens, meta) in want.items():
                assert got[key]["tokens.npy"].dtype == tokens.dtype and np.array_equal(got[key]["tokens.npy"], tokens)
                assert got[key]["json"]["source"] == meta["source"]
    finally:
        ray.shutdown()
