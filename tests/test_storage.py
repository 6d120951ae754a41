"""Object storage end to end against a real S3-compatible server (moto's, started on 127.0.0.1 by conftest's `s3`
fixture) through the real s3fs client: encode from and to a bucket equals a local encode, kill and resume, the
readers, and one clear line for each thing a user can get wrong. Samples' `source` differs by nature (a path vs a
URL): outputs are compared with it replaced by the source relative to its input root."""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

import lfqtok
from lfqtok.io import storage
from lfqtok.cli import app
from lfqtok.io.shards import read_tokens
from conftest import S3_SECRET, kill_9_once, start_s3_server, use_s3_server
from tcp_proxy import TcpProxy
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
        if name == "lfqtok.json" or name.startswith("lfqtok.listing."):  # the listing names its sources, local or not
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


def test_token_dataset_stats_and_decode_read_the_bucket(tmp_path, videos, model, s3):
    from lfqtok.dataset import TokenDataset
    from lfqtok.inspect.decode import decode_samples
    from lfqtok.inspect.stats import token_stats

    upload(videos, f"{s3}/videos")
    lfqtok.encode_dataset([str(videos)], tmp_path / "tok", model=model, samples_per_shard=2, **OPTIONS)
    lfqtok.encode_dataset([f"{s3}/videos"], f"{s3}/tok", model=model, samples_per_shard=2, **OPTIONS)
    local = [(k, t.tolist()) for k, t, _ in read_tokens(tmp_path / "tok")]
    assert [(k, t.tolist()) for k, t, _ in read_tokens(f"{s3}/tok")] == local
    clips = lambda inputs: [(i["tokens"].tolist(), i["key"], i["clip"]) for i in TokenDataset(inputs)]
    assert clips(f"{s3}/tok") == clips(str(tmp_path / "tok")) and clips(f"{s3}/tok")
    drop = lambda r: {k: v for k, v in r.items() if k not in ("per_shard",)}
    assert drop(token_stats([f"{s3}/tok"], workers=1)) == drop(token_stats([str(tmp_path / "tok")], workers=1))
    rows = decode_samples([f"{s3}/tok"], tmp_path / "previews", limit=2, fmt="png", model=model, device="cpu")
    assert len(rows) == 2 and all(Path(r["output"]).is_file() for r in rows)
    assert all(r["psnr"] is not None for r in rows)  # the sources were re-read from the bucket


def test_a_model_url_is_fetched_once_into_the_cache(tmp_path, model, s3, monkeypatch):
    from lfqtok.tokenizers.model import load_tokenizer

    monkeypatch.setenv("LFQTOK_CACHE", str(tmp_path / "cache"))
    upload(Path(model).parent, f"{s3}/models")
    url = f"{s3}/models/{Path(model).name}"
    tok = load_tokenizer(url)
    assert tok.sha256 == load_tokenizer(model).sha256
    [cached] = (tmp_path / "cache" / "models").glob("*/*.safetensors")
    assert cached.parent.name == tok.sha256 and cached.name == Path(model).name
    mtime = cached.stat().st_mtime_ns
    load_tokenizer(url)
    assert cached.stat().st_mtime_ns == mtime  # found again, not fetched again


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_storage_mistakes_are_one_line_and_never_show_the_secret(tmp_path, videos, model, s3):
    upload(videos, f"{s3}/videos")
    encode = lambda src, out, *more: run_cli("encode", src, "-o", out, "--model", model, "--size", str(SIZE),
                                             "--clip-frames", str(FRAMES), "--workers", "0", "--device", "cpu", *more)
    code, output = encode(f"{s3}/videos", "s3://no-such-bucket-lfqtok/tok")
    assert code == 1 and "no-such-bucket-lfqtok" in output and "bucket" in output.lower()
    code, output = encode(f"{s3}/nothing-here", f"{s3}/tok")
    assert code == 1 and "nothing-here: no such file or directory" in output
    code, output = encode(f"{s3}/videos", "gs://some-bucket/tok")
    assert code == 2 and "lfqtok[gcs]" in output and "gcsfs" in output
    code, output = encode(f"{s3}/videos", "https://example.com/tok")
    assert code == 2 and "read-only" in output
    code, output = encode(f"{s3}/videos", f"{s3}/tok", "--storage-options", "{not json")
    assert code == 2 and "--storage-options" in output
    secret = '{"secret": "%s", "key": "lfqtok-test-key"}' % S3_SECRET
    code, output = encode(f"{s3}/videos", f"{s3}/tok", "--storage-options", secret, "--json")
    assert code == 0, output
    for command in (("stats", f"{s3}/tok", "--json", "--storage-options", secret),
                    ("decode", f"{s3}/tok", "-o", str(tmp_path / "prev"), "--format", "png", "--limit", "1",
                     "--model", model, "--device", "cpu", "--json", "--storage-options", secret)):
        code, more = run_cli(*command)
        assert code == 0, more
        output += more
    fs, path = storage.filesystem(f"{s3}/tok")
    written = b"".join(fs.cat_file(p) for p in fs.find(path))
    assert S3_SECRET not in output and S3_SECRET.encode() not in written
    assert len(output.splitlines()) > 3  # the outputs were there to search


