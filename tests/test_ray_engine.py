"""`--engine ray` on a local 2-CPU Ray cluster: the same bytes as the local engine, a dead actor's shard retried,
decode tasks that hang or crash become failures; plus the actor plan and the missing-Ray message (no cluster)."""

import io
import gzip
import json
import os
import re
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import lfqtok
from lfqtok.pipeline.encode import EncodeConfig
from lfqtok.errors import UsageError
from lfqtok.pipeline.pool import ClipEvent, DecodePool, DoneEvent, FailEvent
from lfqtok.pipeline.ray_engine import EncodeActor, RayDecodePool, plan_actors
from lfqtok.pipeline.sources import list_items
from lfqtok.pipeline.video import Clip, ClipSpec
from videos import make_video

SIZE, FRAMES = 32, 9
ROOT = Path(__file__).resolve().parents[1]
OPTIONS = {"size": SIZE, "clip_frames": FRAMES, "batch_size": 3, "device": "cpu", "samples_per_shard": 2}

# helpers


def output_files(out: Path) -> dict[str, object]:
    """Every output file: tar members with their bytes, JSON files parsed (stats without wall-clock seconds)."""
    files: dict[str, object] = {}
    for path in sorted(out.iterdir()):
        if path.suffix == ".tar":
            with tarfile.open(path) as tar:
                files[path.name] = [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]
        elif path.suffix == ".gz":  # the listing sidecar: its entries
            files[path.name] = gzip.decompress(path.read_bytes())
        else:
            data = json.loads(path.read_text())
            data.pop("seconds", None)
            files[path.name] = data
    return files


@pytest.fixture(scope="module")
def ray():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # never a cluster already here
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    make_video(root / "a.mp4", frames=30, width=64, height=48, fps=24)
    make_video(root / "b" / "b.mp4", frames=20, width=48, height=64, fps=12)
    make_video(root / "c.mp4", frames=5, width=40, height=40, fps=10)  # shorter than a clip: padded
    (root / "d.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video")  # a failure, recorded in the stats
    return root


# the engine


def ray_runs_here() -> bool:
    """Whether a Ray cluster runs on this machine (`ray start`'s, or another test run's): 'auto' joins any of them."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"gcs_server" in cmdline.read_bytes().split(b"\0")[0]:
                return True
        except OSError:
            continue  # a process that ended meanwhile
    return os.path.exists("/tmp/ray/ray_current_cluster")


def test_joining_a_cluster_that_is_not_there_is_one_usage_error(tmp_path, monkeypatch, model, videos):
    ray = pytest.importorskip("ray")
    if ray.is_initialized() or ray_runs_here():
        pytest.skip("a Ray cluster is running on this machine: --ray-address auto would join it")  # runs before the module's cluster starts
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(UsageError, match="--ray-address auto: cannot connect to a Ray cluster .*ray start --head"):
        lfqtok.encode_dataset([str(videos)], tmp_path / "out", model=model, engine="ray", ray_address="auto", **OPTIONS)
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def local_out(tmp_path_factory, model, videos) -> Path:
    out = tmp_path_factory.mktemp("local") / "tokens"
    lfqtok.encode_dataset([str(videos)], out, model=model, workers=0, **OPTIONS)
    return out


@pytest.mark.slow
def test_ray_writes_the_same_shards_as_local(tmp_path, ray, model, videos, local_out):
    seen = []
    summary = lfqtok.encode_dataset(
        [str(videos)], tmp_path / "ray", model=model, engine="ray", on_progress=lambda c: seen.append(c.videos_done), **OPTIONS
    )
    assert (summary.shards_written, summary.videos_ok, summary.videos_failed) == (2, 3, 1)
    files = output_files(tmp_path / "ray")
    listing = [name for name in files if name.startswith("lfqtok.listing.")]
    assert sorted(files) == ["00000.tar", "00000_stats.json", "00001.tar", "00001_stats.json", "lfqtok.json", *listing] and len(listing) == 1
    assert files == output_files(local_out)  # every member, every token byte, the same failures
    for name in ("00000.tar", "00001.tar"):
        assert (tmp_path / "ray" / name).read_bytes() == (local_out / name).read_bytes()
    assert seen and seen[-1] == 3 and seen == sorted(seen)
    deadline = time.monotonic() + 10
    while ray.available_resources().get("CPU") != 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU") == 2  # the run's actors and tasks are gone, the cluster stays


class DiesOnce(EncodeActor):
    """An encode actor whose process dies the first time a shard is complete in its .tar.tmp, just before the rename."""

    def encode(self, job):
        from lfqtok.io.shards import ShardWriter

        marker = Path(self.encoder.out).parent / "died"
        if not marker.exists():

            def die(writer, stats):
                # what the dead attempt left, renamed into place whole: the actor's two shards may both get here,
                # and a plain write_text truncated by one thread when the other exits left the marker empty
                tmp = marker.with_name(f"died.{threading.get_ident()}")
                tmp.write_text(" ".join(sorted(os.listdir(writer.out))))
                os.replace(tmp, marker)
                os._exit(1)

            ShardWriter.finish = die  # in this actor's process only
        return super().encode(job)


@pytest.mark.slow
def test_a_shard_whose_actor_died_is_retried_on_a_new_actor(tmp_path, ray, model, videos, local_out):
    from ray import cloudpickle

    from lfqtok.pipeline.ray_engine import ActorPlan, Dispatcher
    from lfqtok.pipeline.sources import plan_shards

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    out = tmp_path / "out"
    out.mkdir()
    encoder = EncodeConfig(model=model, workers=1, **OPTIONS).shard_encoder(out)
    jobs = plan_shards(list_items([str(videos)]), 2)
    plan = ActorPlan(actors=1, num_gpus=0, num_cpus=1, device="cpu", decode_tasks=1)
    results = Dispatcher(ray, encoder, plan, actor_cls=DiesOnce).run(jobs, on_progress=None)
    assert ".tar.tmp" in (tmp_path / "died").read_text() and sorted(r.shard for r in results) == [0, 1]
    expected = {name: data for name, data in output_files(local_out).items() if not name.startswith("lfqtok.")}  # shards only: no manifest, no listing
    assert output_files(out) == expected  # the retry replaced the dead attempt's .tar.tmp: no leftovers


QUIET_RUN = """
import logging, os, sys
from lfqtok.pipeline.encode import EncodeConfig
from lfqtok.pipeline.ray_engine import ActorPlan, Dispatcher, EncodeActor, connected
from lfqtok.io.shards import ShardWriter
from lfqtok.pipeline.sources import list_items, plan_shards

