"""Tables as inputs, on fixtures written as the datasets publish them: Panda-70M csv (Python-literal lists,
H:MM:SS.mmm), OpenVid csv (spaces in column names, --where), WebVid parquet (http URLs, over a local server), Kinetics
csv (seconds, labels), InternVid-style jsonl. Exact samples, captions, labels and columns; failures with their row;
streamed shards (--num-shards, resume, a changed table refused); the failures table retried; captions in readers."""

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

pa = pytest.importorskip("pyarrow")
pytest.importorskip("duckdb")
import pyarrow.parquet as pq  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

import lfqtok  # noqa: E402
from lfqtok.cli import app  # noqa: E402
from lfqtok.errors import UsageError  # noqa: E402
from lfqtok.io.shards import read_listing  # noqa: E402
from lfqtok.pipeline.tables import Table, TableJobs, TableOptions, parse_ranges, parse_time  # noqa: E402
from token_shards import output_bytes  # noqa: E402
from conftest import kill_9_once  # noqa: E402
from videos import make_video  # noqa: E402

SIZE, FRAMES = 32, 9
OPTIONS = {"size": SIZE, "clip_frames": FRAMES, "workers": 0, "batch_size": 4, "device": "cpu"}


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("table-videos")
    make_video(root / "v" / "a.mp4", frames=48, width=64, height=48, fps=24)
    make_video(root / "v" / "b.mp4", frames=30, width=48, height=64, fps=12)
    return root


def encode(source, out, model, **options):
    return lfqtok.encode_dataset([str(source)], out, model=model, **{**OPTIONS, **options})


def samples(out: Path) -> dict[str, dict]:
    """key -> {"json": record, "txt": caption or None}, over every shard in order."""
    found = {}
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar:
                key, _, ext = m.name.partition(".")
                entry = found.setdefault(key, {"json": None, "txt": None})
                if ext == "json":
                    entry["json"] = json.loads(tar.extractfile(m).read())
                elif ext == "txt":
                    entry["txt"] = tar.extractfile(m).read().decode()
    return found


def failures(out: Path) -> list[dict]:
    return [f for p in sorted(out.glob("*_stats.json")) for f in json.loads(p.read_text())["failures"]]


PANDA = """videoID,url,timestamp,caption,matching_score
a,https://www.youtube.com/watch?v=a,"[['0:00:00.000', '0:00:00.900'], ['0:00:01.000', '0:00:01.900']]","['a cat sits, then stands', ""a dog's nose""]",0.41
b,https://www.youtube.com/watch?v=b,"[['0:00:00.500', '0:00:02.000']]",['a red car'],0.39
gone,https://www.youtube.com/watch?v=gone,"[['0:00:00.000', '0:00:02.000']]",['never downloaded'],0.30
a,https://www.youtube.com/watch?v=a,not a list,['bad cell'],0.20
b,https://www.youtube.com/watch?v=b,"[['0:00:00.000', '0:00:01.000'], ['0:00:01.000', '0:00:02.000']]",['one caption for two'],0.20
"""


def test_panda_csv_gives_a_sample_per_range_with_its_caption_and_records_bad_rows(tmp_path, videos, model):
    table = videos / "panda.csv"
    table.write_text(PANDA)
    out = tmp_path / "tok"
    seen = []
    summary = encode(table, out, model, table=TableOptions(path_format="v/{videoID}.mp4", caption_col="caption", clip_col="timestamp"),
                     on_progress=lambda counters: seen.append((counters.rows_done, counters.rows_total)))
    assert seen[-1] == (5, 5)  # progress (and its ETA) counts the table's rows
    found = samples(out)
    assert sorted(found) == ["000000000_0000", "000000000_0001", "000000001_0000"]
    first, second, third = (found[k] for k in sorted(found))
    assert [first["txt"], second["txt"], third["txt"]] == ["a cat sits, then stands", "a dog's nose", "a red car"]
    assert (first["json"]["row"], first["json"]["segment"], second["json"]["segment"], third["json"]["row"]) == (0, 0, 1, 1)
    assert second["json"]["time_range"] == [1.0, 1.9] and third["json"]["time_range"] == [0.5, 2.0]
    assert first["json"]["columns"] == {"videoID": "a", "url": "https://www.youtube.com/watch?v=a", "matching_score": 0.41}
    assert first["json"]["source"] == str(videos / "v" / "a.mp4")
    for sample in (first, second, third):  # every clip's frames lie inside its range
        start, end = sample["json"]["time_range"]
        assert all(start <= a <= b < end for a, b in sample["json"]["clip_times"]), sample["json"]
    bad = failures(out)
    assert [(f["row"], f.get("segment")) for f in bad] == [(2, 0), (3, None), (4, None)]
    assert "panda.csv row 3" in bad[1]["error"] and "not a list" in bad[1]["error"]
    assert "1 captions in 'caption' for 2 ranges" in bad[2]["error"]
    assert (summary.videos_ok, summary.videos_failed) == (3, 3)
    manifest = json.loads((out / "lfqtok.json").read_text())
    assert manifest["table"]["format"] == "csv"
    (path, size, digest), = read_listing(out, manifest["listing"])  # the table's identity: its listing
    assert (path, size, digest[:7]) == (str(table), str(len(PANDA)), "sha256:")
    assert manifest["table"]["clip_col"] == "timestamp" and manifest["table"]["path_format"] == "v/{videoID}.mp4"


