"""The CLI as a user drives it: exit codes, one-line errors, JSON on stdout, the commands chained."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lfqtok.cli import app
from videos import make_video

try:  # click >= 8.2 keeps stderr apart by default; older versions need mix_stderr=False
    runner = CliRunner(mix_stderr=False)
except TypeError:
    runner = CliRunner()

COMMON = ["--size", "32", "--clip-frames", "9", "--workers", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    make_video(root / "one.mp4", frames=20, width=64, height=48, fps=24)
    make_video(root / "two.mp4", frames=12, width=48, height=48, fps=24)
    (root / "zz_bad.mp4").write_bytes(b"garbage" * 100)
    return root


def run(*args: str):
    return runner.invoke(app, list(args))


def assert_one_line_error(result, code: int, alone: bool = True) -> None:
    """Exit code `code`, no traceback, and the error as the last line of stderr (its only line if `alone`)."""
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("lfqtok: error:"), result.stderr
    assert len(lines) == 1 or not alone, result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_encode_then_stats_then_decode(tmp_path, videos, model):
    out, previews = tmp_path / "tok", tmp_path / "prev"
    result = run("encode", str(videos), "-o", str(out), "--model", model, *COMMON, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["videos_ok"] == 2 and summary["videos_failed"] == 1
    assert list(summary["failures_by_reason"].values()) == [1]

    result = run("stats", str(out), "--json", "--top", "3")
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["num_samples"] == 2 and len(stats["top"]) <= 3
    assert stats["num_tokens"] == summary["tokens"]

    result = run("decode", str(out), "-o", str(previews), "--format", "gif", "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 2 and all(Path(r["output"]).exists() for r in rows)
    assert all(r["psnr"] is not None for r in rows)


def test_strict_makes_a_failed_video_fail_the_run(tmp_path, videos, model):
    result = run("encode", str(videos), "-o", str(tmp_path / "tok"), "--model", model, *COMMON, "--strict")
    assert_one_line_error(result, 1, alone=False)  # after the progress display of the finished run
    assert "zz_bad.mp4" in result.stderr.splitlines()[-1]
    assert (tmp_path / "tok" / "00000_stats.json").exists()  # everything else was still written


def test_missing_input_is_one_line(tmp_path, model):
    result = run("encode", str(tmp_path / "nope"), "-o", str(tmp_path / "tok"), "--model", model, *COMMON)
    assert_one_line_error(result, 1)
    assert "nope" in result.stderr


def test_bad_option_is_a_usage_error(tmp_path, videos, model):
    result = run("encode", str(videos), "-o", str(tmp_path / "tok"), "--model", model, *COMMON, "--batch-size", "0")
    assert_one_line_error(result, 2)
    assert "--batch-size" in result.stderr


def test_wrong_model_is_one_line(tmp_path, videos):
    bogus = tmp_path / "model.safetensors"
    bogus.write_bytes(b"not a checkpoint")
    result = run("encode", str(videos), "-o", str(tmp_path / "tok"), "--model", str(bogus), *COMMON)
    assert_one_line_error(result, 1)


def test_other_settings_into_existing_out_is_refused(tmp_path, videos, model):
    out = tmp_path / "tok"
    assert run("encode", str(videos), "-o", str(out), "--model", model, *COMMON).exit_code == 0
    result = run("encode", str(videos), "-o", str(out), "--model", model, *COMMON[:1], "40", *COMMON[2:])
    assert result.exit_code != 0 and "--overwrite" in result.stderr


def test_info_describes_the_default_tokenizer():
    result = run("info", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["token_shape_17x128x128"] == [5, 16, 16]
    assert data["codebook_size"] == 2**18 and len(data["sha256"]) == 64


def test_decode_takes_generated_ids_and_names_a_bad_one(tmp_path, model):
    import numpy as np

    ids = np.random.default_rng(0).integers(0, 256, (2, 2, 2, 2)).astype(np.uint16)  # (clips, t, h, w)
    np.save(tmp_path / "gen.npy", ids)
    result = run("decode", str(tmp_path / "gen.npy"), "--model", model, "-o", str(tmp_path / "prev"), "--format", "png",
                 "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)
    assert row["key"] == "gen" and row["clips"] == 2 and row["psnr"] is None and Path(row["output"]).is_file()
    ids[1, 1, 0, 1] = 300
    np.save(tmp_path / "gen.npy", ids)
    result = run("decode", str(tmp_path / "gen.npy"), "--model", model, "-o", str(tmp_path / "prev"), "--device", "cpu")
    assert_one_line_error(result, 1)
    assert "token id 300 at index (1, 1, 0, 1)" in result.stderr
    assert_one_line_error(run("decode", str(tmp_path / "gen.npy"), "-o", str(tmp_path / "prev"), "--device", "cpu"), 1)
