"""Issue #24's storage attacks, kept true: objects that stall, answer 403/500 or hang up (a local HTTP server,
tests/http_server.py, and the local S3 server behind a proxy that stalls one key), canary secrets in presigned URLs,
model URLs and storage options, S3 keys holding '#' and '?', '-o' naming an object or holding '//', and mistyped
storage options. Each asserts the exit code, one line on stderr, bounded time, and that nothing leaked or was lost."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import use_s3_server
from tcp_proxy import TcpProxy
from videos import make_video
import lfqtok
from lfqtok.cli import app
from lfqtok.errors import OutputRefused, UsageError
from lfqtok.io import storage
from lfqtok.io.shards import read_tokens

SIZE, FRAMES, TIMEOUT = 32, 9, 2
CANARY = "CANARY-7f3e9a1b"  # a secret that must never leave the process


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clips")
    make_video(root / "a.mp4", frames=9, width=40, height=32, fps=10)
    make_video(root / "b.mp4", frames=9, width=32, height=40, fps=10)
    return root


def cli(*args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `lfqtok ARGS` in this process."""
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def encode_args(*inputs: str, out: str, model: str, more: tuple[str, ...] = ()) -> list[str]:
    return ["encode", *inputs, "-o", out, "--model", model, "--size", str(SIZE), "--clip-frames", str(FRAMES),
            "--device", "cpu", "--workers", "0", "--video-timeout", str(TIMEOUT), "--json", *more]


def stats_of(out: Path) -> dict:
    [path] = out.glob("*_stats.json")
    return json.loads(path.read_text())


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


# the server itself


def test_the_http_server_serves_ranges_and_misbehaves_per_path(http_server):
    import fsspec

    (http_server.root / "f.bin").write_bytes(bytes(range(256)) * 4)
    fs = fsspec.filesystem("http", skip_instance_cache=True)
    assert fs.cat_file(http_server.url("f.bin"), start=10, end=14) == bytes(range(10, 14))
    assert fs.info(http_server.url("f.bin"))["size"] == 1024
    http_server.behave("f.bin", 500)
    with pytest.raises(Exception, match="500"):
        fs.cat_file(http_server.url("f.bin"))
    http_server.behave("f.bin", "hangup")
    with pytest.raises(Exception):
        fs.cat_file(http_server.url("f.bin"))
    http_server.behave("f.bin", "stall")
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="no progress for 1 s"):
        storage.read_bytes(http_server.url("f.bin"), timeout=1)
    assert time.monotonic() - started < 5 and http_server.hits["f.bin"] == 5


# nothing hangs


@pytest.mark.parametrize("how", ["stall", "stall-body"])
def test_an_http_object_that_stalls_is_a_recorded_failure_and_the_run_goes_on(tmp_path, clips, model, http_server, how):
    for name in ("a.mp4", "b.mp4"):
        (http_server.root / name).write_bytes((clips / name).read_bytes())
    http_server.behave("b.mp4", how)  # "stall": not even its HEAD is answered; "stall-body": one byte, then nothing
    started = time.monotonic()
    code, stdout, stderr = cli(*encode_args(http_server.url("a.mp4"), http_server.url("b.mp4"), out=str(tmp_path / "out"), model=model))
    elapsed = time.monotonic() - started
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert (summary["videos_ok"], summary["videos_failed"]) == (1, 1)
    [failure] = stats_of(tmp_path / "out")["failures"]
    assert failure["source"] == http_server.url("b.mp4") and f"no progress for {TIMEOUT} s" in failure["error"]
    assert elapsed < 6 * TIMEOUT + 20, elapsed  # the HEAD's timeout, then the fetch's: never the 300 s aiohttp waits


