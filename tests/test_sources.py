"""sources.py: every input form, stable dot-free keys, tar samples and extras, input errors, shard planning."""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

import pytest

from lfqtok.errors import InputError, UsageError
from lfqtok.pipeline.sources import list_items, plan_shards, read_extras, read_video_bytes

KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def tree(tmp_path):
    for name in ("b.mp4", "a.MOV", "sub/deep/c.webm", "sub/x.y.mkv", "notes.txt", "sub/clip.json", "cover.jpg"):
        touch(tmp_path / "data" / name)
    return tmp_path / "data"


def test_directory_is_searched_recursively_for_videos_and_its_posters_stay_out(tree):
    """A video dataset lists exactly as before images were read: a cover.jpg beside the videos is no sample."""
    items = list_items([str(tree)])
    assert [Path(i.source).relative_to(tree).as_posix() for i in items] == ["a.MOV", "b.mp4", "sub/deep/c.webm", "sub/x.y.mkv"]
    assert [i.key for i in items] == ["a", "b", "sub_deep_c", "sub_x_y"]
    assert all(i.path == i.source and i.member is None and i.extras == () and not i.is_image for i in items)
    assert items.skipped == 0


def test_a_directory_of_no_video_gives_its_images_and_a_named_image_is_always_taken(tree, tmp_path):
    for name in ("x.png", "deep/y.JPEG", "z.webp", "notes.txt"):
        touch(tmp_path / "photos" / name)
    items = list_items([str(tmp_path / "photos"), str(tree / "cover.jpg")])
    assert sorted(i.key for i in items) == ["cover", "deep_y", "x", "z"]
    assert all(i.is_image for i in items)


def test_listing_is_sorted_deduplicated_and_stable(tree):
    first = list_items([str(tree / "sub"), str(tree), str(tree / "b.mp4")])
    again = list_items([str(tree), str(tree / "b.mp4"), str(tree / "sub")])
    assert first == again and len(first) == 4


def test_explicit_file_is_a_video_whatever_its_extension(tree):
    items = list_items([str(tree / "notes.txt")])
    assert [(i.key, i.source) for i in items] == [("notes", str(tree / "notes.txt"))]


def test_colliding_keys_get_order_independent_hash_suffixes(tmp_path):
    a, b, c = touch(tmp_path / "d" / "a.mp4"), touch(tmp_path / "d" / "a.webm"), touch(tmp_path / "d" / "a_b.mp4")
    touch(tmp_path / "d" / "a" / "b.mp4")
    items = list_items([str(tmp_path / "d")])
    keys = [i.key for i in items]
    assert len(set(keys)) == 4 and all(KEY.match(k) for k in keys)
    assert [k for k in keys if not k.startswith("a_")] == []
    alone = {i.source: i.key for i in list_items([str(a), str(b)])}
    assert alone == {i.source: i.key for i in items if i.source in alone}  # same hash from the same source
    assert {i.key for i in list_items([str(c)])} == {"a_b"}  # no collision, no suffix


def test_keys_are_sanitized(tmp_path):
    touch(tmp_path / "d" / "My Clip (1).final.mp4")
    touch(tmp_path / "d" / "über" / "ü.mp4")
    keys = [i.key for i in list_items([str(tmp_path / "d")])]
    assert keys == ["My_Clip__1__final", "ber"]


def test_list_file_skips_comments_and_resolves_relative_paths(tree, tmp_path):
    listing = tree / "list.txt"
    listing.write_text(f"# videos\n\nb.mp4\n  sub/x.y.mkv  \n{tree / 'a.MOV'}\n")
    items = list_items([f"@{listing}"])
    assert [(i.key, Path(i.source).name) for i in items] == [("a", "a.MOV"), ("b", "b.mp4"), ("sub_x_y", "x.y.mkv")]


@pytest.fixture
def shards(tmp_path):
    for n in range(2):
        write_tar(
            tmp_path / f"{n:05d}.tar",
            [
                ("s1.mp4", b"video-1"),
                ("s1.txt", b"caption 1"),
                ("s1.json", b'{"n": 1}'),
                ("dir/s2.txt", b"caption 2"),
                ("dir/s2.mp4", b"video-2"),
                ("s3.txt", b"no video here"),
                ("__meta__", b"ignored"),
            ],
        )
    return tmp_path


