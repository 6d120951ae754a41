"""pool.py: event order per video, inline == workers, hangs and crashes become failures, backpressure, shutdown."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
import pytest
from videos import make_video

from lfqtok.pipeline.pool import ClipEvent, DecodePool, DoneEvent, FailEvent
from lfqtok.pipeline.sources import list_items
from lfqtok.pipeline.video import Clip, ClipSpec, VideoMeta

SPEC = ClipSpec(size=16, clip_frames=5)


# fake decoders: module level, so spawned workers can unpickle them; behaviour chosen by the file name


def fake_decode(index, item, spec, decoder="auto"):
    """Two clips per video; 'hang*' never returns, 'crash*' exits the process, 'big*' sends 1 MiB clips,
    'decordcrash*' exits and 'decordhang*' hangs unless PyAV alone decodes it (as on a retry)."""
    name = Path(item.path).name
    if name.startswith("decordcrash") and decoder != "pyav":
        os._exit(11)
    if name.startswith("decordhang") and decoder != "pyav":
        time.sleep(3600)
    if name.startswith("hang"):
        time.sleep(3600)
    if name.startswith("crash"):
        os._exit(3)
    side = 512 if name.startswith("big") else 2
    count = 5 if name.startswith("big") else 2
    for i in range(count):
        if name.startswith("count"):
            Path(item.path).with_name(f"{name}.{i}.made").write_bytes(b"")
        yield ClipEvent(index, i, Clip(np.full((1, side, side, 4), i, np.uint8), [i], 0))
    yield DoneEvent(index, VideoMeta(None, None, (side, side), "fake"), count, {"txt": name.encode()})


def niceness_decode(index, item, spec, decoder="auto"):
    """No clips; the worker's niceness as the video's extras."""
    yield DoneEvent(index, VideoMeta(None, None, (2, 2), "fake"), 0, {"nice": os.nice(0)})


def events_by_item(events):
    by_item = {}
    for e in events:
        by_item.setdefault(e.item, []).append(e)
    return dict(sorted(by_item.items()))


def assert_well_formed(events, n):
    """Every video: its clips in order, then exactly one final event."""
    by_item = events_by_item(events)
    assert sorted(by_item) == list(range(n))
    for evs in by_item.values():
        assert all(isinstance(e, ClipEvent) for e in evs[:-1]) and isinstance(evs[-1], (DoneEvent, FailEvent))
        assert [e.clip_index for e in evs[:-1]] == list(range(len(evs) - 1))
    return by_item


def fake_items(tmp_path, names):
    for name in names:
        (tmp_path / name).write_bytes(b"")
    return list_items([str(tmp_path / n) for n in names])


@pytest.fixture(scope="module")
def real_items(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    make_video(root / "a.mp4", frames=12, width=48, height=32, fps=24)
    make_video(root / "b.webm", frames=7, width=32, height=48, fps=12, codec="libvpx-vp9")
    make_video(root / "c.mp4", frames=3, width=32, height=32, fps=10)
    (root / "d.mp4").write_bytes(b"garbage" * 100)
    return list_items([str(root)])


@pytest.mark.parametrize("workers", [0, 2])
def test_events_per_video_are_clips_in_order_then_one_verdict(real_items, workers):
    with DecodePool(SPEC, workers=workers) as pool:
        by_item = assert_well_formed(list(pool.run(real_items)), 4)
    assert [type(evs[-1]).__name__ for evs in by_item.values()] == ["DoneEvent", "DoneEvent", "DoneEvent", "FailEvent"]
    assert [evs[-1].num_clips for evs in list(by_item.values())[:3]] == [2, 1, 1]
    assert by_item[2][0].clip.padded == 2  # c.mp4: 3 frames padded to 5
    assert "cannot open video" in by_item[3][0].error


def test_workers_give_the_same_clips_as_inline(real_items):
    with DecodePool(SPEC, workers=0) as pool:
        inline = [e for e in pool.run(real_items) if isinstance(e, ClipEvent)]
    with DecodePool(SPEC, workers=2) as pool:
        workers = [e for e in pool.run(real_items) if isinstance(e, ClipEvent)]
    key = lambda e: (e.item, e.clip_index)  # noqa: E731
    assert [key(e) for e in sorted(inline, key=key)] == [key(e) for e in sorted(workers, key=key)]
    for a, b in zip(sorted(inline, key=key), sorted(workers, key=key)):
        np.testing.assert_array_equal(a.clip.frames, b.clip.frames)


def test_tar_extras_are_read_in_the_worker(tmp_path, real_items):
    import tarfile

    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        tar.add(real_items[0].path, arcname="k1.mp4")
        (tmp_path / "k1.txt").write_text("a caption")
        tar.add(tmp_path / "k1.txt", arcname="k1.txt")
    items = list_items([str(tmp_path / "s.tar")])
    with DecodePool(SPEC, workers=1) as pool:
        done = [e for e in pool.run(items) if isinstance(e, DoneEvent)]
    assert done[0].extras == {"txt": b"a caption"} and done[0].num_clips == 2


@pytest.mark.slow
def test_hang_and_crash_become_failures_and_the_run_goes_on(tmp_path):
    items = fake_items(tmp_path, ["a.mp4", "b.mp4", "crash.mp4", "hang.mp4", "z.mp4"])  # listed sorted
    with DecodePool(SPEC, workers=2, timeout=2.0, decode=fake_decode) as pool:
        by_item = assert_well_formed(list(pool.run(items)), 5)
    assert [type(e) for e in by_item[3]] == [FailEvent] and by_item[3][0].error == "decode timed out after 2 s"
    assert [type(e) for e in by_item[2]] == [FailEvent] and by_item[2][0].error == "decoder process died (exit code 3)"
    for i in (0, 1, 4):
        assert [type(e) for e in by_item[i]] == [ClipEvent, ClipEvent, DoneEvent]
        assert by_item[i][-1].extras == {"txt": Path(items[i].path).name.encode()}


@pytest.mark.slow
def test_a_video_that_crashes_or_hangs_its_worker_is_retried_once_with_pyav(tmp_path, monkeypatch):
    monkeypatch.delenv("LFQTOK_DECODER", raising=False)  # the retry must not depend on it
    items = fake_items(tmp_path, ["a.mp4", "decordcrash.mp4", "decordhang.mp4"])
    with DecodePool(SPEC, workers=1, timeout=2.0, decode=fake_decode) as pool:
        by_item = assert_well_formed(list(pool.run(items)), 3)
    assert [type(e) for e in by_item[1]] == [ClipEvent, ClipEvent, DoneEvent]
    assert [type(e) for e in by_item[2]] == [ClipEvent, ClipEvent, DoneEvent]
    assert "LFQTOK_DECODER" not in os.environ


def test_truncated_webm_in_a_tar_still_gives_clips(tmp_path, real_videos):
    import tarfile

    data = (real_videos / "train" / "big_buck_bunny_0_30.webm").read_bytes()
    (tmp_path / "k.webm").write_bytes(data[: len(data) // 2])  # decord segfaults opening these bytes
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        tar.add(tmp_path / "k.webm", arcname="k.webm")
    with DecodePool(ClipSpec(size=32, clip_frames=5, max_clips=3), workers=1) as pool:
        events = list(pool.run(list_items([str(tmp_path / "s.tar")])))
    assert [type(e).__name__ for e in events] == ["ClipEvent"] * 3 + ["DoneEvent"]
    assert events[-1].meta.decoder == "pyav"


@pytest.mark.slow
def test_time_blocked_by_a_slow_consumer_is_not_decode_time(tmp_path):
    items = fake_items(tmp_path, ["big1.mp4"])  # 5 clips of 1 MiB: each send blocks until the consumer reads
    events = []
    with DecodePool(SPEC, workers=1, timeout=1.0, max_pending_clips=1, decode=fake_decode) as pool:
        for event in pool.run(items):
            events.append(event)
            time.sleep(0.4)  # 2 s in all, twice the timeout
    assert [type(e).__name__ for e in events] == ["ClipEvent"] * 5 + ["DoneEvent"]


@pytest.mark.slow
def test_a_stalled_consumer_stops_the_workers(tmp_path):
    items = fake_items(tmp_path, [f"count{i:02d}.mp4" for i in range(30)])
    with DecodePool(SPEC, workers=2, max_pending_clips=4, decode=fake_decode) as pool:
        run = pool.run(items)
        next(run)
        time.sleep(2.0)  # workers would finish all 60 clips in this time without backpressure
        made = len(list(tmp_path.glob("*.made")))
        rest = list(run)
    assert made <= 12, made  # max_pending_clips, plus at most one video per worker
    assert len(rest) == 89  # 30 videos x (2 clips + done) - the one taken


@pytest.mark.parametrize("stop", ["break", "raise"])
def test_leaving_early_kills_every_worker(tmp_path, stop):
    items = fake_items(tmp_path, [f"v{i}.mp4" for i in range(20)] + ["hang.mp4"])
    before = set(mp.active_children())
    with pytest.raises(KeyboardInterrupt) if stop == "raise" else _nothing():
        with DecodePool(SPEC, workers=2, decode=fake_decode) as pool:
            for event in pool.run(items):
                if stop == "raise":
                    raise KeyboardInterrupt
                break
    assert set(mp.active_children()) - before == set()


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_pool_runs_several_item_lists(tmp_path):
    first, second = fake_items(tmp_path, ["a.mp4", "b.mp4"]), fake_items(tmp_path, ["c.mp4", "d.mp4", "e.mp4"])
    with DecodePool(SPEC, workers=2, decode=fake_decode) as pool:
        assert_well_formed(list(pool.run(first)), 2)
        by_item = assert_well_formed(list(pool.run(second)), 3)
    assert [evs[-1].extras["txt"] for evs in by_item.values()] == [b"c.mp4", b"d.mp4", b"e.mp4"]


def test_inline_mode_runs_in_this_process(tmp_path):
    items = fake_items(tmp_path, ["a.mp4", "b.mp4"])
    with DecodePool(SPEC, workers=0, decode=fake_decode) as pool:
        events = list(pool.run(items))
    assert [type(e).__name__ for e in events] == ["ClipEvent", "ClipEvent", "DoneEvent"] * 2
    assert [e.item for e in events] == [0, 0, 0, 1, 1, 1]


def test_workers_run_as_much_nicer_as_asked(tmp_path):
    # a CPU encode's workers yield the cores to the encoder's threads (worker.CPU_ENCODE_NICE)
    items = fake_items(tmp_path, ["a.mp4"])
    with DecodePool(SPEC, workers=1, decode=niceness_decode, nice=5) as pool:
        [done] = list(pool.run(items))
    with DecodePool(SPEC, workers=1, decode=niceness_decode) as pool:
        [plain] = list(pool.run(items))
    assert done.extras["nice"] == plain.extras["nice"] + 5 == os.nice(0) + 5


@pytest.mark.parametrize("kwargs", [dict(workers=-1), dict(workers=1, timeout=0), dict(workers=1, max_pending_clips=0)])
def test_bad_pool_arguments_are_usage_errors(kwargs):
    from lfqtok.errors import UsageError

    with pytest.raises(UsageError):
        DecodePool(SPEC, **kwargs)
