"""What a user reads around the work: progress lines in batch logs, help by topic at 80 columns, refusals in the
options' own words, contact sheets that say what they show."""

import io
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import av
import numpy as np
import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from lfqtok import cli
from lfqtok.inspect.decode import (
    SHEET_GAP, SHEET_HEADER, SHEET_LINE, SHEET_MARGIN, TEXT_GREY, ContactSheetWriter, SheetLayout, clip_label, decode_samples,
    sheet_font, wrap_text,
)
from lfqtok.errors import OutputError
from lfqtok.io.shards import build_manifest, prepare_output
from lfqtok.pipeline.worker import Counters
from lfqtok.progress import EncodeProgress, Status, status_line
from videos import make_video

try:  # click >= 8.2 keeps stderr apart by default; older versions need mix_stderr=False
    runner = CliRunner(mix_stderr=False)
except TypeError:
    runner = CliRunner()

COMMON = ["--size", "32", "--clip-frames", "9", "--workers", "0", "--device", "cpu"]
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")  # anything but printable text and newlines: ANSI codes, \r
TYPE_TAGS = re.compile(r"<(str|int|float|bool|path|list\[[a-z]+\])>")


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    make_video(root / "one.mp4", frames=30, width=64, height=48, fps=24)
    make_video(root / "two.mp4", frames=12, width=48, height=48, fps=24)
    return root


@pytest.fixture(scope="module")
def encoded(tmp_path_factory, videos, model) -> str:
    """An encode OUT of `videos` with COMMON settings."""
    out = str(tmp_path_factory.mktemp("encoded") / "tok")
    assert runner.invoke(cli.app, ["encode", str(videos), "-o", out, "--model", model, *COMMON]).exit_code == 0
    return out


