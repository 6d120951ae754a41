"""TokenDataset: every clip exactly once over simulated ranks x DataLoader workers, tokens intact, deterministic
order, flat sequences and packing with their boundaries, an exact resume that does not re-read consumed tokens,
and unreadable shards reported by name (raised or skipped), on shards from an independent writer and from encode."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from token_shards import add_member, write_token_dir
from torch.utils.data import DataLoader

import lfqtok
import lfqtok.dataset.token_dataset as dataset_module
from lfqtok.dataset.token_dataset import TokenDataset, collate, resolve_rank, shard_plan, worker_resume
from lfqtok.errors import InputError, UsageError

K = 1000  # the writer's codebook size


@pytest.fixture(scope="module")
def uneven(tmp_path_factory) -> tuple[Path, dict]:
    """7 shards of uneven sizes (one empty): 25 samples, 49 clips."""
    root = tmp_path_factory.mktemp("uneven") / "tok"
    return root, write_token_dir(root, [5, 1, 0, 7, 3, 6, 3])


def keys_of(items) -> list[tuple[str, int]]:
    return [(it["key"], int(it["clip"])) for it in items]


def loader_items(ds: TokenDataset, workers: int) -> list[dict]:
    return list(DataLoader(ds, batch_size=None, num_workers=workers))


# splitting over ranks and workers


@pytest.mark.parametrize("sizes", [[9], [4, 0, 6], [3, 3, 3, 3], [5, 1, 0, 7, 3, 6, 3]], ids=["1", "3", "4", "7"])
@pytest.mark.parametrize("shuffle", [0, 8])
def test_two_ranks_by_two_workers_see_every_clip_exactly_once_with_its_tokens(tmp_path, sizes, shuffle):
    written = write_token_dir(tmp_path / "tok", sizes)
    seen = []
    for rank in (0, 1):
        seen += loader_items(TokenDataset(tmp_path / "tok", rank=rank, world_size=2, shuffle=shuffle, seed=1), workers=2)
    assert Counter(keys_of(seen)) == Counter(written.keys())  # none lost, none twice
    for it in seen:
        assert it["tokens"].dtype == torch.int64 and torch.equal(it["tokens"], torch.from_numpy(written[it["key"], it["clip"]].astype(np.int64)))
        assert it["source"] == f"videos/{it['key']}.mp4" and it["shard"].endswith(".tar")


@pytest.mark.parametrize("shards", range(1, 12))
@pytest.mark.parametrize("slots", [1, 2, 3, 4, 5, 8])
def test_the_shard_plan_gives_every_sample_residue_to_exactly_one_slot(shards, slots):
    owners = Counter()
    for slot in range(slots):
        for p, k, j in shard_plan(shards, slots, slot):
            for i in range(24):  # 24 samples: divisible by every k that can occur here
                owners[p, i] += i % k == j
    assert set(owners) == {(p, i) for p in range(shards) for i in range(24)} and set(owners.values()) == {1}


def test_shards_go_whole_while_every_slot_can_have_one():
    assert shard_plan(8, 4, 1) == [(1, 1, 0), (5, 1, 0)]
    assert shard_plan(5, 4, 1) == [(1, 1, 0), (4, 4, 1)]  # the 5th is shared by all four slots
    assert shard_plan(2, 4, 3) == [(1, 2, 1)]  # 2 shards, 4 slots: two readers each


def test_rank_and_world_size_come_from_the_environment_unless_given(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert resolve_rank() == (3, 4)
    assert resolve_rank(rank=1, world_size=2) == (1, 2)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert resolve_rank() == (0, 1)
    with pytest.raises(UsageError):
        resolve_rank(rank=2, world_size=2)


# order


def test_the_same_seed_and_epoch_give_the_same_order_and_another_epoch_another(uneven):
    root, written = uneven
    order = keys_of(TokenDataset(root, shuffle=16, seed=5))
    assert order == keys_of(TokenDataset(root, shuffle=16, seed=5)) and sorted(order) == sorted(written)
    assert order != keys_of(TokenDataset(root, shuffle=16, seed=6))
    ds = TokenDataset(root, shuffle=16, seed=5)
    ds.set_epoch(1)
    assert keys_of(ds) != order and keys_of(TokenDataset(root, shuffle=16, seed=5, epoch=1)) == keys_of(ds)


def test_without_shuffle_items_come_in_shard_order(uneven):
    root, _ = uneven
    expected = [(key, c) for key, tokens, _ in lfqtok.read_tokens(root) for c in range(len(tokens))]
    assert keys_of(TokenDataset(root)) == expected


# flat sequences and packing


def test_flat_sequences_are_raster_order_with_special_ids_past_the_codebook(uneven):
    root, written = uneven
    ds = TokenDataset(root, flat=True, bos=True, eos=True, frame_sep=True)
    assert ds.special_ids == {"bos": K, "eos": K + 1, "frame_sep": K + 2, "pad": K + 3} and ds.vocab_size == K + 4
    it = next(iter(ds))
    clip = written[it["key"], it["clip"]].astype(np.int64)  # (2, 3, 3)
    expected = [K, *clip[0].ravel(), K + 2, *clip[1].ravel(), K + 1]  # t, then h, then w
    assert it["tokens"].tolist() == expected
    assert next(iter(TokenDataset(root, flat=True)))["tokens"].tolist() == clip.ravel().tolist()


@pytest.mark.parametrize("seq_len", [5, 20, 64])
def test_packed_blocks_rebuild_every_sequence_and_say_where_they_split(uneven, seq_len):
    root, written = uneven
    ds = TokenDataset(root, seq_len=seq_len, bos=True, eos=True, shuffle=8)
    pieces: dict[tuple[str, int], list] = {}
    blocks = list(ds)
    for block in blocks:
        tokens, segments, positions = block["tokens"], block["segment_ids"], block["positions"]
        assert tokens.shape == segments.shape == positions.shape == (seq_len,)
        for s, doc in enumerate(block["documents"]):
            mask = segments == s
            assert positions[mask].tolist() == list(range(doc["start"], doc["stop"]))
            pieces.setdefault((doc["key"], doc["clip"]), []).append((doc["start"], tokens[mask].tolist()))
        assert (tokens[segments == -1] == K + 3).all()  # padding is the pad id, segment -1
    assert sum((segments == -1).sum() for segments in (b["segment_ids"] for b in blocks)) < seq_len  # only the last
    assert set(pieces) == set(written)
    for ident, parts in pieces.items():
        flat = [t for _, part in sorted(parts) for t in part]
        assert flat == [K, *written[ident].astype(np.int64).ravel().tolist(), K + 1]


def test_packing_without_splitting_pads_instead_and_refuses_sequences_that_cannot_fit(uneven):
    root, written = uneven
    blocks = list(TokenDataset(root, seq_len=45, split_sequences=False))  # 18 tokens a clip: 2 per block
    assert all(doc["start"] == 0 and doc["stop"] == doc["length"] == 18 for b in blocks for doc in b["documents"])
    assert len(blocks) == (len(written) + 1) // 2 and (blocks[0]["tokens"][36:] == K + 3).all()
    batch = collate(blocks[:3])
    assert batch["tokens"].shape == (3, 45) and len(batch["documents"]) == 3
    with pytest.raises(UsageError, match="seq_len"):
        TokenDataset(root, seq_len=10, split_sequences=False)


# resume


@pytest.mark.parametrize("options", [{}, {"shuffle": 8}, {"flat": True, "shuffle": 8}, {"seq_len": 7, "shuffle": 8}],
                         ids=["clips", "shuffled", "flat", "packed"])
@pytest.mark.parametrize("skip", [1, 6, 24, 48, 60])
def test_skip_resumes_exactly_where_the_epoch_was(uneven, options, skip):
    root, _ = uneven
    full = list(TokenDataset(root, seed=2, epoch=3, **options))
    rest = list(TokenDataset(root, seed=2, epoch=3, skip=skip, **options))
    assert len(rest) == max(0, len(full) - skip)
    assert all(torch.equal(a["tokens"], b["tokens"]) for a, b in zip(rest, full[skip:]))


def test_consumed_shards_are_not_opened_and_consumed_tokens_not_loaded(tmp_path, monkeypatch):
    write_token_dir(tmp_path / "tok", [4, 4, 4])  # 1 + 2 + 3 + 1 = 7 clips a shard
    full = keys_of(TokenDataset(tmp_path / "tok"))
    (tmp_path / "tok" / "00000.tar").write_bytes(b"gone")  # consumed whole: only its _stats.json is read
    loaded = []
    real = dataset_module.load_npy
    monkeypatch.setattr(dataset_module, "load_npy", lambda data, where, copy=True: loaded.append(where) or real(data, where, copy))
    assert keys_of(TokenDataset(tmp_path / "tok", skip=11)) == full[11:]  # 7 of shard 0, then s1_0, s1_1, 1 of s1_2
    assert [w.rsplit(":", 1)[1] for w in loaded] == ["s1_2", "s1_3", "s2_0", "s2_1", "s2_2", "s2_3"]


def test_skip_with_dataloader_workers_counts_what_the_rank_consumed(uneven):
    root, _ = uneven
    batches = list(DataLoader(TokenDataset(root, shuffle=8), batch_size=4, num_workers=2))
    resumed = DataLoader(TokenDataset(root, shuffle=8, skip=5 * 4, loader_batch_size=4), batch_size=4, num_workers=2)
    assert [b["key"] for b in resumed] == [b["key"] for b in batches[5:]]
    resumed = DataLoader(TokenDataset(root, shuffle=8, skip=3 * 4, loader_batch_size=4), batch_size=4, num_workers=2)
    assert [b["key"] for b in resumed] == [b["key"] for b in batches[3:]]  # worker 1's turn came next
    assert worker_resume(12, 2, 0, 4) == (1, 4) and worker_resume(12, 2, 1, 4) == (0, 8)  # batches 1 | 0, 2


# even ranks (DDP)


@pytest.mark.parametrize("options", [{"batch_size": 3}, {"batch_size": 2, "shuffle": 8}, {"seq_len": 7, "batch_size": 2},
                                     {"loader_batch_size": 3}], ids=["clips", "shuffled", "packed", "loader-batches"])
@pytest.mark.parametrize("workers", [0, 2])
def test_even_ranks_give_every_rank_the_same_batches_as_the_first_of_its_own(uneven, options, workers):
    root, _ = uneven
    loader_batch = options.get("loader_batch_size")

    def batches(**more):
        ds = TokenDataset(root, rank=more.pop("rank"), world_size=2, **options, **more)
        return [b["key"] if "key" in b else b["documents"] for b in DataLoader(ds, batch_size=loader_batch,
                num_workers=workers, collate_fn=collate if loader_batch else None)]

    plain = [batches(rank=r) for r in (0, 1)]
    counted = TokenDataset(root, world_size=2, rank=0, **options).batches_per_rank(workers)
    assert counted == [len(b) for b in plain] and counted[0] != counted[1]  # counted without tokens, and uneven
    even = [batches(rank=r, even_ranks=True) for r in (0, 1)]
    assert [len(b) for b in even] == [min(counted)] * 2
    assert all(e == p[: len(e)] for e, p in zip(even, plain))  # a prefix of what the rank gives otherwise
    resumed = batches(rank=int(np.argmax(counted)), even_ranks=True, skip=2 * (options.get("batch_size") or loader_batch))
    assert resumed == even[int(np.argmax(counted))][2:]


def test_even_ranks_needs_the_batch_size():
    with pytest.raises(UsageError, match="even_ranks"):
        TokenDataset(Path(__file__), even_ranks=True)
    assert dataset_module.round_robin(7, [3, 1, 5]) == [3, 1, 3] and dataset_module.round_robin(2, [3, 1, 5]) == [1, 1, 0]


# bad shards


def test_a_truncated_shard_is_named_and_raised_or_skipped(tmp_path):
    written = write_token_dir(tmp_path / "tok", [4, 4, 4])
    shard = tmp_path / "tok" / "00001.tar"
    shard.write_bytes(shard.read_bytes()[:3000])  # cut inside a member
    with pytest.raises(InputError, match="00001.tar"):
        list(TokenDataset(tmp_path / "tok"))
    with pytest.warns(UserWarning, match="00001.tar"):
        got = keys_of(TokenDataset(tmp_path / "tok", handler="warn"))
    assert {k for k in got if not k[0].startswith("s1_")} == {k for k in written if not k[0].startswith("s1_")}
    reported = []
    assert len(keys_of(TokenDataset(tmp_path / "tok", handler=reported.append))) == len(got)
    assert len(reported) == 1 and "00001.tar" in str(reported[0])


def test_a_shard_cut_at_a_member_boundary_is_caught_by_its_stats(tmp_path):
    write_token_dir(tmp_path / "tok", [4, 4])
    shard = tmp_path / "tok" / "00000.tar"
    shard.write_bytes(shard.read_bytes()[: 6 * 1024])  # two whole samples: 3 members of 512 header + 512 data
    with pytest.raises(InputError, match=r"00000.tar: 2 samples, its _stats.json says 4"):
        list(TokenDataset(tmp_path / "tok"))


@pytest.mark.parametrize("kind", ["videos", "garbage"])
def test_a_foreign_file_among_the_shards_is_named(tmp_path, kind):
    write_token_dir(tmp_path / "tok", [3])
    foreign = tmp_path / "tok" / "00001.tar"
    if kind == "videos":
        import tarfile

        with tarfile.open(foreign, "w") as tar:
            add_member(tar, "clip1.mp4", b"\x00" * 100)
            add_member(tar, "clip1.txt", b"a caption")
    else:
        foreign.write_bytes(b"this is not a tar" * 100)
    (tmp_path / "tok" / "00001_stats.json").write_text(json.dumps({"samples": 1, "clips": 1}))
    with pytest.raises(InputError, match="00001.tar"):
        list(TokenDataset(tmp_path / "tok"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert len(list(TokenDataset(tmp_path / "tok", handler="warn"))) == 6  # 3 samples of 1, 2, 3 clips
    assert any("00001.tar" in str(w.message) for w in caught)


def test_an_error_in_a_dataloader_worker_reaches_the_caller(tmp_path):
    write_token_dir(tmp_path / "tok", [3, 3])
    (tmp_path / "tok" / "00001.tar").write_bytes(b"\x00garbage" * 64)
    with pytest.raises(InputError, match="00001.tar"):
        loader_items(TokenDataset(tmp_path / "tok"), workers=2)


# options and inputs


def test_options_are_checked_before_any_work(uneven, tmp_path):
    root, _ = uneven
    with pytest.raises(UsageError):
        TokenDataset(root, bos=True)  # specials without flat sequences
    with pytest.raises(UsageError):
        TokenDataset(root, shuffle=-1)
    with pytest.raises(UsageError):
        TokenDataset(root, handler="ignore")
    with pytest.raises(InputError):
        TokenDataset(tmp_path / "missing")
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "a.tar").write_bytes((root / "00000.tar").read_bytes())
    with pytest.raises(UsageError, match="codebook_size"):
        TokenDataset(loose / "a.tar", flat=True)
    assert len(list(TokenDataset(loose / "a.tar", flat=True, codebook_size=K))) == 9  # 5 samples: 1+2+3+1+2 clips


def test_brace_patterns_and_shard_lists_are_inputs(uneven):
    root, written = uneven
    pattern = str(root / "{00000..00006}.tar")
    assert sorted(keys_of(TokenDataset(pattern))) == sorted(written)
    assert keys_of(TokenDataset([root / "00003.tar", root / "00000.tar"]))[0] == ("s3_0", 0)


def test_shards_from_encode_read_back_with_the_tokens_encode_wrote(tmp_path, model, video_dir):
    from lfqtok.pipeline.encode import EncodeConfig, encode_dataset

    config = EncodeConfig(model=model, size=32, clip_frames=5, workers=0, device="cpu", samples_per_shard=1)
    encode_dataset([video_dir], tmp_path / "tok", config)
    expected = {(key, c): tokens[c] for key, tokens, _ in lfqtok.read_tokens(tmp_path / "tok") for c in range(len(tokens))}
    seen = []
    for rank in (0, 1):
        seen += loader_items(TokenDataset(tmp_path / "tok", rank=rank, world_size=2, shuffle=4), workers=2)
    assert Counter(keys_of(seen)) == Counter(expected.keys())
    assert all(np.array_equal(it["tokens"].numpy(), expected[it["key"], it["clip"]]) for it in seen)
    manifest = json.loads((tmp_path / "tok" / "lfqtok.json").read_text())
    assert TokenDataset(tmp_path / "tok", flat=True).vocab_size == manifest["codebook_size"] + 4


def test_a_resume_deep_into_the_epoch_remembers_shards_consumed_whole_in_constant_memory(tmp_path):
    write_token_dir(tmp_path / "tok", [12] * 8, stats=False)  # no _stats.json: every shard is streamed to count
    shards = sorted((tmp_path / "tok").glob("*.tar"))
    ds = TokenDataset(shards, shuffle=6, skip=150)
    done, totals = ds._consumed(ds._plan(1, 0), 150, ds._seed(1, 0))
    whole = [part for part, used in done.items() if isinstance(used, range)]
    assert len(whole) >= 5 and all(len(done[p]) == totals[p] for p in whole)  # 8 shards of 24 clips, 150 consumed
    assert sum(len(used) for used in done.values() if isinstance(used, set)) <= 6 + 24  # the buffer, one shard
    assert keys_of(ds) == keys_of(TokenDataset(shards, shuffle=6))[150:]


# mixed token shapes (--buckets, --resize fit)

BUCKETS = [(2, 3, 3), (2, 3, 5), (2, 5, 3)]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> tuple[Path, dict]:
    """7 shards of uneven sizes, samples in three buckets, with class labels: 25 samples, 49 clips."""
    root = tmp_path_factory.mktemp("mixed") / "tok"
    return root, write_token_dir(root, [5, 1, 0, 7, 3, 6, 3], shapes=BUCKETS, labels=True)


@pytest.mark.parametrize("shuffle", [0, 8])
def test_mixed_bucket_batches_hold_one_shape_and_every_clip_once_over_ranks_and_workers(mixed, shuffle):
    root, written = mixed
    seen = []
    for rank in (0, 1):
        ds = TokenDataset(root, rank=rank, world_size=2, shuffle=shuffle, seed=1, batch_size=3)
        for batch in DataLoader(ds, batch_size=None, num_workers=2):
            h, w = batch["tokens"].shape[2:]  # one shape per batch: the bucket every item of it names
            assert batch["tokens"].shape[0] <= 3 and all(bucket == [8 * h, 8 * w] for bucket in batch["bucket"])
            for key, clip, tokens, label, name in zip(batch["key"], batch["clip"].tolist(), batch["tokens"], batch["label"].tolist(), batch["class"]):
                assert torch.equal(tokens, torch.from_numpy(written[key, clip].astype(np.int64)))
                assert name == f"class{label}"
                seen.append((key, clip))
    assert Counter(seen) == Counter(written.keys())  # none lost, none twice, no padding across shapes


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("options", [{}, {"shuffle": 8}, {"world_size": 2, "rank": 1, "even_ranks": True}],
                         ids=["plain", "shuffled", "even-ranks"])
def test_mixed_bucket_batches_resume_after_any_batch(mixed, workers, options):
    root, _ = mixed
    full = list(DataLoader(TokenDataset(root, batch_size=3, **options), batch_size=None, num_workers=workers))
    sizes = [len(b["key"]) for b in full]
    for k in range(len(full)):
        ds = TokenDataset(root, batch_size=3, skip=sum(sizes[:k]), **options)
        assert [b["key"] for b in DataLoader(ds, batch_size=None, num_workers=workers)] == [b["key"] for b in full[k:]]
    if options.get("even_ranks"):
        counted = TokenDataset(root, batch_size=3, **options).batches_per_rank(workers)
        assert len(full) == min(counted)  # every rank gives the fewest batches any rank has


def test_mixed_shapes_pack_across_buckets_and_items_carry_label_class_and_bucket(mixed):
    root, written = mixed
    item = next(iter(TokenDataset(root)))
    assert item["label"] == 0 and item["class"] == "class0" and item["bucket"] == [24, 24]
    pieces: dict[tuple[str, int], list] = {}
    for block in TokenDataset(root, seq_len=20, bos=True):
        for s, doc in enumerate(block["documents"]):
            assert doc["class"] == f"class{doc['label']}" and "bucket" in doc
            pieces.setdefault((doc["key"], doc["clip"]), []).append((doc["start"], block["tokens"][block["segment_ids"] == s].tolist()))
    assert set(pieces) == set(written)
    for ident, parts in pieces.items():
        assert [t for _, part in sorted(parts) for t in part] == [K, *written[ident].astype(np.int64).ravel().tolist()]


def test_packing_without_splitting_refuses_the_largest_bucket_up_front(mixed):
    root, _ = mixed
    with pytest.raises(UsageError, match="30 tokens, more than seq_len 20"):  # (2, 3, 3) fits, (2, 3, 5) does not
        TokenDataset(root, seq_len=20, split_sequences=False)