def test_tar_samples_hold_their_video_and_extras(shards):
    items = list_items([str(shards / "00000.tar")])
    assert [(i.key, i.source) for i in items] == [("s1", f"{shards}/00000.tar:s1.mp4"), ("dir_s2", f"{shards}/00000.tar:dir/s2.mp4")]
    assert items.skipped == 1  # s3 has no video member
    assert read_video_bytes(items[0]) == b"video-1" and read_video_bytes(items[1]) == b"video-2"
    assert read_extras(items[0]) == {"txt": b"caption 1", "json": b'{"n": 1}'}
    assert read_extras(items[1]) == {"txt": b"caption 2"}


def test_brace_pattern_expands_and_prefixes_keys_with_the_tar_stem(shards):
    items = list_items([f"{shards}/{{00000..00001}}.tar"])
    assert [i.key for i in items] == ["00000_s1", "00000_dir_s2", "00001_s1", "00001_dir_s2"]
    assert items.skipped == 2


def test_file_items_read_as_paths(tree):
    item = list_items([str(tree / "b.mp4")])[0]
    assert read_video_bytes(item) == str(tree / "b.mp4") and read_extras(item) == {}


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: str(p / "missing.mp4"), "missing.mp4: no such file"),
        (lambda p: f"@{p / 'missing.txt'}", "missing.txt: cannot read list"),
        (lambda p: str(touch(p / "bad.tar", b"not a tar" * 100)), "bad.tar: not a readable uncompressed tar"),
        (lambda p: str(touch(p / "data.tar.gz", b"\x1f\x8b")), "data.tar.gz: compressed tar shards are not supported"),
    ],
)
def test_bad_inputs_raise_input_error_naming_the_path(tmp_path, make, match):
    with pytest.raises(InputError, match=match):
        list_items([make(tmp_path)])


def test_truncated_tar_is_an_input_error(tmp_path):
    path = write_tar(tmp_path / "t.tar", [("a.mp4", b"v" * 5000)])
    path.write_bytes(path.read_bytes()[:2048])
    with pytest.raises(InputError, match="t.tar"):
        list_items([str(path)])


def test_missing_entry_in_a_list_is_an_input_error(tmp_path):
    (tmp_path / "list.txt").write_text("nope.mp4\n")
    with pytest.raises(InputError, match="nope.mp4"):
        list_items([f"@{tmp_path / 'list.txt'}"])


@pytest.mark.parametrize("per_shard, expected", [(3, [3, 3, 3, 1]), (10, [10]), (25, [10])])
def test_plan_shards_cuts_consecutive_runs(per_shard, expected):
    jobs = plan_shards(list(range(10)), per_shard)
    assert [len(j.items) for j in jobs] == expected and [j.index for j in jobs] == list(range(len(expected)))
    assert [x for j in jobs for x in j.items] == list(range(10))


def test_num_shards_split_partitions_the_jobs_with_global_indices():
    parts = [plan_shards(list(range(10)), 2, num_shards=3, shard_index=i) for i in range(3)]
    assert [[j.index for j in p] for p in parts] == [[0, 3], [1, 4], [2]]
    assert sorted(x for p in parts for j in p for x in j.items) == list(range(10))
    assert plan_shards([], 5) == []


@pytest.mark.parametrize("args", [(0, 1, 0), (5, 0, 0), (5, 2, 2), (5, 2, -1)])
def test_plan_shards_rejects_bad_arguments(args):
    with pytest.raises(UsageError):
        plan_shards(list(range(4)), *args)


def test_listing_reads_each_directory_once_and_stats_no_file(tmp_path, monkeypatch):
    import os

    for d in range(20):
        for f in range(100):
            touch(tmp_path / "many" / f"d{d:02d}" / f"v{f:03d}.mp4", b"")
    calls = {"scandir": 0, "stat": 0}
    scandir, stat = os.scandir, os.stat

    def counted(name, fn):
        def call(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return call

    monkeypatch.setattr(os, "scandir", counted("scandir", scandir))
    monkeypatch.setattr(os, "stat", counted("stat", stat))
    items = list_items([str(tmp_path / "many")])
    assert len(items) == 2000 and len({i.key for i in items}) == 2000
    assert calls["scandir"] == 21 and calls["stat"] < 10, calls  # what keeps a million inputs at seconds