OPENVID = """video,caption,aesthetic score,motion score,temporal consistency score,camera motion,frame,fps,seconds
v/a.mp4,a cat,5.5,3.1,0.99,static,48,24.0,2.0
v/b.mp4,a car,4.2,8.0,0.97,pan_right,30,12.0,2.5
v/b.mp4,a car again,6.0,8.0,0.97,pan_right,30,12.0,25.0
"""


def test_openvid_csv_with_spaces_in_names_keeps_the_rows_where_holds(tmp_path, videos, model):
    table = videos / "openvid.csv"
    table.write_text(OPENVID)
    out = tmp_path / "tok"
    where = '"aesthetic score" >= 5 AND seconds <= 20'
    encode(table, out, model, table=TableOptions(path_col="video", caption_col="caption", where=where, keep_cols=("aesthetic score", "camera motion")))
    found = samples(out)
    assert list(found) == ["000000000"] and found["000000000"]["txt"] == "a cat"
    assert found["000000000"]["json"]["columns"] == {"aesthetic score": 5.5, "camera motion": "static"}
    assert json.loads((out / "lfqtok.json").read_text())["table"]["where"] == where


def test_kinetics_csv_seconds_and_labels(tmp_path, videos, model):
    table = videos / "kinetics.csv"
    table.write_text("label,youtube_id,time_start,time_end,split\n"
                     "riding a bike,a,0,1.5,v\nabseiling,b,1,2,v\nriding a bike,b,0.5,2,v\n")
    out = tmp_path / "tok"
    encode(table, out, model, table=TableOptions(path_format="{split}/{youtube_id}.mp4", start_col="time_start", end_col="time_end",
                                                 label_col="label", key_col="youtube_id"))
    manifest = json.loads((out / "lfqtok.json").read_text())
    assert manifest["classes"] == ["abseiling", "riding a bike"]
    records = {k: v["json"] for k, v in samples(out).items()}
    assert len(records) == 3 and {"a", "b"} <= set(records)  # a key repeated in a shard gets a hash of its row
    by_row = {r["row"]: r for r in records.values()}
    assert [(by_row[i]["class"], by_row[i]["label"], by_row[i]["time_range"]) for i in range(3)] == [
        ("riding a bike", 1, [0.0, 1.5]), ("abseiling", 0, [1.0, 2.0]), ("riding a bike", 1, [0.5, 2.0])]
    assert "segment" not in by_row[0] and by_row[0]["columns"] == {"split": "v"}


def test_jsonl_clock_times_and_captions(tmp_path, videos, model):
    table = videos / "internvid.jsonl"
    rows = [{"YoutubeID": "a", "Start_timestamp": "00:00:00.100", "End_timestamp": "00:00:01.200", "Caption": "a cat, close up"},
            {"YoutubeID": "b", "Start_timestamp": "00:00:01.000", "End_timestamp": "00:00:02.000", "Caption": "ünïcode ✓"}]
    table.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    out = tmp_path / "tok"
    encode(table, out, model, table=TableOptions(path_format="v/{YoutubeID}.mp4", start_col="Start_timestamp",
                                                 end_col="End_timestamp", caption_col="Caption"))
    found = samples(out)
    assert [found[k]["txt"] for k in sorted(found)] == ["a cat, close up", "ünïcode ✓"]
    assert [found[k]["json"]["time_range"] for k in sorted(found)] == [[0.1, 1.2], [1.0, 2.0]]
    reader = lfqtok.TokenDataset(str(out), shuffle=False, batch_size=8)
    batch = next(iter(reader))
    assert sorted(set(batch["caption"])) == ["a cat, close up", "ünïcode ✓"]
    assert {m["caption"] for _, _, m in lfqtok.read_tokens(out)} == {"a cat, close up", "ünïcode ✓"}