def test_wrong_credentials_are_one_line(tmp_path, videos, model, monkeypatch):
    proc, endpoint = start_s3_server(INITIAL_NO_AUTH_ACTION_COUNT="0")  # this server checks every request's keys
    try:
        use_s3_server(monkeypatch, endpoint)
        code, output = run_cli("encode", str(videos), "-o", "s3://some-bucket/tok", "--model", model, "--size", str(SIZE),
                               "--clip-frames", str(FRAMES), "--workers", "0", "--device", "cpu")
        assert code == 1 and "access denied" in output and "s3://some-bucket/tok" in output
        assert len(output.strip().splitlines()) == 1 and S3_SECRET not in output
        code, output = run_cli("stats", "s3://some-bucket/tok")
        assert code == 1 and "access denied" in output and len(output.strip().splitlines()) == 1
    finally:
        proc.kill()
        proc.wait()


def _check_committed(out: str) -> list[str]:
    """Every shard with a `_stats.json` has a whole tar holding as many samples as its stats say; returns the stats."""
    names = storage.list_names(out)
    done = [n for n in names if n.endswith("_stats.json")]
    for name in done:
        stats = json.loads(storage.read_bytes(f"{out}/{name}"))
        tar = f"{out}/{name[:5]}.tar"
        assert len(list(read_tokens(tar))) == stats["samples"]
    return done


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_gives_the_same_shards(tmp_path, videos, model, s3):
    upload(videos, f"{s3}/videos")
    lfqtok.encode_dataset([str(videos)], tmp_path / "whole", model=model, samples_per_shard=1, **OPTIONS)
    out = f"{s3}/killed"
    script = (
        "import sys, lfqtok; lfqtok.encode_dataset([sys.argv[1]], sys.argv[2], model=sys.argv[3], size=%d, "
        "clip_frames=%d, workers=1, batch_size=1, device='cpu', samples_per_shard=1)" % (SIZE, FRAMES)
    )
    kill_9_once([sys.executable, "-c", script, f"{s3}/videos", out, model],
                lambda: [n for n in storage.list_names(out) if n.endswith("_stats.json")])
    killed = _check_committed(out)  # no shard looks finished that is not
    assert 1 <= len(killed) < 4, killed
    before = {n: storage.read_bytes(f"{out}/{n}") for n in killed}
    rerun = lfqtok.encode_dataset([f"{s3}/videos"], out, model=model, samples_per_shard=1, **OPTIONS)
    assert rerun.shards_skipped == len(killed)
    assert {n: storage.read_bytes(f"{out}/{n}") for n in killed} == before  # committed shards untouched
    roots = (str(videos), f"{s3}/videos")
    assert contents(out, roots) == contents(tmp_path / "whole", roots)
    fs, path = storage.filesystem(out)
    assert not fs.list_multipart_uploads(path.partition("/")[0])  # leftovers aborted (moto dates them 2010: stale)