def test_an_http_object_that_hangs_up_mid_body_is_a_recorded_failure(tmp_path, clips, model, http_server):
    for name in ("a.mp4", "b.mp4"):
        (http_server.root / name).write_bytes((clips / name).read_bytes())
    http_server.behave("a.mp4", "hangup")
    code, stdout, stderr = cli(*encode_args(http_server.url("a.mp4"), http_server.url("b.mp4"), out=str(tmp_path / "out"), model=model))
    assert code == 0, stderr
    [failure] = stats_of(tmp_path / "out")["failures"]
    assert failure["source"] == http_server.url("a.mp4")
    assert "connection closed mid-transfer" in failure["error"] or "truncated" in failure["error"], failure


def _tar_of(clips: Path, path: Path) -> None:
    with tarfile.open(path, "w") as tar:
        for name in ("a.mp4", "b.mp4"):
            tar.add(clips / name, arcname=name)
            info = tarfile.TarInfo(name.replace(".mp4", ".txt"))
            info.size = 5
            tar.addfile(info, io.BytesIO(b"hello"))


def test_tar_members_and_a_worker_fetch_that_stall_fail_in_bounded_time(tmp_path, clips, http_server):
    from lfqtok.pipeline.pool import DecodePool, DoneEvent, FailEvent, decode_item
    from lfqtok.pipeline.sources import list_items
    from lfqtok.pipeline.video import ClipSpec

    _tar_of(clips, http_server.root / "v.tar")
    items = list_items([http_server.url("v.tar")], timeout=TIMEOUT)
    assert [i.key for i in items] == ["a", "b"] and items[0].source == f"{http_server.url('v.tar')}:a.mp4"
    http_server.behave("v.tar", "stall-body")  # listed already; now every member fetch stalls
    spec = ClipSpec(size=SIZE, clip_frames=FRAMES)
    started = time.monotonic()
    with DecodePool(spec, workers=0, timeout=TIMEOUT) as pool:
        events = [e for e in pool.run(items) if not hasattr(e, "clip")]
    assert [type(e) for e in events] == [FailEvent, FailEvent]
    assert all(f"no progress for {TIMEOUT} s" in e.error and "v.tar:" in e.error for e in events), events
    # a decode worker (a Ray task) fetching on its own: the same bound, the same failure
    [event] = decode_item(0, items[0], spec, fetch_timeout=TIMEOUT)
    assert isinstance(event, FailEvent) and f"no progress for {TIMEOUT} s" in event.error
    assert time.monotonic() - started < 3 * TIMEOUT + 10
    http_server.behave("v.tar", "normal")
    with DecodePool(spec, workers=0, timeout=TIMEOUT) as pool:
        done = [e for e in pool.run(items) if isinstance(e, DoneEvent)]
    assert [e.extras for e in done] == [{"txt": b"hello"}] * 2


class _StallingProxy(TcpProxy):
    """Holds back (never forwards, never answers) every request whose first line starts with `stall` ('GET
    /bucket/key'): one object that never answers, the rest of the store healthy."""

    def __init__(self, upstream: str, stall: bytes):
        self.stall = stall
        super().__init__(upstream)

    def passes(self, data: bytes, up: bool) -> bool:
        return not (up and data.startswith(self.stall))


def encode_stalled(hold: str, inputs: str, out: Path, model: str, s3_server, monkeypatch) -> tuple[int, str, str, float]:
    """(exit code, stdout, stderr, seconds) of an encode whose S3 requests starting with `hold` never get an answer."""
    proxy = _StallingProxy(s3_server, hold.encode())
    try:
        use_s3_server(monkeypatch, proxy.endpoint)
        started = time.monotonic()
        code, stdout, stderr = cli(*encode_args(inputs, out=str(out), model=model))
        return code, stdout, stderr, time.monotonic() - started
    finally:
        proxy.close()


def test_an_s3_object_that_never_answers_is_a_recorded_failure(tmp_path, clips, model, s3, s3_server, monkeypatch):
    fs, bucket = storage.filesystem(s3)
    for name in ("a.mp4", "b.mp4"):
        fs.pipe_file(f"{bucket}/v/{name}", (clips / name).read_bytes())
    code, stdout, stderr, elapsed = encode_stalled(f"GET /{bucket}/v/b.mp4", f"{s3}/v", tmp_path / "out", model, s3_server, monkeypatch)
    assert code == 0, stderr
    [failure] = stats_of(tmp_path / "out")["failures"]
    assert failure["source"] == f"{s3}/v/b.mp4" and f"no progress for {TIMEOUT} s" in failure["error"]
    assert json.loads(stdout)["videos_ok"] == 1 and elapsed < 3 * TIMEOUT + 20, elapsed