def test_webvid_parquet_over_http(tmp_path, videos, model):
    pytest.importorskip("aiohttp")
    from http_server import HttpServer

    with HttpServer(videos) as server:
        data = pa.table({"videoid": [1, 2], "contentUrl": [server.url("v/a.mp4"), server.url("v/missing.mp4")],
                         "duration": ["PT00H00M02S", "PT00H00M03S"], "page_dir": ["001", "002"], "name": ["Aerial shot", "Gone"]})
        pq.write_table(data, videos / "webvid.parquet")
        out = tmp_path / "tok"
        summary = encode(server.url("webvid.parquet"), out, model, table=TableOptions(path_col="contentUrl", caption_col="name", key_col="videoid"))
    found = samples(out)
    assert list(found) == ["1"] and found["1"]["txt"] == "Aerial shot"
    assert found["1"]["json"]["columns"] == {"duration": "PT00H00M02S", "page_dir": "001"}
    assert [(f["row"], f["source"].endswith("v/missing.mp4")) for f in failures(out)] == [(1, True)]
    assert summary.videos_failed == 1
    assert json.loads((out / "lfqtok.json").read_text())["table"]["format"] == "parquet"


def test_shards_are_consecutive_rows_and_a_split_encodes_each_once(tmp_path, model):
    data = pa.table({"path": [f"missing/{i}.mp4" for i in range(10)], "keep": [i % 3 != 0 for i in range(10)]})
    pq.write_table(data, tmp_path / "t.parquet", row_group_size=4)
    table = Table.open(str(tmp_path / "t.parquet"), TableOptions(where="keep"))
    rows = lambda jobs: [(job.index, [item.row for item in job.items]) for job in jobs]
    assert rows(TableJobs(table, 2)) == [(0, [1, 2]), (1, [4, 5]), (2, [7, 8])]
    assert rows(TableJobs(table, 2, num_shards=2, shard_index=1)) == [(1, [4, 5])]
    assert rows(TableJobs(table, 2, skip=frozenset({1}))) == [(0, [1, 2]), (2, [7, 8])]
    assert rows(TableJobs(table, 2).part(1, 2)) == [(1, [4, 5])]
    # progress: the rows times the share --where keeps of the first block (a row group of 4: 2), less finished shards
    assert TableJobs(table, 2).rows_total == 5 and TableJobs(table, 2, skip=frozenset({0})).rows_total == 3


def test_a_changed_table_is_refused_on_resume(tmp_path, videos, model):
    table = tmp_path / "t.csv"
    table.write_text(f"path\n{videos / 'v' / 'a.mp4'}\n")
    out = tmp_path / "tok"
    encode(table, out, model)
    table.write_text(f"path\n{videos / 'v' / 'b.mp4'}\n")
    with pytest.raises(lfqtok.OutputRefused, match=r"t\.csv changed since the run in .*: \d+ -> \d+ bytes, sha256:[0-9a-f]{12} -> sha256:"):
        encode(table, out, model)
    assert encode(table, out, model, overwrite=True).videos_ok == 1


