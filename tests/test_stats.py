"""token_stats: exact metrics on token sets with known distributions, written by a plain tarfile + np.save
writer that follows DESIGN.md §4 (not by lfqtok), for uint16 and uint32, one and several codebooks."""

import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest

import lfqtok.inspect.stats as stats_mod
from lfqtok.errors import InputError, UsageError
from lfqtok.io.shards import read_tokens
from lfqtok.inspect.stats import token_stats

# an independent writer of the DESIGN §4 format


def write_dir(out: Path, shards: list[dict[str, np.ndarray]], codebook_size: int | None, num_codebooks: int = 1,
              bit_order: str = "msb_first") -> Path:
    """Token dir: optional lfqtok.json, then {i:05d}.tar + {i:05d}_stats.json per shard of {key: tokens}."""
    out.mkdir(parents=True)
    if codebook_size is not None:
        manifest = {"format": "lfqtok-tokens", "format_version": 1, "codebook_size": codebook_size,
                    "num_codebooks": num_codebooks, "token_dtype": "uint16" if codebook_size <= 65536 else "uint32",
                    "bit_order": bit_order, "tokenizer": {"name": "default", "sha256": "0" * 64, "config": {}},
                    "clip_frames": 5, "size": 16, "token_shape": [2, 2, 2], "lfqtok_version": "test"}
        (out / "lfqtok.json").write_text(json.dumps(manifest))
    for index, samples in enumerate(shards):
        with tarfile.open(out / f"{index:05d}.tar", "w") as tar:
            for key, tokens in samples.items():
                buf = io.BytesIO()
                np.save(buf, tokens)
                members = {"tokens.npy": buf.getvalue(), "json": json.dumps({"source": f"/videos/{key}.mp4"}).encode()}
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        (out / f"{index:05d}_stats.json").write_text(json.dumps({"shard": index, "samples": len(samples)}))
    return out


def tokens_of(codes, dtype=np.uint16, shape=(2, 2, 2)) -> np.ndarray:
    """Codes (a multiple of 8 of them) -> (clips, t, h, w) array in the storage dtype."""
    return np.asarray(codes, dtype=dtype).reshape(-1, *shape)


# exact metrics


