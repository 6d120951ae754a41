"""The prepared GPU-session script, run on the CPU at tiny size: it must work the one time a GPU is lent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from videos import make_video

from lfqtok.tokenizers.model import TokenizerConfig, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # each runs the whole script in a subprocess


def test_gpu_session_script_trains_exports_and_benchmarks(tmp_path):
    data = tmp_path / "data"
    make_video(data / "a.mp4", frames=24, width=48, height=40, fps=24)
    make_video(data / "b.mp4", frames=12, width=40, height=40, fps=24)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(photos / "p.png")
    env = {**os.environ, "OUT": str(tmp_path / "out"), "RUN": str(tmp_path / "run"), "DATA": str(data), "PHOTOS": str(photos), "DEVICE": "cpu", "TINY": "1", "MINUTES": "0.02",
           "PYTHON": sys.executable, "WHEELS": str(tmp_path / "no-wheels"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", "scripts/gpu_session.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = tmp_path / "out"
    assert load_tokenizer(out / "default.safetensors").config == TokenizerConfig.tiny()
    bench = (out / "bench_encode.txt").read_text()
    assert "encoder ceiling" in bench and "end to end / naive loop" in bench
    log = (out / "train.log").read_text()
    assert "done:" in log and "skipped" not in log and (out / "machine.txt").is_file()


def test_gpu_session_script_fails_when_training_fails(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "RUN": str(tmp_path / "run"), "DATA": str(tmp_path / "missing"), "DEVICE": "cpu", "TINY": "1",
           "PYTHON": sys.executable, "WHEELS": str(tmp_path / "no-wheels")}
    done = subprocess.run(["bash", "scripts/gpu_session.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and not (tmp_path / "out" / "bench_encode.txt").exists()


def test_eval_script_reports_decode_s_numbers_and_draws_a_sheet(tmp_path):
    """The quality report: the same PSNR/SSIM as `decode --json` on the same clips, naive baseline, colour, sheet."""
    import importlib.util
    import json

    import torch
    from typer.testing import CliRunner

    from lfqtok.inspect.decode import decode_samples
    from lfqtok.pipeline.encode import encode_dataset
    from lfqtok.tokenizers.model import Tokenizer, save_tokenizer

    data = tmp_path / "eval"
    make_video(data / "a.mp4", frames=20, width=48, height=40, fps=24)
    make_video(data / "b.mp4", frames=12, width=40, height=40, fps=24)
    torch.manual_seed(0)
    model = save_tokenizer(Tokenizer(TokenizerConfig.tiny()), tmp_path / "tiny.safetensors")
    spec = importlib.util.spec_from_file_location("eval_script", ROOT / "scripts" / "eval_tokenizer.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    sheet = tmp_path / "sheet.png"
    result = CliRunner().invoke(script.app, ["--model", str(model), "--data", str(data), "--size", "32", "--size", "64",
                                             "--clip-frames", "5", "--max-clips", "2", "--json", "--sheet", str(sheet)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    small, big = report["sizes"]
    assert (small["size"], big["size"], small["clips"]) == (32, 64, 4)  # 2 clips of a.mp4, 2 of b.mp4
    for row in (small["mean"], small["per_video"]["a.mp4"]):
        assert {"psnr", "ssim", "psnr_luma", "psnr_chroma", "colour_shift", "naive_psnr", "naive_psnr_chroma"} <= set(row)
    assert sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    encode_dataset([str(data)], tmp_path / "tokens", model=str(model), size=32, clip_frames=5, max_clips=2, device="cpu", workers=1)
    rows = {Path(r["source"]).name: r for r in decode_samples([tmp_path / "tokens"], tmp_path / "prev", fmt="png", device="cpu")}
    for name in ("a.mp4", "b.mp4"):
        for key in ("psnr", "ssim", "psnr_chroma"):
            assert rows[name][key] == pytest.approx(small["per_video"][name][key], abs=1e-9)
