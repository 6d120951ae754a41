"""The prepared GPU-session script, run on the CPU at tiny size: it must work the one time a GPU is lent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from videos import make_video

from lfqtok.model import TokenizerConfig, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_session_script_trains_exports_and_benchmarks(tmp_path):
    data = tmp_path / "data"
    make_video(data / "a.mp4", frames=24, width=48, height=40, fps=24)
    make_video(data / "b.mp4", frames=12, width=40, height=40, fps=24)
    env = {**os.environ, "OUT": str(tmp_path / "out"), "RUN": str(tmp_path / "run"), "DATA": str(data), "DEVICE": "cpu", "TINY": "1", "MINUTES": "0.02",
           "PYTHON": sys.executable, "WHEELS": str(tmp_path / "no-wheels"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", "scripts/gpu_session.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = tmp_path / "out"
    assert load_tokenizer(out / "default.safetensors").config == TokenizerConfig.tiny()
    bench = (out / "bench_encode.txt").read_text()
    assert "encoder ceiling" in bench and "end to end / naive loop" in bench
    assert "done:" in (out / "train.log").read_text() and (out / "machine.txt").is_file()


def test_gpu_session_script_fails_when_training_fails(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "RUN": str(tmp_path / "run"), "DATA": str(tmp_path / "missing"), "DEVICE": "cpu", "TINY": "1",
           "PYTHON": sys.executable, "WHEELS": str(tmp_path / "no-wheels")}
    done = subprocess.run(["bash", "scripts/gpu_session.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and not (tmp_path / "out" / "bench_encode.txt").exists()