@pytest.mark.parametrize("dtype, codebook_size", [(np.uint16, 16), (np.uint32, 2**18)])
def test_uniform_over_all_codes_is_full_entropy(tmp_path, dtype, codebook_size):
    codes = np.arange(codebook_size)
    out = write_dir(tmp_path / "tok", [{"a": tokens_of(codes[: codebook_size // 2], dtype)},
                                        {"b": tokens_of(codes[codebook_size // 2 :], dtype)}], codebook_size)
    r = token_stats([out], workers=1)
    bits = int(math.log2(codebook_size))
    assert r["num_samples"] == 2 and r["num_tokens"] == codebook_size
    assert r["used_codes"] == codebook_size and r["utilization"] == 1.0
    assert r["entropy_bits"] == pytest.approx(bits) and r["perplexity"] == pytest.approx(codebook_size)
    assert r["bit_balance"] == [0.5] * bits and r["codebook_size_inferred"] is False
    assert np.allclose(np.array(r["bit_mutual_information"]) - np.eye(bits), 0, atol=1e-9)  # independent bits
    assert r["dead_bits"] == [] and r["redundant_bit_pairs"] == []


def test_a_single_code_has_zero_entropy_and_dead_bits(tmp_path):
    out = write_dir(tmp_path / "tok", [{"a": tokens_of([5] * 16)}], 16)
    r = token_stats([out], top=3)
    assert r["used_codes"] == 1 and r["utilization"] == 1 / 16
    assert r["entropy_bits"] == 0.0 and r["perplexity"] == 1.0
    assert r["top"] == [[5, 16]]
    assert r["bit_balance"] == [0.0, 1.0, 0.0, 1.0]  # 5 = 0b0101, MSB first
    assert r["dead_bits"] == [0, 1, 2, 3]


def test_two_codes_half_half_is_one_bit_and_identical_bits_share_one_bit(tmp_path):
    out = write_dir(tmp_path / "tok", [{"a": tokens_of([0b0000, 0b1111] * 8)}], 16)
    r = token_stats([out])
    assert r["entropy_bits"] == pytest.approx(1.0) and r["perplexity"] == pytest.approx(2.0)
    assert r["bit_balance"] == [0.5] * 4
    mi = np.array(r["bit_mutual_information"])
    assert np.allclose(mi, 1.0)  # every bit equals every other bit
    assert len(r["redundant_bit_pairs"]) == 6 and r["redundant_bit_pairs"][0][2] == pytest.approx(1.0)
    assert r["top"] == [[0, 8], [15, 8]]  # ties by code


def test_known_per_bit_balance_and_top_order(tmp_path):
    codes = [0b1000] * 2 + [0b1100] * 2 + [0b0000] * 12  # bit 0 (MSB) set in 4/16, bit 1 in 2/16
    out = write_dir(tmp_path / "tok", [{"a": tokens_of(codes)}], 16)
    r = token_stats([out], top=2)
    assert r["bit_balance"] == [0.25, 0.125, 0.0, 0.0]
    assert r["top"] == [[0, 12], [8, 2]]
    p = np.array([12, 2, 2]) / 16
    assert r["entropy_bits"] == pytest.approx(float(-(p * np.log2(p)).sum()))


def test_lsb_first_bit_balance_is_indexed_by_latent_channel(tmp_path):
    codes = [0b0001] * 4 + [0b0011] * 2 + [0b0000] * 10  # channel 0 (the LSB) set in 6/16, channel 1 in 2/16
    msb = write_dir(tmp_path / "msb", [{"a": tokens_of(codes)}], 16)
    lsb = write_dir(tmp_path / "lsb", [{"a": tokens_of(codes)}], 16, bit_order="lsb_first")
    r_msb, r_lsb = token_stats([msb]), token_stats([lsb])
    assert (r_msb["bit_order"], r_lsb["bit_order"]) == ("msb_first", "lsb_first")
    assert r_msb["bit_balance"] == [0.0, 0.0, 0.125, 0.375]  # i = 0 is the most significant bit
    assert r_lsb["bit_balance"] == [0.375, 0.125, 0.0, 0.0]  # i = 0 is channel 0, the least significant bit
    assert r_lsb["dead_bits"] == [2, 3] and r_msb["dead_bits"] == [0, 1]
    assert r_lsb["entropy_bits"] == r_msb["entropy_bits"] and r_lsb["top"] == r_msb["top"]  # codes are codes
    with pytest.raises(InputError, match=r"cannot be counted together \(\S+msb: 16 codes x 1 codebook\(s\), msb_first; "
                                         r"\S+lsb: 16 codes x 1 codebook\(s\), lsb_first\)"):
        token_stats([msb, lsb])


def test_several_codebooks_are_counted_per_codebook_and_pooled(tmp_path):
    tokens = np.stack([np.arange(16).reshape(2, 2, 2, 2), np.full((2, 2, 2, 2), 3)], axis=-1).astype(np.uint16)
    out = write_dir(tmp_path / "tok", [{"a": tokens}], 16, num_codebooks=2)
    r = token_stats([out])
    assert r["num_codebooks"] == 2 and r["num_tokens"] == 32
    first, second = r["per_codebook"]
    assert first["entropy_bits"] == pytest.approx(4.0) and first["used_codes"] == 16
    assert second["entropy_bits"] == 0.0 and second["top"] == [[3, 16]]
    assert r["top"][0] == [3, 17]  # pooled: 16 from codebook 1 + 1 from codebook 0


def test_usage_by_temporal_token_index(tmp_path):
    tokens = np.zeros((1, 2, 2, 2), np.uint16)
    tokens[0, 1] = [[0, 1], [2, 3]]  # t = 0: one code; t = 1: four codes
    out = write_dir(tmp_path / "tok", [{"a": tokens}], 16)
    usage = token_stats([out])["usage_by_position"]
    assert [u["used_codes"] for u in usage] == [1, 4]
    assert [u["entropy_bits"] for u in usage] == pytest.approx([0.0, 2.0])


# counting paths agree


@pytest.fixture
def random_dir(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    shards = [{f"s{s}k{i}": tokens_of(rng.zipf(1.5, 64) % 2**18, np.uint32) for i in range(3)} for s in range(3)]
    return write_dir(tmp_path / "rand", shards, 2**18)


def test_sparse_counting_and_worker_processes_give_the_same_result(random_dir, monkeypatch):
    dense = token_stats([random_dir], workers=1, by="shard")
    pooled = token_stats([random_dir], workers=2, by="shard")
    monkeypatch.setattr(stats_mod, "DENSE_BINS", 64)
    sparse = token_stats([random_dir], workers=1, by="shard")
    assert dense == pooled == sparse


def test_without_a_manifest_the_codebook_size_is_inferred(random_dir):
    known = token_stats([random_dir])
    (random_dir / "lfqtok.json").unlink()
    inferred = token_stats([random_dir])
    largest = max(int(t.max()) for _, t, _ in read_tokens(random_dir))
    assert inferred["codebook_size_inferred"] is True
    assert inferred["codebook_size"] == 2 ** math.ceil(math.log2(largest + 1))
    assert inferred["utilization"] == inferred["used_codes"] / inferred["codebook_size"]
    assert inferred["entropy_bits"] == known["entropy_bits"] and inferred["top"] == known["top"]


def test_brace_patterns_and_tar_paths_read_the_same_tokens(random_dir):
    whole = token_stats([random_dir])
    braced = token_stats([f"{random_dir}/{{00000..00002}}.tar"])
    assert braced == whole


def test_by_shard_and_by_source_rows(random_dir):
    r = token_stats([random_dir], by="source")
    assert [row["key"] for row in r["per_source"]] == [f"s{s}k{i}" for s in range(3) for i in range(3)]
    assert r["per_source"][0]["source"] == "/videos/s0k0.mp4" and r["per_source"][0]["num_tokens"] == 64
    shards = token_stats([random_dir], by="shard")["per_shard"]
    assert [row["num_samples"] for row in shards] == [3, 3, 3] and sum(row["num_tokens"] for row in shards) == 9 * 64


def test_unfinished_shards_are_not_counted(random_dir):
    (random_dir / "00002_stats.json").unlink()  # a shard still being written
    assert token_stats([random_dir])["num_samples"] == 6


def test_plot_writes_a_png(random_dir, tmp_path):
    plot = tmp_path / "plots" / "stats.png"
    token_stats([random_dir], plot=plot)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("bits", [4, 18, 32])
def test_the_bit_balance_plot_labels_whole_bits(tmp_path, bits):
    codes = np.arange(16, dtype=np.int64) << (bits - 4)
    out = write_dir(tmp_path / "tok", [{"a": tokens_of(codes, np.uint32)}], 2**bits, bit_order="lsb_first")
    total = stats_mod.CodeCounts(2**bits)
    total.add(tokens_of(codes, np.uint32), "a")
    total.flush()
    fig = stats_mod.stats_figure(total, token_stats([out]))
    ticks = fig.axes[1].get_xticks()
    assert ticks[0] == 0 and all(float(t).is_integer() for t in ticks) and len(ticks) >= min(bits, 16)
    assert "channel 0 = LSB" in fig.axes[1].get_title()
    assert all(float(t).is_integer() for t in fig.axes[2].get_xticks())


# errors


def test_codes_beyond_the_manifest_codebook_are_an_input_error(tmp_path):
    out = write_dir(tmp_path / "tok", [{"a": tokens_of([0] * 7 + [16])}], 16)
    with pytest.raises(InputError, match="codebook_size 16"):
        token_stats([out])


def test_bad_arguments_and_missing_inputs(tmp_path):
    with pytest.raises(UsageError):
        token_stats([tmp_path], by="video")
    with pytest.raises(InputError, match="not found"):
        token_stats([tmp_path / "nope"])
    with pytest.raises(InputError, match="no finished token shards"):
        token_stats([tmp_path])