def test_a_table_that_gained_a_part_is_one_line_naming_the_part(tmp_path, videos, model):
    parts = tmp_path / "parts"
    parts.mkdir()
    pq.write_table(pa.table({"path": [str(videos / "v" / "a.mp4")]}), parts / "p0.parquet")
    out = tmp_path / "tok"
    encode(parts, out, model)
    pq.write_table(pa.table({"path": [str(videos / "v" / "b.mp4")]}), parts / "p1.parquet")
    args = ["encode", str(parts), "-o", str(out), "--model", model, "--size", str(SIZE), "--clip-frames", str(FRAMES),
            "--workers", "0", "--batch-size", "4", "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    [line] = result.output.strip().splitlines()
    assert f"{parts} changed since the run in" in line and f"{parts / 'p1.parquet'} added" in line and "--overwrite" in line
    for sidecar in out.glob("lfqtok.listing.*.gz"):  # what the table was is lost: the line says so, not "0 files then"
        sidecar.unlink()
    [line] = CliRunner().invoke(app, args).output.strip().splitlines()
    assert "1 file then, 2 now" in line and "0 file" not in line


def test_a_column_that_does_not_exist_is_one_line_naming_the_columns(tmp_path, videos, model):
    table = videos / "cols.csv"
    table.write_text("video,caption\nv/a.mp4,x\n")
    result = CliRunner().invoke(app, ["encode", str(table), "-o", str(tmp_path / "o"), "--model", model, "--path-col", "video",
                                      "--caption-col", "text", "--device", "cpu"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--caption-col 'text'" in lines[0] and "video, caption" in lines[0]
    with pytest.raises(UsageError, match="no 'path' column"):
        encode(table, tmp_path / "o", model)
    with pytest.raises(UsageError, match="--where"):
        encode(table, tmp_path / "o", model, table=TableOptions(path_col="video", where="nope > 1"))


def test_the_failures_table_retries_exactly_the_failed_rows(tmp_path, videos, model):
    root = tmp_path / "data"
    (root / "v").mkdir(parents=True)
    (root / "v" / "a.mp4").write_bytes((videos / "v" / "a.mp4").read_bytes())
    table = root / "t.csv"
    table.write_text("path,caption,score\nv/a.mp4,one,1\nv/b.mp4,two,2\nv/c.mp4,three,3\n")
    out = tmp_path / "tok"
    encode(table, out, model, table=TableOptions(caption_col="caption"))
    listed = tmp_path / "retry" / "failed.jsonl"
    listed.parent.mkdir()
    result = CliRunner().invoke(app, ["stats", str(out), "--failures", str(listed)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in listed.read_text().splitlines()]
    assert rows == [{"path": str(root / "v" / "b.mp4"), "caption": "two", "score": 2},
                    {"path": str(root / "v" / "c.mp4"), "caption": "three", "score": 3}]
    (root / "v" / "b.mp4").write_bytes((videos / "v" / "b.mp4").read_bytes())
    again = encode(listed, tmp_path / "again", model, table=TableOptions(caption_col="caption"))
    assert (again.videos_ok, again.videos_failed) == (1, 1)
    assert [v["txt"] for v in samples(tmp_path / "again").values()] == ["two"]


def test_times_and_ranges_parse_as_datasets_write_them():
    assert parse_time("0:00:08.141") == pytest.approx(8.141)
    assert parse_time("01:02.5") == 62.5 and parse_time(3) == 3.0 and parse_time("12.25") == 12.25
    assert parse_ranges("[['0:00:00.000', '0:00:08.141'], ['0:00:09', '0:00:10']]") == [(0.0, 8.141), (9.0, 10.0)]
    assert parse_ranges("[[0, 1.5]]") == [(0.0, 1.5)] and parse_ranges([[1, 2]]) == [(1.0, 2.0)]
    for bad in ("[[2, 1]]", "[[0]]", "nope", "[['x', 1]]", "[[-1, 1]]"):
        with pytest.raises(ValueError):
            parse_ranges(bad)


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_is_byte_identical(tmp_path, videos, model):
    table = videos / "many.csv"
    table.write_text("path,caption\n" + "".join(f"v/{'ab'[i % 2]}.mp4,caption {i}\n" for i in range(8)))
    whole = tmp_path / "whole"
    encode(table, whole, model, samples_per_shard=1, table=TableOptions(caption_col="caption"))
    out = tmp_path / "killed"
    script = ("import sys, lfqtok; from lfqtok.pipeline.tables import TableOptions; lfqtok.encode_dataset([sys.argv[1]], "
              "sys.argv[2], model=sys.argv[3], size=%d, clip_frames=%d, workers=0, batch_size=1, device='cpu', "
              "samples_per_shard=1, table=TableOptions(caption_col='caption'))" % (SIZE, FRAMES))
    kill_9_once([sys.executable, "-c", script, str(table), str(out), model], lambda: list(out.glob("0000[1-9]_stats.json")))
    assert len(list(out.glob("*_stats.json"))) < 8
    summary = encode(table, out, model, samples_per_shard=1, table=TableOptions(caption_col="caption"))
    assert summary.shards_skipped >= 1
    assert output_bytes(out) == output_bytes(whole)


@pytest.mark.slow
def test_the_ray_engine_encodes_a_table_as_the_local_one(tmp_path, videos, model):
    pytest.importorskip("ray")
    table = videos / "ray.csv"
    table.write_text("path,caption\n" + "".join(f"v/{'ab'[i % 2]}.mp4,caption {i}\n" for i in range(4)))
    encode(table, tmp_path / "local", model, samples_per_shard=2, table=TableOptions(caption_col="caption"))
    encode(table, tmp_path / "ray", model, samples_per_shard=2, engine="ray", workers=1, table=TableOptions(caption_col="caption"))
    assert output_bytes(tmp_path / "ray") == output_bytes(tmp_path / "local")


def test_a_folder_of_parquet_parts_is_one_table_read_in_order(tmp_path, videos, model):
    parts = tmp_path / "parts"
    parts.mkdir()
    for i, name in enumerate(("b.mp4", "a.mp4")):
        pq.write_table(pa.table({"path": [str(videos / "v" / name)], "text": [f"part {i}"]}), parts / f"part-{i:05d}.parquet")
    out = tmp_path / "tok"
    encode(parts, out, model, table=TableOptions(caption_col="text"))
    found = samples(out)
    assert [(k, v["txt"], v["json"]["source"].endswith(n)) for (k, v), n in zip(sorted(found.items()), ("b.mp4", "a.mp4"))] == [
        ("000000000", "part 0", True), ("000000001", "part 1", True)]
    listed = read_listing(out, json.loads((out / "lfqtok.json").read_text())["listing"])
    assert [entry[0].endswith(f"part-{i:05d}.parquet") for i, entry in enumerate(listed)] == [True, True]
    encode(str(parts / "part-*.parquet"), tmp_path / "globbed", model, table=TableOptions(caption_col="text"))
    assert {k: v["txt"] for k, v in samples(tmp_path / "globbed").items()} == {k: v["txt"] for k, v in found.items()}


def test_without_the_tables_extra_a_table_is_one_usage_line(tmp_path, monkeypatch, model):
    table = tmp_path / "t.csv"
    table.write_text("path\nx.mp4\n")
    monkeypatch.setitem(sys.modules, "duckdb", None)  # what an environment without lfqtok[tables] imports
    with pytest.raises(UsageError, match=r'pip install "lfqtok\[tables\]"'):
        encode(table, tmp_path / "o", model)


def test_the_cli_takes_every_table_option_and_the_manifest_records_them(tmp_path, videos, model):
    table = videos / "openvid-cli.csv"
    table.write_text(OPENVID)
    out = tmp_path / "tok"
    where = '"aesthetic score" >= 5 AND seconds <= 20'
    result = CliRunner().invoke(app, [
        "encode", str(table), "-o", str(out), "--model", model, "--size", str(SIZE), "--clip-frames", str(FRAMES), "--workers", "0",
        "--device", "cpu", "--path-col", "video", "--caption-col", "caption", "--where", where, "--keep-cols", "fps,seconds",
        "--key-col", "camera motion", "--label-col", "camera motion", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["videos_ok"] == 1
    recorded = json.loads((out / "lfqtok.json").read_text())
    assert {k: v for k, v in recorded["table"].items() if k not in ("format", "files")} == {
        "path_col": "video", "caption_col": "caption", "where": where, "keep_cols": ["fps", "seconds"],
        "key_col": "camera motion", "label_col": "camera motion"}
    assert recorded["classes"] == ["static"]  # the classes of the rows --where keeps
    found = samples(out)
    assert list(found) == ["static"] and found["static"]["json"]["columns"] == {"fps": 24.0, "seconds": 2.0}
    assert (found["static"]["json"]["class"], found["static"]["json"]["label"]) == ("static", 0)


def test_the_failures_of_a_folder_run_are_its_files(tmp_path, videos, model):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "ok.mp4").write_bytes((videos / "v" / "a.mp4").read_bytes())
    (folder / "broken.mp4").write_bytes(b"not a video")
    out = tmp_path / "tok"
    encode(folder, out, model)
    listed = tmp_path / "failed.jsonl"
    assert CliRunner().invoke(app, ["stats", str(out), "--failures", str(listed)]).exit_code == 0
    assert [json.loads(line) for line in listed.read_text().splitlines()] == [{"path": str(folder / "broken.mp4")}]


@pytest.mark.slow
def test_the_bench_script_makes_a_table_and_streams_it(tmp_path, videos):
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_tables.py"
    run = lambda *args: subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=600)
    made = run("make", str(tmp_path), "--videos", str(videos / "v"), "--rows", "3000")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["rows"] == 3000 and pq.ParquetFile(tmp_path / "table.parquet").metadata.num_rows == 3000
    streamed = run("stream", str(tmp_path), "--videos", str(videos / "v"), "--seconds", "1", "--samples-per-shard", "100")
    assert streamed.returncode == 0, streamed.stderr
    lines = streamed.stdout.splitlines()  # "table run {...}", or "table run failed: ..."
    assert len(lines) == 6 and all("{" in line for line in lines), streamed.stdout
    results = [json.loads(line[line.index("{"):]) for line in lines]
    assert all(r["first_sample_s"] is not None and r["rss_mib"] < 1024 for r in results), streamed.stdout


@pytest.mark.slow
def test_two_device_processes_each_read_their_part_of_the_table(tmp_path, videos, model):
    from lfqtok.pipeline.encode import EncodeConfig
    from lfqtok.pipeline.engines import run_local

    table = videos / "devices.csv"
    table.write_text("path,caption\n" + "".join(f"v/{'ab'[i % 2]}.mp4,caption {i}\n" for i in range(5)))
    options = TableOptions(caption_col="caption")
    encode(table, tmp_path / "single", model, samples_per_shard=2, table=options)
    out = tmp_path / "two"
    encode(table, out, model, samples_per_shard=2, table=options)
    for stats in out.glob("*_stats.json"):  # ... then redo every shard with two device processes
        stats.unlink()
    config = EncodeConfig(model=model, **OPTIONS, samples_per_shard=2, table=options)
    jobs = TableJobs(Table.open(str(table), options), 2)
    results = run_local(config.shard_encoder(out), jobs, devices=["cpu", "cpu"])
    assert sorted(r.shard for r in results) == [0, 1, 2] and sum(r.rows for r in results) == 5
    assert output_bytes(out) == output_bytes(tmp_path / "single")


def test_tsv_and_ndjson_read_as_csv_and_jsonl(tmp_path):
    (tmp_path / "t.tsv").write_text("path\tcaption\ta.mp4\tx, y\n".replace("\ta.mp4", "\na.mp4"))
    (tmp_path / "t.ndjson").write_text('{"path": "a.mp4", "caption": "x, y"}\n')
    for name in ("t.tsv", "t.ndjson"):
        table = Table.open(str(tmp_path / name), TableOptions(caption_col="caption"))
        (job,) = TableJobs(table, 10)
        assert [(i.path, i.caption, i.row) for i in job.items] == [(str(tmp_path / "a.mp4"), "x, y", 0)]


def test_without_where_a_part_reads_only_the_row_groups_of_its_shards(tmp_path, monkeypatch):
    pq.write_table(pa.table({"path": [f"{i}.mp4" for i in range(12)]}), tmp_path / "t.parquet", row_group_size=3)
    table = Table.open(str(tmp_path / "t.parquet"), TableOptions())
    read = []
    original = pq.ParquetFile.iter_batches
    monkeypatch.setattr(pq.ParquetFile, "iter_batches", lambda self, *a, **k: (read.append(k["row_groups"]), original(self, *a, **k))[1])
    rows = lambda jobs: [(job.index, [item.row for item in job.items]) for job in jobs]
    assert rows(TableJobs(table, 2, num_shards=3, shard_index=2)) == [(2, [4, 5]), (5, [10, 11])]
    assert read == [[1], [3]]  # rows 4-5 and 10-11: the second and fourth row groups; the others counted from metadata
    read.clear()
    assert rows(TableJobs(table, 2, skip=frozenset({0, 1, 2, 3}))) == [(4, [8, 9]), (5, [10, 11])]
    assert read == [[2], [3]]


def test_jsonl_rows_past_the_first_block_keep_its_columns(tmp_path, monkeypatch):
    import lfqtok.pipeline.tables as tables

    monkeypatch.setattr(tables, "INFER_BYTES", 64)  # types from the first 64 bytes, then 64-byte blocks
    monkeypatch.setattr(tables, "BLOCK_BYTES", 64)
    rows = [{"path": f"{i}.mp4", "n": i} for i in range(20)] + [{"path": "late.mp4", "n": 20, "extra": "new key"}]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (job,) = TableJobs(Table.open(str(tmp_path / "t.jsonl"), TableOptions()), 100)
    assert [i.row for i in job.items] == list(range(21)) and job.items[-1].columns == {"n": 20}
