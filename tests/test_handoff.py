"""Batches made in DataLoader workers reach the main process through reused shared memory (lfqtok.dataset.handoff): the
same batches as torch's own batching, never overwritten while the user holds them, memory that does not grow
with the epoch, and a clear line for clips that cannot be stacked."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from token_shards import write_token_dir
from torch.utils.data import DataLoader

from lfqtok.dataset import handoff
from lfqtok.dataset.token_dataset import TokenDataset, collate
from lfqtok.errors import UsageError


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    """6 shards, 30 samples, 54 clips of (3, 4, 5) tokens."""
    root = tmp_path_factory.mktemp("handoff") / "tok"
    return root, write_token_dir(root, [5] * 6, shape=(3, 4, 5))


def most_slots(workers: int, prefetch: int = 2) -> int:
    """Slots a worker can need at once: batches requested but not yet received (prefetch_factor per worker, all
    of them from one worker at worst), plus the batch the loop holds and the one being received."""
    return prefetch * workers + 2


def same_batch(a: dict, b: dict) -> bool:
    return (a.keys() == b.keys() and torch.equal(a["tokens"], b["tokens"]) and torch.equal(a["clip"], b["clip"])
            and all(a[k] == b[k] for k in ("key", "source", "shard")))


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("shuffle", [0, 8])
def test_batches_made_in_the_dataset_equal_the_dataloaders_own(tokens, workers, shuffle):
    root, _ = tokens
    ours = list(DataLoader(TokenDataset(root, batch_size=4, shuffle=shuffle), batch_size=None, num_workers=workers))
    torchs = list(DataLoader(TokenDataset(root, shuffle=shuffle), batch_size=4, num_workers=workers))
    assert len(ours) == len(torchs) and all(same_batch(a, b) for a, b in zip(ours, torchs))
    assert ours[0]["tokens"].dtype == torch.int64 and ours[0]["tokens"].shape == (4, 3, 4, 5)


def test_collate_fn_through_workers_gives_the_same_batches(tokens):
    root, _ = tokens
    ours = list(DataLoader(TokenDataset(root), batch_size=4, num_workers=2, collate_fn=collate))
    torchs = list(DataLoader(TokenDataset(root), batch_size=4, num_workers=2))
    assert all(same_batch(a, b) for a, b in zip(ours, torchs, strict=True))


@pytest.mark.parametrize("hold", ["batches", "views"])
def test_what_the_user_holds_is_never_overwritten(tokens, hold):
    root, written = tokens
    held = []
    for batch in DataLoader(TokenDataset(root, batch_size=1), batch_size=None, num_workers=2, prefetch_factor=4):
        # 27 batches a worker: more than its MAX_SLOTS, so the last ones cross torch's way
        held.append(batch if hold == "batches" else {**batch, "tokens": batch["tokens"][:, 1:]})  # a view keeps its slot
    seen = Counter()
    for batch in held:  # read after the epoch
        for key, clip, clip_tokens in zip(batch["key"], batch["clip"].tolist(), batch["tokens"]):
            expected = torch.from_numpy(written[key, clip].astype(np.int64))
            assert torch.equal(clip_tokens, expected if hold == "batches" else expected[1:])
            seen[key, clip] += 1
    assert seen == Counter(written.keys())


def test_a_slot_goes_back_to_its_worker_when_the_last_tensor_of_its_batch_is_gone(tokens):
    root, _ = tokens
    handoff._received.clear()
    loader = iter(DataLoader(TokenDataset(root, batch_size=4), batch_size=None, num_workers=1, prefetch_factor=2))
    kept = next(loader)["tokens"][0]  # a view of the first batch's slot, the rest of that batch dropped
    rest = [b["tokens"].sum().item() for b in loader]  # the other batches, each dropped after use
    [(_, slots)] = handoff._received.values()
    assert len(rest) == 13 and len(slots) <= most_slots(1) + 1  # 13 batches through a few slots, + the one `kept` holds
    state = slots[0][:8].view(np.int64)
    assert state[0] == 1  # the first slot is still reserved for `kept`
    del kept
    assert state[0] == 0


def test_worker_memory_is_reused_not_grown_and_released_with_its_worker(tokens):
    root, _ = tokens
    handoff._received.clear()
    loader = DataLoader(TokenDataset(root, batch_size=2), batch_size=None, num_workers=2)
    assert sum(len(b["key"]) for b in loader) == 54
    rings = dict(handoff._received)
    assert len(rings) == 2  # one per worker
    assert all(len(slots) <= most_slots(2) for _, slots in rings.values())  # 14 batches a worker through a few slots
    assert sum(len(b["key"]) for b in loader) == 54  # the next epoch's workers: the first epoch's memory is let go
    assert len(handoff._received) == 2 and not set(rings) & set(handoff._received)


def test_persistent_workers_keep_their_slots_across_epochs(tokens):
    root, _ = tokens
    handoff._received.clear()
    loader = DataLoader(TokenDataset(root, batch_size=4), batch_size=None, num_workers=2, persistent_workers=True)
    first = [b["key"] for b in loader]
    rings = set(handoff._received)
    assert [b["key"] for b in loader] == first
    # the same workers' slots again, a few each (how many were in flight at once varies with timing)
    assert set(handoff._received) == rings and all(len(slots) <= most_slots(2) for _, slots in handoff._received.values())


def test_flat_and_packed_batches_cross_from_workers(tokens):
    root, _ = tokens
    flat = list(DataLoader(TokenDataset(root, flat=True, batch_size=5), batch_size=None, num_workers=2))
    assert [b["tokens"].shape for b in flat] == [(5, 60)] * 10 + [(2, 60)] * 2  # 27 clips a worker
    packed = list(DataLoader(TokenDataset(root, seq_len=50, batch_size=4), batch_size=None, num_workers=2))
    alone = list(DataLoader(TokenDataset(root, seq_len=50), batch_size=4, num_workers=2, collate_fn=collate))
    for a, b in zip(packed, alone, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in ("tokens", "segment_ids", "positions"))
        assert a["documents"] == b["documents"]


def test_resume_with_batches_made_in_the_dataset(tokens):
    root, _ = tokens
    full = list(DataLoader(TokenDataset(root, batch_size=4, shuffle=8), batch_size=None, num_workers=2))
    rest = list(DataLoader(TokenDataset(root, batch_size=4, shuffle=8, skip=3 * 4), batch_size=None, num_workers=2))
    assert [b["key"] for b in rest] == [b["key"] for b in full[3:]]


def test_clips_of_different_shapes_are_refused_in_one_line(tmp_path):
    items = [{"tokens": np.zeros((3, 4, 5), np.uint32), "key": "a"}, {"tokens": np.zeros((3, 8, 5), np.uint32), "key": "b"}]
    with pytest.raises(UsageError, match=r"\(3, 4, 5\) \(a\) and \(3, 8, 5\) \(b\)"):
        collate(items)
    with pytest.raises(UsageError, match="loader_batch_size"):
        TokenDataset(tmp_path, batch_size=4, loader_batch_size=8)


def test_spawned_workers_hand_their_batches_over_too(tokens):
    root, written = tokens
    batches = list(DataLoader(TokenDataset(root, batch_size=4), batch_size=None, num_workers=2, multiprocessing_context="spawn"))
    got = {(k, c): t for b in batches for k, c, t in zip(b["key"], b["clip"].tolist(), b["tokens"])}
    assert got.keys() == written.keys() and all(torch.equal(t, torch.from_numpy(written[k].astype(np.int64))) for k, t in got.items())


def test_a_worker_whose_slots_are_all_held_falls_back_to_torchs_own_transfer(monkeypatch, tokens):
    root, _ = tokens
    monkeypatch.setattr(handoff, "MAX_SLOTS", 0)  # (a fork inherits it)
    handoff._received.clear()
    batches = list(DataLoader(TokenDataset(root, batch_size=4), batch_size=None, num_workers=2))
    assert sum(len(b["key"]) for b in batches) == 54 and not handoff._received