def test_a_model_url_that_stalls_is_one_line(tmp_path, model, http_server, monkeypatch):
    from lfqtok.errors import InputError
    from lfqtok.tokenizers.model import load_tokenizer

    monkeypatch.setenv("LFQTOK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(storage, "MODEL_TIMEOUT", 1.0)
    (http_server.root / "m.safetensors").write_bytes(Path(model).read_bytes())
    http_server.behave("m.safetensors", "stall-body")
    with pytest.raises(InputError, match="cannot fetch model .*m.safetensors: no progress for 1 s"):
        load_tokenizer(http_server.url("m.safetensors"))
    assert not list((tmp_path / "cache" / "models").rglob("*.tmp"))  # no half copy left behind
    http_server.behave("m.safetensors", "normal")
    assert load_tokenizer(http_server.url("m.safetensors")).sha256 == load_tokenizer(model).sha256


# errors say what happened


@pytest.mark.parametrize("status, words", [(403, "403 Forbidden"), (500, "500 from the server"), (404, "no such")])
def test_http_statuses_are_named(tmp_path, clips, model, http_server, status, words):
    (http_server.root / "a.mp4").write_bytes((clips / "a.mp4").read_bytes())
    http_server.behave("a.mp4", status)
    url = http_server.url("a.mp4") + f"?token={CANARY}"
    code, stdout, stderr = cli(*encode_args(url, out=str(tmp_path / "out"), model=model))
    line = one_line(stderr)
    assert code == 1 and words in line and http_server.url("a.mp4") in line, line
    assert CANARY not in stdout + stderr and not (tmp_path / "out").exists()


def test_a_fetch_answered_with_a_status_is_recorded_with_it(tmp_path, clips, http_server):
    from lfqtok.pipeline.pool import DecodePool, FailEvent
    from lfqtok.pipeline.sources import list_items
    from lfqtok.pipeline.video import ClipSpec

    (http_server.root / "a.mp4").write_bytes((clips / "a.mp4").read_bytes())
    items = list_items([http_server.url("a.mp4")])
    http_server.behave("a.mp4", 503)  # listed, then the store fails
    with DecodePool(ClipSpec(size=SIZE, clip_frames=FRAMES), workers=0, timeout=TIMEOUT) as pool:
        [event] = list(pool.run(items))
    assert isinstance(event, FailEvent) and "503 from the server (Service Unavailable)" in event.error


@pytest.mark.parametrize("options, named", [
    ({"anon": "yes"}, "'anon' must be true or false"),
    ({"bogus_option": 1}, "unknown option 'bogus_option'"),
    ({"config_kwargs": {"bogus_entry": 1}}, "unknown entry 'bogus_entry' in 'config_kwargs'"),
    ({"client_kwargs": "x"}, "'client_kwargs' must be a JSON object"),
    ({"config_kwargs": {"read_timeout": "soon"}}, "'config_kwargs.read_timeout' must be a number"),
])
def test_unknown_or_mistyped_storage_options_are_one_line_naming_them(tmp_path, clips, model, s3, options, named):
    code, stdout, stderr = cli(*encode_args(str(clips), out=f"{s3}/tok", model=model,
                                            more=("--storage-options", json.dumps(options))))
    line = one_line(stderr)
    assert code == 2 and named in line and "--storage-options" in line, line


def test_out_naming_an_existing_object_is_refused_and_left_alone(tmp_path, clips, model, s3):
    storage.write_bytes(f"{s3}/data.bin", b"precious")
    code, stdout, stderr = cli(*encode_args(str(clips), out=f"{s3}/data.bin", model=model))
    line = one_line(stderr)
    assert code == 2 and "existing object" in line and f"{s3}/data.bin" in line
    fs, bucket = storage.filesystem(s3)
    assert storage.read_bytes(f"{s3}/data.bin") == b"precious" and fs.find(bucket) == [f"{bucket}/data.bin"]
    (tmp_path / "data.bin").write_bytes(b"precious")
    code, stdout, stderr = cli(*encode_args(str(clips), out=str(tmp_path / "data.bin"), model=model))
    assert code == 2 and "existing file" in one_line(stderr) and (tmp_path / "data.bin").read_bytes() == b"precious"


def test_double_slashes_in_an_object_url_are_normalized_so_reruns_and_stats_find_the_shards(tmp_path, clips, model, s3):
    code, stdout, stderr = cli(*encode_args(str(clips), out=f"{s3}//tok", model=model))
    assert code == 0, stderr
    assert json.loads(stdout)["out"] == f"{s3}/tok"
    fs, bucket = storage.filesystem(s3)
    keys = fs.find(bucket)
    assert all(k.startswith(f"{bucket}/tok/") for k in keys) and f"{bucket}/tok/00000_stats.json" in keys, keys  # no '/tok' key
    code, stdout, stderr = cli(*encode_args(str(clips), out=f"{s3}//tok//", model=model))
    assert code == 0 and json.loads(stdout)["shards_skipped"] == 1, stderr
    code, stdout, stderr = cli("stats", f"{s3}//tok", "--json")
    assert code == 0 and json.loads(stdout)["num_samples"] == 2, stderr


def test_a_scheme_in_capitals_is_the_same_url_recorded_in_lowercase(tmp_path, clips, model, s3):
    """Schemes are case-insensitive (RFC 3986; fsspec's registry is not): S3://b/x is s3://b/x, one input however
    spelled, recorded as s3://."""
    loud = "S3://" + s3[len("s3://"):]
    fs, bucket = storage.filesystem(s3)
    for name in ("a.mp4", "b.mp4"):
        fs.pipe_file(f"{bucket}/v/{name}", (clips / name).read_bytes())
    code, stdout, stderr = cli(*encode_args(f"{loud}/v", f"{s3}/v/a.mp4", out=f"{loud}/tok", model=model))
    assert code == 0 and json.loads(stdout)["videos_ok"] == 2 and json.loads(stdout)["out"] == f"{s3}/tok", stderr
    assert sorted(meta["source"] for _, _, meta in read_tokens(f"{s3}/tok")) == [f"{s3}/v/a.mp4", f"{s3}/v/b.mp4"]
    assert json.loads(storage.read_bytes(f"{s3}/tok/lfqtok.json"))["inputs"] == [f"{s3}/v", f"{s3}/v/a.mp4"]
    code, stdout, stderr = cli(*encode_args(f"{s3}/v", out=f"{s3}/tok", model=model))  # the same run, spelled otherwise
    assert code == 0 and json.loads(stdout)["shards_skipped"] == 1, stderr
    assert storage.redact("HTTPS://h/p?sig=S&a=1") == "https://h/p?a=1" and storage.location("S3://b//x") == "s3://b/x"


def test_out_holding_a_table_spelled_in_capitals_is_refused(tmp_path, clips, model, s3):
    pytest.importorskip("pyarrow")
    fs, bucket = storage.filesystem(s3)
    fs.pipe_file(f"{bucket}/x/t.csv", f"path\n{clips / 'a.mp4'}\n".encode())
    code, stdout, stderr = cli(*encode_args("S3://" + s3[len("s3://"):] + "/x/t.csv", out=f"{s3}/x", model=model))
    assert code == 2 and "holds the input" in one_line(stderr) and fs.find(f"{bucket}/x") == [f"{bucket}/x/t.csv"]


# secrets never leave the process


def test_s3_keys_holding_hash_and_question_marks_are_recorded_as_they_are(tmp_path, clips, model, s3):
    fs, bucket = storage.filesystem(s3)
    fs.pipe_file(f"{bucket}/v/a#1.mp4", (clips / "a.mp4").read_bytes())
    fs.pipe_file(f"{bucket}/v/b?x=1.mp4", (clips / "b.mp4").read_bytes())
    code, stdout, stderr = cli(*encode_args(f"{s3}/v", out=str(tmp_path / "out"), model=model))
    assert code == 0 and json.loads(stdout)["videos_ok"] == 2, stderr
    sources = {key: meta["source"] for key, _, meta in read_tokens(tmp_path / "out")}
    assert sources == {"a_1": f"{s3}/v/a#1.mp4", "b_x_1": f"{s3}/v/b?x=1.mp4"}
    assert all(storage.read_bytes(source) for source in sources.values())  # each names its own object


def test_what_users_see_of_a_url_keeps_the_object_and_drops_credentials():
    signed = "https://b.s3.amazonaws.com/v/a.mp4?X-Amz-Credential=AK%2F&X-Amz-Signature=S1&id=7&sig=S2&Expires=9#tok=S3"
    assert storage.redact(signed) == "https://b.s3.amazonaws.com/v/a.mp4?id=7"
    assert storage.name(signed) == "a.mp4" and storage.parent(signed) == "https://b.s3.amazonaws.com/v"
    assert storage.redact("s3://user:S4@b/v/a?b#c.mp4") == "s3://b/v/a?b#c.mp4"  # an object key, whole
    assert storage.name("s3://b/v/a?b#c.mp4") == "a?b#c.mp4"
    assert storage.normalize("s3://b//x///y/") == "s3://b/x/y/" and storage.normalize("https://h//x") == "https://h//x"
    storage.filesystem("http://h/x", {"headers": {"Authorization": "Bearer S5-long"}, "client_kwargs": {}})
    line = storage.scrub('Could not connect to "http://u:S6@h:9/p?token=S7&a=1": Bearer S5-long refused')
    assert not any(f"S{i}" in line for i in range(4, 8)) and "http://h:9/p?a=1" in line, line


def test_a_presigned_list_of_presigned_urls_gives_keys_from_paths(clips, http_server):
    from lfqtok.pipeline.sources import list_items

    for name in ("a.mp4", "b.mp4"):
        (http_server.root / "v" / name).parent.mkdir(exist_ok=True)
        (http_server.root / "v" / name).write_bytes((clips / name).read_bytes())
    (http_server.root / "v" / "list.txt").write_text(f"a.mp4\n{http_server.url('v/b.mp4')}?token={CANARY}\n")
    items = list_items([f"@{http_server.url('v/list.txt')}?X-Amz-Signature={CANARY}"], timeout=TIMEOUT)
    assert [(i.key, i.source) for i in items] == [("a", http_server.url("v/a.mp4")), ("b", http_server.url("v/b.mp4"))]
    assert items[1].path.endswith(f"?token={CANARY}")  # what is fetched keeps its signature; what is shown does not


def _files_hold(root: Path, secret: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


@pytest.mark.slow
def test_a_canary_secret_in_presigned_urls_never_leaves_the_process(tmp_path, clips, model, http_server):
    for name in ("a.mp4", "b.mp4"):
        (http_server.root / name).write_bytes((clips / name).read_bytes())
    (http_server.root / "m.safetensors").write_bytes(Path(model).read_bytes())
    _tar_of(clips, http_server.root / "v.tar")
    signed = f"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={CANARY}%2F&X-Amz-Signature={CANARY}&X-Amz-Expires=60"
    inputs = [http_server.url("a.mp4") + f"?token=eyJ.{CANARY}.x", http_server.url("b.mp4") + f"?{signed}#{CANARY}"]
    out, cache = tmp_path / "out", tmp_path / "cache"
    env = {**os.environ, "LFQTOK_CACHE": str(cache), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = lambda *args: subprocess.run([sys.executable, "-m", "lfqtok", *args], capture_output=True, text=True, env=env, timeout=300)
    model_url = http_server.url("m.safetensors") + f"?sig={CANARY}&v=2"
    done = run(*encode_args(*inputs, out=str(out), model=model_url))
    assert done.returncode == 0, done.stderr
    keys = {key: meta["source"] for key, _, meta in read_tokens(out)}
    assert keys == {"a": http_server.url("a.mp4"), "b": http_server.url("b.mp4")}  # keys from the path; sources minus credentials
    tarred = run(*encode_args(http_server.url("v.tar") + f"?sig={CANARY}", out=str(tmp_path / "tarred"), model=model_url))
    assert tarred.returncode == 0 and {k for k, _, _ in read_tokens(tmp_path / "tarred")} == {"a", "b"}, tarred.stderr
    [cached] = (cache / "models").glob("*/*")
    assert cached.name == "m.safetensors"  # a hash folder, then the path's basename
    http_server.behave("a.mp4", 403)
    refused = run(*encode_args(inputs[0], out=str(tmp_path / "refused"), model=model_url))
    assert refused.returncode == 1 and "403 Forbidden" in refused.stderr
    endpoint = json.dumps({"client_kwargs": {"endpoint_url": f"http://user:{CANARY}@127.0.0.1:1/?token={CANARY}"}})
    bad_endpoint = run(*encode_args(str(clips), out="s3://some-bucket/tok", model=model, more=("--storage-options", endpoint)))
    assert bad_endpoint.returncode != 0 and "Traceback" not in bad_endpoint.stderr and len(bad_endpoint.stderr.strip().splitlines()) == 1
    for result in (done, tarred, refused, bad_endpoint):
        assert CANARY not in result.stdout + result.stderr, result.stdout + result.stderr
    assert not _files_hold(tmp_path, CANARY)  # outputs, stats, manifests and the model cache


# found by the review of the merged sweep (qa-24)


def test_a_prefix_whose_listing_stalls_is_one_line_not_a_failed_video(tmp_path, clips, model, s3, s3_server, monkeypatch):
    """The store answers the prefix's HEAD (404) but never its LIST: the run stops in one line, within the timeout;
    it used to take the prefix for one object, record it as a failed video and exit 0 with an empty OUT."""
    fs, bucket = storage.filesystem(s3)
    fs.pipe_file(f"{bucket}/v/a.mp4", (clips / "a.mp4").read_bytes())
    code, _, stderr, elapsed = encode_stalled(f"GET /{bucket}?list-type", f"{s3}/v", tmp_path / "out", model, s3_server, monkeypatch)
    assert code == 1 and f"{s3}/v" in one_line(stderr) and f"no progress for {TIMEOUT} s" in stderr, stderr
    assert not (tmp_path / "out").exists() and elapsed < 3 * TIMEOUT + 20, elapsed


def test_credentials_in_an_object_store_url_are_refused_and_never_shown(tmp_path, clips, model):
    # s3fs never reads a URL's user info (boto then named the whole "user:secret@bucket" as an invalid bucket)
    out = f"s3://user:{CANARY}@bucket/tok"
    with pytest.raises(UsageError, match="--storage-options") as refused:
        lfqtok.encode_dataset([str(clips)], out, model=model, size=SIZE, clip_frames=FRAMES, device="cpu", workers=0)
    assert CANARY not in str(refused.value) and str(refused.value).startswith("s3://bucket/tok: ")
    code, _, stderr = cli(*encode_args(str(clips), out=out, model=model))
    assert code == 2 and CANARY not in stderr and "carries no credentials" in one_line(stderr)


def test_an_endpoint_given_only_in_storage_options_serves_the_whole_run(clips, model, s3, s3_server, monkeypatch):
    # a second look at OUT once went without the options: to the default endpoint (here a dead one), so a store
    # reached only through --storage-options (MinIO, a custom endpoint) failed at "cannot check"
    use_s3_server(monkeypatch, "http://127.0.0.1:1")
    options = json.dumps({"client_kwargs": {"endpoint_url": s3_server}})
    code, stdout, stderr = cli(*encode_args(str(clips), out=f"{s3}/tok", model=model, more=("--storage-options", options)))
    assert code == 0 and json.loads(stdout)["videos_ok"] == 2, stderr


def test_stats_of_a_token_prefix_whose_listing_stalls_is_one_line(tmp_path, clips, model, s3, s3_server, monkeypatch):
    """Readers (stats, decode, read_tokens) list a token prefix too: a LIST never answered used to hang them."""
    code, _, stderr = cli(*encode_args(str(clips), out=f"{s3}/tok", model=model))
    assert code == 0, stderr
    monkeypatch.setattr(storage, "LIST_TIMEOUT", float(TIMEOUT))
    bucket = s3[len("s3://"):]
    proxy = _StallingProxy(s3_server, f"GET /{bucket}?list-type".encode())
    try:
        use_s3_server(monkeypatch, proxy.endpoint)
        started = time.monotonic()
        code, _, stderr = cli("stats", f"{s3}/tok")
        elapsed = time.monotonic() - started
    finally:
        proxy.close()
    assert code == 1 and f"{s3}/tok" in one_line(stderr) and f"no progress for {TIMEOUT} s" in stderr, stderr
    assert elapsed < 3 * TIMEOUT + 20, elapsed


def test_a_refusal_names_out_without_its_user_info_to_library_callers_too(clips, model):
    # the CLI scrubs every message it prints; a library caller reads the exception's own text
    out = f"memory://user:{CANARY}@lfqtok-refusal/tok"
    options = {"model": model, "size": SIZE, "clip_frames": FRAMES, "device": "cpu", "workers": 0}
    lfqtok.encode_dataset([str(clips)], out, **options)
    with pytest.raises(OutputRefused, match="other settings") as refused:
        lfqtok.encode_dataset([str(clips)], out, **{**options, "size": 2 * SIZE})
    assert CANARY not in str(refused.value) and "memory://lfqtok-refusal/tok holds tokens" in str(refused.value)


def test_a_presigned_list_url_stays_out_of_the_manifest_and_errors(tmp_path, clips, model, http_server):
    """`@URL?sig=...`: the manifest's `inputs` and the 'nothing found' line name the list without its signature."""
    (http_server.root / "a.mp4").write_bytes((clips / "a.mp4").read_bytes())
    (http_server.root / "list.txt").write_text("a.mp4\n")
    (http_server.root / "empty.txt").write_text("\n")
    code, stdout, stderr = cli(*encode_args(f"@{http_server.url('list.txt')}?sig={CANARY}", out=str(tmp_path / "out"), model=model))
    assert code == 0 and CANARY not in stdout + stderr, stderr
    assert json.loads((tmp_path / "out" / "lfqtok.json").read_text())["inputs"] == [f"@{http_server.url('list.txt')}"]
    assert not _files_hold(tmp_path, CANARY)
    code, stdout, stderr = cli(*encode_args(f"@{http_server.url('empty.txt')}?sig={CANARY}", out=str(tmp_path / "none"), model=model))
    assert code != 0 and CANARY not in one_line(stderr) and http_server.url("empty.txt") in stderr, stderr


def test_presigned_token_tars_are_read_and_their_signature_never_shown(tmp_path, clips, model, http_server):
    """stats --by source/shard and decode of `tok/00000.tar?sig=...`: the manifest beside the tar is found (the
    query is no part of the name) and no row or line carries the signature."""
    code, _, stderr = cli(*encode_args(str(clips), out=str(http_server.root / "tok"), model=model))
    assert code == 0, stderr
    tar = http_server.url("tok/00000.tar") + f"?sig={CANARY}"
    for by in ("source", "shard"):
        code, stdout, stderr = cli("stats", tar, "--by", by, "--json")
        assert code == 0 and CANARY not in stdout + stderr, stdout + stderr
        rows = json.loads(stdout)[f"per_{by}"]
        assert {row["shard"] for row in rows} == {http_server.url("tok/00000.tar")}
    code, stdout, stderr = cli("decode", tar, "-o", str(tmp_path / "prev"), "--format", "png", "--device", "cpu", "--json")
    assert code == 0 and CANARY not in stdout + stderr, stderr
    assert len(json.loads(stdout)) == 2 and not _files_hold(tmp_path, CANARY)