def read_png(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


# logs for non-terminals


@pytest.mark.slow  # a fresh interpreter imports torch
def test_a_run_logged_to_a_file_prints_plain_progress_lines_before_its_summary(tmp_path, videos, model):
    log = tmp_path / "encode.log"
    env = {**os.environ, "PYTHONPATH": str(Path(cli.__file__).parents[1])}
    with open(log, "w") as f:  # as under nohup or SLURM: stdout and stderr into a file, no terminal
        done = subprocess.run([sys.executable, "-m", "lfqtok", "encode", str(videos), "-o", str(tmp_path / "tok"), "--model", model,
                               *COMMON, "--samples-per-shard", "1", "--log-every", "0.05"], stdout=f, stderr=subprocess.STDOUT, env=env)
    text = log.read_text()
    assert done.returncode == 0, text
    assert not CONTROL.search(text), repr(text)  # no bars, colours or carriage returns in the log
    lines = text.splitlines()
    progress = [i for i, line in enumerate(lines) if re.match(r"\[\d\d:\d\d:\d\d\] encode \d+/2 samples", line)]
    summary = next(i for i, line in enumerate(lines) if "lfqtok encode -> " in line)
    assert len(progress) >= 2 and progress[-1] < summary  # the lines come during the run, the summary after them
    first, last = lines[progress[0]], lines[progress[-1]]
    assert "ETA" in first and "failed" in first and "frames/s" in first
    assert "2/2 samples (100%)" in last and last.endswith("done")
    assert all(len(line) <= 80 for line in lines[summary:])  # the closing table reads at 80 columns


@pytest.mark.parametrize("command", ["encode", "decode", "stats"])
def test_every_long_command_logs_plain_lines(tmp_path, videos, model, encoded, command):
    args = {"encode": [str(videos), "-o", str(tmp_path / "tok"), "--model", model, *COMMON],
            "decode": [encoded, "-o", str(tmp_path / "prev"), "--device", "cpu"], "stats": [encoded]}[command]
    result = runner.invoke(cli.app, [command, *args, "--log-every", "0.01"])
    assert result.exit_code == 0, result.output
    unit = {"encode": "samples", "decode": "clips", "stats": "shards"}[command]
    lines = [line for line in result.stderr.splitlines() if re.match(rf"\[\d\d:\d\d:\d\d\] {command} \d+/\d+ {unit}", line)]
    assert lines and lines[-1].endswith("done") and not CONTROL.search(result.stderr)


def test_a_part_of_a_split_run_says_which_part_it_is(tmp_path, videos, model):
    args = ["--num-shards", "2", "--shard-index", "1", "--samples-per-shard", "1", "--log-every", "5"]
    result = runner.invoke(cli.app, ["encode", str(videos), "-o", str(tmp_path / "tok"), "--model", model, *COMMON, *args])
    assert result.exit_code == 0, result.output
    assert re.search(r"^\[\d\d:\d\d:\d\d\] encode \[--shard-index 1 of 2\] 1/1 samples \(100%\)", result.stderr, re.M)
    assert "lfqtok encode [--shard-index 1 of 2] -> " in result.stderr  # the summary's title, not eaten as markup


def test_log_every_must_be_a_positive_number_of_seconds(tmp_path, videos, model):
    result = runner.invoke(cli.app, ["encode", str(videos), "-o", str(tmp_path / "tok"), "--model", model, *COMMON, "--log-every", "0"])
    assert result.exit_code == 2 and "--log-every must be a number of seconds > 0" in result.stderr


def test_a_progress_line_names_the_part_the_eta_and_the_shards_being_written():
    status = Status(250, 1000, "samples", ["2,000 clips", "3 failed"], writing=(7, 9, 11, 12))
    line = status_line("encode", status, elapsed=60.0, label="--shard-index 3 of 8")
    assert re.fullmatch(r"\[\d\d:\d\d:\d\d\] encode \[--shard-index 3 of 8\] 250/1,000 samples \(25%\), 2,000 clips, 3 failed, "
                        r"0:01:00 elapsed, ETA 0:03:00, writing 00007\.tar, 00009\.tar, 00011\.tar \(\+1\)", line), line
    assert status_line("stats", Status(0, 4, "shards"), 1.0).endswith("0/4 shards (0%), 0:00:01 elapsed, ETA -")


def test_progress_sums_the_shards_being_written_over_processes():
    total = Counters(videos_total=4).set_sum([Counters(videos_done=1, writing=(2,)), Counters(videos_done=2, writing=(1, 2))])
    assert (total.videos_done, total.writing) == (3, (1, 2))


def test_a_run_that_has_not_started_encoding_still_logs_that_it_is_starting():
    log = io.StringIO()
    with EncodeProgress(Console(file=log), log_every=0.01):
        time.sleep(0.1)  # listing a million inputs, loading a model: no update from the library yet
    lines = log.getvalue().splitlines()
    assert lines and all(line.endswith("encode 0 samples, starting (listing the inputs, loading the model), 0:00:00 elapsed, ETA -")
                         for line in lines)


# help by topic


@pytest.mark.parametrize("command", ["encode", "decode", "stats", "info", "convert"])
def test_help_reads_by_topic_at_80_columns(command):
    result = runner.invoke(cli.app, [command, "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    text = result.stdout
    assert result.exit_code == 0 and "Example: lfqtok " + command in text
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "…" not in text and not TYPE_TAGS.search(text)  # nothing cut off, no <bool> or <list[str]>
    assert not re.search(r"\w [.,;:](\s|$)", text)  # no stray space where markup ate a word ("clip starts .")
    options = typer.main.get_command(cli.app).commands[command].params
    assert all(opt in text for param in options for opt in param.opts if opt.startswith("--"))  # every name whole


def test_encode_help_groups_its_options_into_panels():
    text = runner.invoke(cli.app, ["encode", "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"}).stdout
    panels = re.findall(r"╭─ (.+?) ─", text)
    assert panels == ["Arguments", "Options", cli.PANEL_INPUTS, cli.PANEL_TABLES, cli.PANEL_FRAMES, cli.PANEL_MODEL, cli.PANEL_OUTPUT,
                      cli.PANEL_RUN]
    flat = " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())  # the words, however the columns wrapped them
    frames = flat[flat.index(cli.PANEL_FRAMES) : flat.index(cli.PANEL_MODEL)]
    assert all(f"--{name} " in frames for name in ("size", "resize", "buckets", "clip-frames", "clip-stride", "fps", "max-clips", "scenes"))
    assert "[default: (--clip-frames, no overlap)]" in frames and "[default: 17]" in frames
    assert "[default: (cores - 1, at most 16)]" in flat[flat.index(cli.PANEL_RUN) :]


# errors in the user's words


def test_a_resume_with_other_settings_names_the_options_as_typed(encoded, videos, model):
    result = runner.invoke(cli.app, ["encode", str(videos), "-o", encoded, "--model", model, *COMMON, "--size", "32x48", "--fps", "12"])
    assert result.exit_code == 2
    message = result.stderr.strip()
    assert "--size 32 (was) vs 32x48 (now); --fps not set (was) vs 12 (now)." in message  # in the help's order
    assert "--overwrite" in message
    assert "clip." not in message and "multiple" not in message and "--resize" not in message  # internal, derived, unchanged


@pytest.mark.parametrize("change, said", [
    ({"format_version": 2}, "format_version 1 (was) vs 2 (now)"),  # derived keys alone still refuse, named as they are
    ({"clip": {"size": 32, "fps": 8.0}, "scenes": {"threshold": 0.3}},  # a key no option is known to set yet: as it is
     "--fps not set (was) vs 8 (now); scenes.threshold None (was) vs 0.3 (now)."),
])
def test_every_difference_is_named_and_none_is_hidden(tmp_path, change, said):
    def manifest(**extra):
        fixed = dict(codebook_size=256, num_codebooks=1, tokenizer_name="default", tokenizer_sha256="ab" * 32,
                     tokenizer_config={}, clip_frames=9, size=32, token_shape=[3, 4, 4])
        core = build_manifest(**fixed, extra={"clip": {"size": 32, "fps": None}})
        return {**core, **extra}

    prepare_output(tmp_path, manifest(), overwrite=False)
    with pytest.raises(OutputError) as info:
        prepare_output(tmp_path, manifest(**change), overwrite=False)
    assert said in str(info.value)


# previews that say what they show


def test_clip_labels_give_index_time_and_psnr():
    meta = {"frame_indices": [[0, 1, 2], [9, 10, 11]], "fps": 12.0, "num_frames": 20}
    assert clip_label(meta, 1, 17.04) == "clip 1 | 0.75-0.92 s | PSNR 17.0 dB"
    assert clip_label({"clip_times": [[1.0, 1.5]], "clip_scenes": [2]}, 0, None) == "clip 0 | 1.00-1.50 s | scene 2"
    assert clip_label({"decoder": "pillow", "frame_indices": [[0]], "fps": None, "num_frames": 1}, 0, 30.0) == "image | PSNR 30.0 dB"


def test_captions_wrap_to_the_sheet_and_stop_after_six_lines():
    font = sheet_font()
    text = "a dog runs after a ball " * 3 + "/a/path/" * 10
    lines = wrap_text(text, 150, font, max_lines=20)
    assert all(font.getlength(line) <= 150 for line in lines) and len(lines) > 3
    assert "".join(lines).replace(" ", "") == text.replace(" ", "")  # every word, a path too long for a line broken inside
    cut = wrap_text("word " * 1000, 150, font)
    assert len(cut) == 6 and cut[-1].endswith("...")


def test_the_contact_sheet_names_its_rows_and_clips(tmp_path):
    layout = SheetLayout(frames=9, height=32, width=32, clips=2, sides=2, title_lines=1)
    writer = ContactSheetWriter(tmp_path / "sheet.png", layout, ["key"])
    frames = np.zeros((9, 32, 32, 3), np.uint8)
    writer.write(frames, frames, "clip 0 | PSNR 100.0 dB")
    writer.write(frames, None, "clip 1")
    writer.close()
    sheet = read_png(tmp_path / "sheet.png")
    words = sheet.max(axis=2) >= TEXT_GREY - 40  # text pixels (frames and gaps here are black)
    assert words[: SHEET_LINE].any()  # the title
    for clip in range(2):
        top, _ = layout.origin(clip, 0, 0)
        assert words[top - SHEET_HEADER : top - SHEET_GAP].any(), clip  # the clip's header line
        source, rec = (words[layout.origin(clip, 0, side)[0] : layout.origin(clip, 0, side)[0] + 32, :SHEET_MARGIN] for side in (0, 1))
        assert source.any() and rec.any() and not np.array_equal(source, rec), clip  # "source" / "no source" vs "lfqtok"


def test_a_sample_with_a_caption_shows_it_on_the_contact_sheet(tmp_path, model):
    video = make_video(tmp_path / "in" / "dog.mp4", frames=9, width=48, height=48, fps=12)
    (tmp_path / "dog.txt").write_text("A small dog runs across a sunny garden after a red ball. " * 3)
    with tarfile.open(tmp_path / "in.tar", "w") as tar:  # two samples of the same video, one with a caption
        tar.add(video, arcname="dog.mp4")
        tar.add(tmp_path / "dog.txt", arcname="dog.txt")  # -> the token sample's dog.txt
        tar.add(video, arcname="pup.mp4")
    out = str(tmp_path / "tok")
    assert runner.invoke(cli.app, ["encode", str(tmp_path / "in.tar"), "-o", out, "--model", model, *COMMON]).exit_code == 0
    rows = decode_samples(out, tmp_path / "prev", fmt="png", compare=True, device="cpu")
    dog, pup = (read_png(Path(r["output"])) for r in rows)
    assert dog.shape[1] == pup.shape[1] and (dog.shape[0] - pup.shape[0]) % SHEET_LINE == 0
    assert dog.shape[0] - pup.shape[0] >= 2 * SHEET_LINE  # the caption's lines, wrapped to the sheet's width
    assert np.array_equal(dog[-32:], pup[-32:])  # the same frames below


def test_the_decode_summary_prints_whole_output_paths_at_80_columns(tmp_path, encoded):
    previews = tmp_path / ("a-long-folder-name-for-previews-" * 3) / "previews"
    result = runner.invoke(cli.app, ["decode", encoded, "-o", str(previews), "--format", "png", "--device", "cpu", "--limit", "1"],
                           env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert f"one: {previews / 'one.png'}" in result.stderr.splitlines()
