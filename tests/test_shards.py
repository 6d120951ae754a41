"""The token directory format (DESIGN.md §4): manifest first, temp name then rename, stats last, byte-identical
reruns, settings checks on resume, and shards that read back with plain tarfile + numpy and with webdataset."""

import gzip
import io
import json
import os
import tarfile
import time

import numpy as np
import pytest
import webdataset as wds

from lfqtok.errors import OutputError, UsageError
from lfqtok.io.shards import (
    MANIFEST_NAME,
    Listing,
    ShardWriter,
    build_manifest,
    listing_change,
    listing_name,
    prepare_output,
    read_listing,
    read_manifest,
    read_tokens,
    shard_path,
    stats_path,
)


def manifest(**changes) -> dict:
    options = dict(codebook_size=2**18, num_codebooks=1, tokenizer_name="default", tokenizer_sha256="ab" * 32,
                   tokenizer_config={"codebook_bits": 18}, clip_frames=17, size=128, token_shape=[5, 16, 16],
                   extra={"clip": {"fps": None, "clip_stride": None}, "inputs": ["videos/"]})
    return build_manifest(**{**options, **changes})


def write_shard(out, index, samples, dtype=np.uint32, extras=None):
    with ShardWriter(out, index, dtype) as writer:
        for key, tokens in samples.items():
            writer.write(key, tokens, {"source": f"/v/{key}.mp4", "fps": 24.0}, extras)
        writer.finish({"samples": len(samples), "failures": []})


TOKENS = {"a": np.arange(2 * 5 * 4 * 4).reshape(2, 5, 4, 4), "b": np.full((1, 5, 4, 4), 2**18 - 1)}


def test_manifest_has_every_design_key():
    m = manifest()
    for key in ("format", "format_version", "codebook_size", "num_codebooks", "token_dtype", "bit_order",
                "tokenizer", "clip_frames", "size", "token_shape", "lfqtok_version"):
        assert key in m
    assert m["format"] == "lfqtok-tokens" and m["format_version"] == 1 and m["bit_order"] == "msb_first"
    assert m["token_dtype"] == "uint32" and manifest(codebook_size=2**16)["token_dtype"] == "uint16"
    assert set(m["tokenizer"]) == {"name", "sha256", "config"}


def test_write_then_read_back_with_ours_tarfile_and_webdataset(tmp_path):
    out = tmp_path / "tok"
    assert prepare_output(out, manifest(), overwrite=False).finished == set()
    write_shard(out, 0, TOKENS, extras={"txt": b"a caption", "json": b'{"id": 1}'})
    assert sorted(p.name for p in out.iterdir()) == ["00000.tar", "00000_stats.json", MANIFEST_NAME]
    ours = list(read_tokens(out))
    assert [k for k, _, _ in ours] == ["a", "b"]
    for key, tokens, meta in ours:
        assert tokens.dtype == np.uint32 and np.array_equal(tokens, TOKENS[key])
        assert meta["source"] == f"/v/{key}.mp4" and meta["tokens_shape"] == list(TOKENS[key].shape)
    with tarfile.open(shard_path(out, 0)) as tar:  # plain tarfile + numpy
        names = tar.getnames()
        plain = np.load(io.BytesIO(tar.extractfile("b.tokens.npy").read()))
    assert {"a.tokens.npy", "a.json", "a.txt", "a.src.json"} <= set(names) and np.array_equal(plain, TOKENS["b"])
    samples = list(wds.WebDataset(str(shard_path(out, 0)), shardshuffle=False).decode())
    assert [s["__key__"] for s in samples] == ["a", "b"] and samples[0]["src.json"] == {"id": 1}
    assert np.array_equal(samples[1]["tokens.npy"], TOKENS["b"])
    assert json.loads(stats_path(out, 0).read_text()) == {"shard": 0, "samples": 2, "failures": []}


def test_equal_inputs_give_byte_identical_tars(tmp_path):
    for name in ("x", "y"):
        prepare_output(tmp_path / name, manifest(), overwrite=False)
        write_shard(tmp_path / name, 3, TOKENS)
        time.sleep(0.01)
    assert shard_path(tmp_path / "x", 3).read_bytes() == shard_path(tmp_path / "y", 3).read_bytes()
    assert (tmp_path / "x" / MANIFEST_NAME).read_bytes() == (tmp_path / "y" / MANIFEST_NAME).read_bytes()


def test_an_exception_inside_the_writer_leaves_nothing_half_written(tmp_path):
    out = tmp_path / "tok"
    prepare_output(out, manifest(), overwrite=False)
    with pytest.raises(RuntimeError):
        with ShardWriter(out, 0, np.uint32) as writer:
            writer.write("a", TOKENS["a"], {})
            assert (out / "00000.tar.tmp").exists()  # the temp name while writing
            raise RuntimeError("killed")
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_NAME]
    assert list(read_tokens(out)) == []