class DiesOnce(EncodeActor):  # as in the test module: its process dies on its first shard's finish
    def encode(self, job):
        if not os.path.exists(os.path.join(os.path.dirname(self.encoder.out), "died")):
            def die(writer, stats):
                open(os.path.join(os.path.dirname(writer.out), "died"), "w").close()
                os._exit(1)
            ShardWriter.finish = die
        return super().encode(job)

videos, out, model, size, frames = sys.argv[1:6]
logging.basicConfig(format="lfqtok said: %(message)s", level=logging.WARNING)
encoder = EncodeConfig(model=model, workers=1, size=int(size), clip_frames=int(frames), batch_size=3, device="cpu").shard_encoder(out)
jobs = plan_shards(list_items([videos]), 2)
plan = ActorPlan(actors=1, num_gpus=0, num_cpus=1, device="cpu", decode_tasks=1)
with connected(None) as ray:  # a cluster of its own, as `lfqtok encode --engine ray` starts one
    print(len(Dispatcher(ray, encoder, plan, actor_cls=DiesOnce).run(jobs, None)), "shards")
"""


@pytest.mark.slow
def test_a_retried_shard_is_one_lfqtok_line_and_ray_stays_quiet(tmp_path, model, videos):
    pytest.importorskip("ray")
    out = tmp_path / "out"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [sys.executable, "-c", QUIET_RUN, str(videos), str(out), model, str(SIZE), str(FRAMES)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "died").exists() and done.stdout.strip() == "2 shards"  # nothing of Ray's on stdout
    said = [line for line in done.stderr.splitlines() if line.startswith("lfqtok said: ")]
    assert sorted(said) == [  # both shards in flight on the dead actor: one line each
        f"lfqtok said: shard {i}: its encode actor died (ActorDiedError); retrying it on a new actor (attempt 2 of 3)" for i in (0, 1)
    ]
    assert "worker died" not in done.stderr.lower() and "(raylet)" not in done.stderr, done.stderr[-3000:]


class HangsOnce(EncodeActor):
    """An encode actor whose first shard hangs forever (a stuck GPU call) while it still answers progress polls."""

    def encode(self, job):
        marker = Path(self.encoder.out).parent / "hung"
        if not marker.exists():
            marker.write_text(str(job.index))
            time.sleep(3600)
        return super().encode(job)


@pytest.mark.slow
def test_a_shard_whose_actor_stalls_is_retried_on_a_new_actor(tmp_path, ray, model, videos, local_out):
    from ray import cloudpickle

    from lfqtok.pipeline.ray_engine import ActorPlan, Dispatcher
    from lfqtok.pipeline.sources import plan_shards

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    out = tmp_path / "out"
    out.mkdir()
    encoder = EncodeConfig(model=model, workers=1, **OPTIONS).shard_encoder(out)
    jobs = plan_shards(list_items([str(videos)]), 2)
    plan = ActorPlan(actors=1, num_gpus=0, num_cpus=1, device="cpu", decode_tasks=1)
    results = Dispatcher(ray, encoder, plan, actor_cls=HangsOnce, stall_timeout=3).run(jobs, on_progress=None)
    assert (tmp_path / "hung").exists() and sorted(r.shard for r in results) == [0, 1]  # the hung shard was retried
    expected = {name: data for name, data in output_files(local_out).items() if not name.startswith("lfqtok.")}  # shards only: no manifest, no listing
    assert output_files(out) == expected


@pytest.mark.slow
def test_a_model_an_actor_cannot_load_stops_the_run_with_its_error(tmp_path, ray, videos):
    from lfqtok.errors import ModelError
    from lfqtok.pipeline.ray_engine import ActorPlan, Dispatcher
    from lfqtok.pipeline.sources import plan_shards

    encoder = EncodeConfig(model=str(tmp_path / "only-on-the-head-node.safetensors"), **OPTIONS).shard_encoder(tmp_path)
    jobs = plan_shards(list_items([str(videos)]), 2)
    plan = ActorPlan(actors=1, num_gpus=0, num_cpus=1, device="cpu", decode_tasks=1)
    with pytest.raises(ModelError, match="only-on-the-head-node"):
        Dispatcher(ray, encoder, plan).run(jobs, on_progress=None)
    assert not list(tmp_path.glob("*.tar*"))


# decode tasks


def fake_decode(index, item, spec, decoder="auto"):
    """Two clips and a verdict, or (by file name) a decode that hangs or a decoder process that dies; 'decordhang'
    and 'decordcrash' do so unless PyAV alone decodes them (as on a retry)."""
    name = Path(item.path).stem
    if name == "hang" or (name == "decordhang" and decoder != "pyav"):
        time.sleep(3600)
    if name == "crash" or (name == "decordcrash" and decoder != "pyav"):
        os._exit(3)
    for i in range(2):
        yield ClipEvent(index, i, Clip(np.full((1, 2, 2, 3), i, np.uint8), [i], 0))
    yield DoneEvent(index, None, 2, {"txt": name.encode()})


def run_fake_pool(tmp_path, names, timeout):
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    for name in names:
        (tmp_path / f"{name}.mp4").write_bytes(b"")
    items = list_items([str(tmp_path)])
    with RayDecodePool(ClipSpec(size=8, clip_frames=1), workers=2, timeout=timeout, decode=fake_decode) as pool:
        events = list(pool.run(items))
    return {Path(item.path).stem: [e for e in events if e.item == i] for i, item in enumerate(items)}


@pytest.mark.slow
def test_decode_tasks_lost_before_their_first_clip_are_retried_with_pyav_as_locally(tmp_path, ray, monkeypatch):
    monkeypatch.delenv("LFQTOK_DECODER", raising=False)  # the retry must not depend on it
    names = ["a", "decordcrash", "decordhang"]
    remote = run_fake_pool(tmp_path, names, timeout=2.0)
    with DecodePool(ClipSpec(size=8, clip_frames=1), workers=2, timeout=2.0, decode=fake_decode) as pool:
        events = list(pool.run(list_items([str(tmp_path)])))
    local = {name: [e for e in events if e.item == i] for i, name in enumerate(names)}
    for name in names:
        assert [type(e) for e in remote[name]] == [type(e) for e in local[name]] == [ClipEvent, ClipEvent, DoneEvent]
        assert [e.clip.frames.tobytes() for e in remote[name][:2]] == [e.clip.frames.tobytes() for e in local[name][:2]]


@pytest.fixture(scope="module")
def decord_crasher(tmp_path_factory, real_videos) -> Path:
    """A tar shard whose first video crashes decord (a WebM cut in half: decord segfaults opening it in memory),
    then a video decord reads."""
    root = tmp_path_factory.mktemp("crasher")
    data = (real_videos / "train" / "big_buck_bunny_0_30.webm").read_bytes()
    members = {"cut.webm": data[: len(data) // 2], "cut.txt": b"half a video", "whole.mp4": (real_videos / "train" / "pool.mp4").read_bytes()}
    with tarfile.open(root / "in.tar", "w") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return root / "in.tar"


@pytest.mark.slow
def test_ray_and_local_write_the_same_shards_on_a_video_that_crashes_decord(tmp_path, ray, model, decord_crasher, monkeypatch):
    from typer.testing import CliRunner

    from lfqtok.cli import app

    monkeypatch.delenv("LFQTOK_DECODER", raising=False)
    options = {**OPTIONS, "max_clips": 2}
    local = lfqtok.encode_dataset([str(decord_crasher)], tmp_path / "local", model=model, workers=1, **options)
    args = ["encode", str(decord_crasher), "-o", str(tmp_path / "ray"), "--engine", "ray", "--model", model, "--json"]
    args += [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # nothing of Ray's in the JSON on stdout
    assert (summary["videos_ok"], summary["videos_failed"]) == (local.videos_ok, local.videos_failed) == (2, 0)
    assert (tmp_path / "ray" / "00000.tar").read_bytes() == (tmp_path / "local" / "00000.tar").read_bytes()
    [cut] = [meta for key, _, meta in lfqtok.read_tokens(tmp_path / "ray") if key == "cut"]
    assert cut["decoder"] == "pyav"  # the retry, with PyAV alone


@pytest.mark.slow
@pytest.mark.parametrize("bad, timeout, error", [("hang", 2.0, "decode timed out after 2 s"), ("crash", 60.0, "decoder process died")])
def test_decode_tasks_that_hang_or_crash_become_failures(tmp_path, ray, bad, timeout, error):
    events = run_fake_pool(tmp_path, ["a", bad, "b"], timeout)
    for name in ("a", "b"):  # the other videos: all their clips in order, then their verdict
        assert [type(e) for e in events[name]] == [ClipEvent, ClipEvent, DoneEvent]
        assert [e.clip_index for e in events[name][:2]] == [0, 1] and int(events[name][1].clip.frames[0, 0, 0, 0]) == 1
        assert events[name][2].extras == {"txt": name.encode()}
    assert [type(e) for e in events[bad]] == [FailEvent] and events[bad][0].error.startswith(error)


# without a cluster


@pytest.mark.parametrize(
    "resources, device, workers, jobs, expected",
    [
        ({"CPU": 64, "GPU": 8}, "auto", None, 100, (8, 1, 1, "cuda", 3)),  # one actor per GPU, 56 cores decode
        ({"CPU": 64, "GPU": 8}, "auto", None, 3, (3, 1, 1, "cuda", 10)),  # never more actors than shards
        ({"CPU": 64, "GPU": 8}, "cpu", 4, 100, (16, 0, 1, "cpu", 4)),  # --device cpu: CPU actors
        ({"CPU": 2}, "auto", None, 5, (1, 0, 1, "cpu", 1)),  # this machine: one CPU actor, one decode core
        ({"CPU": 1}, "auto", None, 5, (1, 0, 0, "cpu", 1)),  # the actor never takes the only decode core
    ],
)
def test_actor_plan(resources, device, workers, jobs, expected):
    plan = plan_actors(resources, device, workers, jobs)
    assert (plan.actors, plan.num_gpus, plan.num_cpus, plan.device, plan.decode_tasks) == expected


def test_cuda_on_a_cluster_without_gpus_is_a_usage_error():
    with pytest.raises(UsageError, match="no GPUs"):
        plan_actors({"CPU": 8}, "cuda", None, 4)


def test_without_ray_installed_engine_ray_is_one_usage_error(tmp_path, monkeypatch, model, videos):
    from typer.testing import CliRunner

    from lfqtok.cli import app

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(UsageError, match=re.escape('pip install "lfqtok[ray]"')):
        lfqtok.encode_dataset([str(videos)], tmp_path / "api", model=model, engine="ray", **OPTIONS)
    args = ["encode", str(videos), "-o", str(tmp_path / "cli"), "--engine", "ray", "--model", model, "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("lfqtok: error: --engine ray needs Ray, which is not installed")


def test_read_only_clips_from_rays_object_store_batch_without_a_torch_warning():
    import warnings

    from lfqtok.pipeline.batch import ClipBatcher

    clip = np.arange(144, dtype=np.uint8).reshape(3, 4, 4, 3)
    clip.setflags(write=False)  # as Ray hands arrays out of its object store
    batcher = ClipBatcher(2, clip.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch.from_numpy would warn: "The given NumPy array is not writable"
        assert batcher.add(clip, "a") == []
        [batch] = batcher.add(clip, "b")
    assert batch.refs == ["a", "b"] and (batch.frames.numpy() == clip).all()