class _Proxy(TcpProxy):
    """Cuts the network (every connection dropped, new ones refused) right after it passed on the answer to the first
    PUT of a `_stats.json` (one shard committed), and can be restored: a network cut mid-run with the server's data
    kept."""

    def __init__(self, upstream: str):
        self.open, self.armed, self.spent = True, False, False  # spent: it cuts once
        super().__init__(upstream)

    def accepting(self) -> bool:
        return self.open

    def passes(self, data: bytes, up: bool) -> bool:
        if up and data.startswith(b"PUT ") and b"_stats.json" in data.split(b"\r\n", 1)[0] and not self.spent:
            self.armed = True
        return self.open

    def passed(self, data: bytes, up: bool) -> None:
        if not up and self.armed and self.open and b" 200 OK" in data:  # the PUT's answer, not its 100 Continue
            self.cut()

    def cut(self) -> None:
        """Every connection dropped, new ones refused at once."""
        self.open, self.armed, self.spent = False, False, True
        self.drop()

    def restore(self) -> None:
        self.open = True


@pytest.mark.slow
def test_a_network_cut_mid_upload_fails_the_run_in_one_line_and_loses_nothing(tmp_path, videos, model, s3, s3_server, monkeypatch):
    from lfqtok.errors import LfqtokError

    upload(videos, f"{s3}/videos")
    lfqtok.encode_dataset([str(videos)], tmp_path / "whole", model=model, samples_per_shard=1, **OPTIONS)
    proxy = _Proxy(s3_server)
    use_s3_server(monkeypatch, proxy.endpoint)
    out = f"{s3}/cut"
    once = {"config_kwargs": {"retries": {"max_attempts": 1}}}  # botocore's own retries off: the test fails fast
    with pytest.raises(LfqtokError) as failed:
        lfqtok.encode_dataset([f"{s3}/videos"], out, model=model, samples_per_shard=1, storage_options=once, **OPTIONS)
    assert not proxy.open
    assert len(str(failed.value).splitlines()) == 1 and out in str(failed.value) and S3_SECRET not in str(failed.value)
    proxy.restore()
    committed = _check_committed(out)
    assert committed, "the shard finished before the cut is kept"
    before = {n: storage.read_bytes(f"{out}/{n}") for n in committed}
    lfqtok.encode_dataset([f"{s3}/videos"], out, model=model, samples_per_shard=1, **OPTIONS)
    assert {n: storage.read_bytes(f"{out}/{n}") for n in committed} == before
    roots = (str(videos), f"{s3}/videos")
    assert contents(out, roots) == contents(tmp_path / "whole", roots)


@pytest.mark.slow
def test_ray_with_inputs_model_and_out_all_urls_equals_a_local_encode(tmp_path, videos, model, s3, monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("LFQTOK_CACHE", str(tmp_path / "cache"))  # the actors fetch the model into it themselves
    upload(videos, f"{s3}/videos")
    upload(Path(model).parent, f"{s3}/models")
    lfqtok.encode_dataset([str(videos)], tmp_path / "local", model=model, samples_per_shard=2, **OPTIONS)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # workers inherit AWS_*
    try:
        summary = lfqtok.encode_dataset([f"{s3}/videos"], f"{s3}/tok", model=f"{s3}/models/{Path(model).name}",
                                        engine="ray", samples_per_shard=2, **OPTIONS)
    finally:
        ray.shutdown()
    assert summary.shards_written == 2
    roots = (str(videos), f"{s3}/videos")
    assert contents(f"{s3}/tok", roots) == contents(tmp_path / "local", roots)
    assert list((tmp_path / "cache" / "models").glob("*/*.safetensors"))