def test_keys_and_values_are_checked(tmp_path):
    with ShardWriter(tmp_path, 0, np.uint16) as writer:
        with pytest.raises(UsageError, match="dot"):
            writer.write("a.b", TOKENS["a"], {})
        with pytest.raises(UsageError, match="uint16"):
            writer.write("big", np.array([[[[70000]]]]), {})


def test_resume_returns_finished_shards_and_keeps_them(tmp_path):
    out = tmp_path / "tok"
    prepare_output(out, manifest(), overwrite=False)
    write_shard(out, 0, TOKENS)
    shard_path(out, 1).write_bytes(b"unfinished: no stats")  # killed after the rename, before its stats
    before = shard_path(out, 0).read_bytes()
    changed_info = manifest(extra={"clip": {"fps": None, "clip_stride": None}, "inputs": ["/abs/videos"]})
    assert prepare_output(out, changed_info, overwrite=False).finished == {0}  # inputs spelled differently: same run
    assert shard_path(out, 0).read_bytes() == before
    assert json.loads((out / MANIFEST_NAME).read_text())["inputs"] == ["videos/"]


def test_other_settings_are_refused_naming_the_options_unless_overwrite(tmp_path):
    out = tmp_path / "tok"
    prepare_output(out, manifest(), overwrite=False)
    write_shard(out, 0, TOKENS)
    other = manifest(tokenizer_sha256="cd" * 32, extra={"clip": {"fps": 8.0, "clip_stride": None}})
    with pytest.raises(OutputError, match=r"--model \S+ \(sha256 abababababab\) \(was\) vs \S+ \(sha256 cdcdcdcdcdcd\) \(now\); "
                                          r"--fps not set \(was\) vs 8 \(now\)\.") as info:
        prepare_output(out, other, overwrite=False)
    assert "--overwrite" in str(info.value) and "\n" not in str(info.value)
    assert prepare_output(out, other, overwrite=True).finished == set()
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_NAME]
    assert read_manifest(out)["clip"]["fps"] == 8.0


def test_stale_temp_files_go_and_fresh_ones_stay(tmp_path):
    out = tmp_path / "tok"
    prepare_output(out, manifest(), overwrite=False)
    stale, fresh = out / "00004.tar.tmp", out / "00005.tar.tmp"
    for path in (stale, fresh):
        path.write_bytes(b"partial")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    prepare_output(out, manifest(), overwrite=False)
    assert not stale.exists() and fresh.exists()  # fresh: maybe another --shard-index process writing now


def test_shards_without_a_manifest_are_not_adopted(tmp_path):
    out = tmp_path / "tok"
    out.mkdir()
    (out / "00000.tar").write_bytes(b"")
    with pytest.raises(OutputError, match="overwrite"):
        prepare_output(out, manifest(), overwrite=False)


def test_unwritable_output_is_one_line_output_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OutputError, match="cannot write"):
        prepare_output(blocker / "tok", manifest(), overwrite=False)
    with pytest.raises(OutputError, match="cannot write") as info:
        with ShardWriter(blocker, 0, np.uint32) as writer:
            writer.write("a", TOKENS["a"], {})
    assert "\n" not in str(info.value)


# the listing


ENTRIES = [["a", "/v/a.mp4"], ["b", "/v/b.mp4"], ["c", "/v/\u00e9t\u00e9 \"x\".mp4"]]


def test_the_listing_identity_and_what_changed():
    identity = lambda entries: Listing(entries).identity
    assert identity(ENTRIES) == identity([list(e) for e in ENTRIES]) and identity(ENTRIES)["count"] == 3
    assert identity(ENTRIES) != identity(ENTRIES[::-1])  # order is part of it
    assert listing_change(ENTRIES, ENTRIES + [["d", "/v/d.mp4"], ["e", "/v/e.mp4"]]) == "2 inputs added, 0 removed"
    assert listing_change(ENTRIES, ENTRIES[1:]) == "0 inputs added, 1 removed"
    assert listing_change(ENTRIES, [["x", s] for _, s in ENTRIES]) == "the same inputs under other keys or in another order"
    assert listing_change(None, ENTRIES, 5) == "the inputs changed (5 then, 3 now)"


def test_the_listing_sidecar_is_written_before_the_manifest_and_checked_by_its_hash(tmp_path):
    out = tmp_path / "tok"
    m = manifest(extra={"clip": {}, "listing": Listing(ENTRIES).identity})
    prepare_output(out, m, overwrite=False, listing=Listing(ENTRIES))
    identity = m["listing"]
    assert read_listing(out, identity) == ENTRIES and (out / listing_name(identity)).is_file()
    lines = [json.loads(line) for line in gzip.decompress((out / listing_name(identity)).read_bytes()).splitlines()]
    assert lines == ENTRIES  # one JSON [key, source] a line
    (out / listing_name(identity)).write_bytes(gzip.compress(b'["a", "/v/other.mp4"]\n'))
    assert read_listing(out, identity) is None  # another listing under its name: not taken for it

