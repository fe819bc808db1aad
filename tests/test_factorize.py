"""scripts/factorize.py: whole-sequence factorisation, resume, video input, streaming, DDP, errors.

The released weights are absent: the model is the reference's randomly initialised small VIDM
(32x32 pixels), which sees the frames through overlapping 32x32 windows.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from PIL import Image

import ldm.inference.factorize as factorize_module
import ldm.inference.video as video_module
from ldm.inference.factorize import FrameStream
from ldm.inference.jobs import (
    FactorizeJob,
    context_indices,
    finished_frames,
    needed_frames,
    plan_batches,
    read_job_list,
)
from ldm.inference.settings import WorkingResolution
from tests.conftest import ROOT
from tests.test_inference_support import (
    assert_one_error_line,
    help_text,
    read_rgb,
    run_script,
    scene,
    single_thread,
    write_sequence,
    write_small_model,
)

SCRIPT = ROOT / "scripts" / "factorize.py"


def load_script():
    spec = importlib.util.spec_from_file_location("factorize_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


factorize_script = load_script()


def factorize(*args) -> int:
    """scripts/factorize.py's main, in this process."""
    return factorize_script.main([str(arg) for arg in args])


@pytest.fixture()
def small(tmp_path, reference):
    """--config/--checkpoint arguments for the small model; one thread while the test runs."""
    config, checkpoint = write_small_model(tmp_path / "model", reference)
    with single_thread():
        yield ["--config", str(config), "--checkpoint", str(checkpoint)]


def run_summary(out: Path) -> dict:
    return json.loads((out / "factorize_summary.json").read_text())


def outputs(out: Path) -> list[Path]:
    """The finished outputs of a factorisation: its frames and videos, not its summary."""
    return [p for p in out.rglob("*") if p.is_file() and p.name != "factorize_summary.json"]


FAST = ["--steps", "4", "--frame-skip", "2", "--batch-size", "4", "--device", "cpu"]


def mp4_frames(path):
    reader = imageio.get_reader(path, format="FFMPEG")
    try:
        return [np.asarray(frame) for frame in reader]
    finally:
        reader.close()


def read_all(folder):
    return [read_rgb(path) for path in sorted(folder.glob("*.png"))]


def layer_files(out, layer):
    return sorted((out / layer).glob("*.png"))


def assert_factorised(out, frames, count, height, width):
    """Every layer at the input size (`frames`: the input RGB arrays); the environment equals the input
    outside the mask, and differs inside it."""
    for layer in ("masks", "agent", "environment"):
        assert [p.name for p in layer_files(out, layer)] == [f"{i:05d}.png" for i in range(count)]
    changed = []
    for index in range(count):
        frame = frames[index]
        mask = read_rgb(out / "masks" / f"{index:05d}.png")
        agent = read_rgb(out / "agent" / f"{index:05d}.png")
        environment = read_rgb(out / "environment" / f"{index:05d}.png")
        assert mask.shape == (height, width) and environment.shape == (height, width, 3)
        inside = mask == 255
        assert set(np.unique(mask).tolist()) <= {0, 255} and inside.any()
        assert np.array_equal(environment[~inside], frame[~inside])
        assert np.array_equal(agent[..., 3], mask)
        assert np.array_equal(agent[..., :3][inside], frame[inside])
        changed.append(np.abs(environment[inside].astype(int) - frame[inside].astype(int)).mean())
    # Measured 41.7 grey levels and more (AMD EPYC, all 3 settings).
    assert min(changed) > 5
    environment_video = mp4_frames(out / "environment.mp4")
    assert len(environment_video) == count
    assert environment_video[0].shape[:2] == (height + height % 2, width + width % 2)
    preview = mp4_frames(out / "preview.mp4")
    assert len(preview) == count and preview[0].shape[1] == 2 * width + (2 * width) % 2


def test_ten_frames_non_square_with_small_masks(small, tmp_path):
    frames, masks = write_sequence(
        tmp_path / "seq", 10, height=32, width=56, mask_size=(16, 28), mask_channels=3
    )
    out = tmp_path / "out"
    assert factorize("--frames", frames, "--masks", masks, "--out", out, *FAST, *small) == 0
    assert_factorised(out, read_all(frames), 10, 32, 56)


def test_second_run_has_nothing_to_do_and_resume_redoes_only_missing_frames(small, tmp_path, caplog):
    """Every run rewrites its summary (factorize_summary.json) and nothing else that is finished."""
    frames, masks = write_sequence(tmp_path / "seq", 6, height=32, width=32)
    out = tmp_path / "out"
    args = ["--frames", str(frames), "--masks", str(masks), "--out", str(out), *FAST, *small]
    assert factorize(*args) == 0
    first = run_summary(out)
    assert (first["frames"], first["written"], first["skipped"], first["failed"]) == (6, 6, 0, 0)
    written = {p: p.stat().st_mtime_ns for p in outputs(out)}

    checkpoint = args[args.index("--checkpoint") + 1]
    shutil.move(checkpoint, checkpoint + ".away")  # a second run must not even need the model
    caplog.set_level("INFO")
    assert factorize(*args) == 0
    assert "nothing to do: all 6 frames are already written" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in outputs(out)} == written
    second = run_summary(out)
    assert (second["written"], second["skipped"], second["processes"]) == (0, 6, [])

    shutil.move(checkpoint + ".away", checkpoint)
    for index in (1, 4):
        (out / "environment" / f"{index:05d}.png").unlink()
    assert factorize(*args) == 0
    rewritten = {p for p in written if p.stat().st_mtime_ns != written[p]}
    redone = {out / layer / f"{i:05d}.png" for layer in ("masks", "agent", "environment") for i in (1, 4)}
    assert rewritten == redone | {out / "environment.mp4", out / "preview.mp4"}
    summary = run_summary(out)
    assert (summary["written"], summary["skipped"], summary["failed"]) == (2, 4, 0)
    (process,) = summary["processes"]
    assert process["frames"] == 2 and process["frames_per_second"] > 0
    assert_factorised(out, read_all(frames), 6, 32, 32)


def test_video_input(small, tmp_path):
    video_frames = [scene(index, 24, 40) for index in range(6)]
    video = tmp_path / "clip.mp4"
    writer = imageio.get_writer(video, format="FFMPEG", fps=12, codec="libx264", macro_block_size=1)
    for frame in video_frames:
        writer.append_data(frame)
    writer.close()
    _, masks = write_sequence(tmp_path / "seq", 6, height=12, width=20)
    out = tmp_path / "out"
    assert factorize("--video", video, "--masks", masks, "--out", out, *FAST, *small) == 0
    assert_factorised(out, mp4_frames(video), 6, 24, 40)
    assert imageio.get_reader(out / "environment.mp4", format="FFMPEG").get_meta_data()["fps"] == 12


def test_list_file_runs_several_videos(small, tmp_path):
    for name in ("a", "b"):
        write_sequence(tmp_path / name, 3, height=32, width=32)
    listing = tmp_path / "videos.txt"
    listing.write_text("# source masks out\na/frames a/masks out/a\n'b/frames' b/masks out/b  # quoted\n")
    assert read_job_list(listing)[1] == (tmp_path / "b/frames", tmp_path / "b/masks", tmp_path / "out/b")
    assert factorize("--list", listing, *FAST, *small) == 0
    for name in ("a", "b"):
        assert len(layer_files(tmp_path / "out" / name, "environment")) == 3
        assert len(mp4_frames(tmp_path / "out" / name / "environment.mp4")) == 3


def test_context_frames_are_clamped_at_the_start():
    assert context_indices(0, 36) == [0, 0, 0]
    assert context_indices(40, 36) == [0, 0, 4]
    assert context_indices(200, 36) == [92, 128, 164]
    assert needed_frames([5, 6], 2) == {0, 1, 2, 3, 4, 5, 6}


def test_stream_gives_the_right_context_and_keeps_few_frames(tmp_path):
    count, skip, batch = 60, 3, 4
    folder = tmp_path / "seq"
    write_sequence(folder, count, height=8, width=8)
    for index in range(count):  # frame i is a flat grey of value 4i: the context can be read back
        Image.fromarray(np.full((8, 8, 3), 4 * index, np.uint8)).save(folder / "frames" / f"{index:03d}.png")
    job = FactorizeJob.open(folder / "frames", folder / "masks", tmp_path / "out")
    todo = [list(range(0, count, 2))]  # as if every other frame were already done
    stream = FrameStream(
        [job], plan_batches(todo, batch), frame_skip=skip, dilation=0, resolution=WorkingResolution(8)
    )
    seen = []
    for item in stream:
        assert item["model_frames"].shape == (len(item["indices"]), 4, 8, 8, 3)
        for target, window in zip(item["indices"], item["model_frames"], strict=True):
            greys = [int(frame[0, 0, 0]) // 4 for frame in window]
            assert greys == [*context_indices(target, skip), target]
        seen.extend(item["indices"])
    assert seen == todo[0]
    widest_batch = 2 * (batch - 1) + 1  # frames spanned by 4 targets two apart
    assert stream.peak_kept <= 3 * skip + widest_batch + batch  # contexts + batch span + full-size targets


def test_results_do_not_depend_on_the_batch_size_or_a_resume(small, tmp_path):
    """Each frame draws its noise from its own seeded generator (per-batch seeds made a frame's result
    depend on which frames shared its batch), and each of its tiles from one seeded by the frame's
    and the tile's number (the wide frames take two tiles each, batched with other frames' tiles)."""
    frames, masks = write_sequence(tmp_path / "seq", 5, height=32, width=56)
    common = [
        "--frames",
        frames,
        "--masks",
        masks,
        *small,
        "--steps",
        "4",
        "--frame-skip",
        "2",
        "--device",
        "cpu",
    ]
    assert factorize(*common, "--out", tmp_path / "one", "--batch-size", "1") == 0
    assert factorize(*common, "--out", tmp_path / "three", "--batch-size", "3") == 0
    (tmp_path / "three" / "environment" / "00002.png").unlink()  # resumed: frame 2 now opens a batch
    assert factorize(*common, "--out", tmp_path / "three", "--batch-size", "3") == 0
    one, three = layer_files(tmp_path / "one", "environment"), layer_files(tmp_path / "three", "environment")
    assert len(one) == len(three) == 5
    for a, b in zip(one, three, strict=True):
        assert np.array_equal(read_rgb(a), read_rgb(b)), a.name


def test_two_processes_with_ddp_share_the_frames_and_match_one(reference, tmp_path):
    config, checkpoint = write_small_model(tmp_path / "model", reference)
    frames, masks = write_sequence(tmp_path / "seq", 8, height=32, width=32)
    common = ["--frames", frames, "--masks", masks, "--steps", "4", "--batch-size", "2", "--device", "cpu"]
    common += ["--config", config, "--checkpoint", checkpoint]
    result = run_script(SCRIPT, *common, "--out", tmp_path / "two", "--devices", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.count("model: ") == 2  # both processes loaded the model and took a share
    assert_factorised(tmp_path / "two", read_all(frames), 8, 32, 32)
    with single_thread():
        assert factorize(*common, "--out", tmp_path / "one") == 0
    for one, two in zip(
        layer_files(tmp_path / "one", "environment"),
        layer_files(tmp_path / "two", "environment"),
        strict=True,
    ):
        assert np.array_equal(read_rgb(one), read_rgb(two))  # per-frame seeds: the same on any device count


def test_a_video_gives_the_same_pixels_alone_moved_or_in_any_line_of_a_list(small, tmp_path):
    """Each frame's noise is seeded from (seed, the video's key, the frame): the key comes from the
    video's files, not from its path or its line in --list (which seeded it before)."""
    write_sequence(tmp_path / "a", 3, height=32, width=32)
    frames, masks = write_sequence(tmp_path / "b", 4, height=32, width=32)
    assert factorize("--frames", frames, "--masks", masks, "--out", tmp_path / "alone", *FAST, *small) == 0
    shutil.copytree(tmp_path / "b", tmp_path / "moved")
    listing = tmp_path / "videos.txt"
    listing.write_text("a/frames a/masks out/a\nmoved/frames moved/masks out/moved\n")
    assert factorize("--list", listing, *FAST, *small) == 0
    alone = read_all(tmp_path / "alone" / "environment")
    assert all(
        np.array_equal(x, y) for x, y in zip(alone, read_all(tmp_path / "out/moved/environment"), strict=True)
    )
    other = read_all(tmp_path / "out/a/environment")  # the same first frames, another video: other noise
    assert not np.array_equal(other[0], alone[0])


def test_every_frame_and_mask_is_decoded_once(small, tmp_path, monkeypatch):
    """One decode pass: the inputs' headers are checked first, their pixels on the streaming pass
    (frames were decoded once to check them, then again to use them)."""
    frames, masks = write_sequence(tmp_path / "seq", 6, height=32, width=32)
    decoded = collections.Counter()

    def counting(read):
        return lambda path: decoded.update([path.name + ":" + path.parent.name]) or read(path)

    monkeypatch.setattr(video_module, "read_frame", counting(video_module.read_frame))
    monkeypatch.setattr(factorize_module, "read_mask", counting(factorize_module.read_mask))
    assert factorize("--frames", frames, "--masks", masks, "--out", tmp_path / "out", *FAST, *small) == 0
    assert len(decoded) == 12 and set(decoded.values()) == {1}, decoded


def test_a_frame_truncated_after_its_header_stops_the_run_with_whole_frames_written(small, tmp_path, capsys):
    """Pixels are checked when the streaming pass decodes them: the batch before the bad frame is
    written whole, nothing is half written, and a rerun after the repair does the rest."""
    frames, masks = write_sequence(tmp_path / "seq", 8, height=32, width=32)
    good = (frames / "005.png").read_bytes()
    (frames / "005.png").write_bytes(good[: len(good) // 2])
    out = tmp_path / "out"
    args = ["--frames", frames, "--masks", masks, "--out", out, *FAST, *small]
    assert factorize(*args) == 1
    assert_one_error_line(capsys.readouterr().err, "005.png: unreadable or truncated image")
    for layer in ("masks", "agent", "environment"):
        assert [p.name for p in layer_files(out, layer)] == [f"{i:05d}.png" for i in range(4)]
    assert not [p for p in out.rglob("*") if "partial" in p.name]
    (frames / "005.png").write_bytes(good)
    assert factorize(*args) == 0
    assert_factorised(out, read_all(frames), 8, 32, 32)


def unreadable_frame(seq, args):
    (seq / "frames" / "004.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return "004.png: unreadable or truncated"


def frame_of_another_size(seq, args):
    Image.fromarray(scene(0, 20, 20)).save(seq / "frames" / "005.png")
    return "005.png: frame is 20x20, but 000.png is 32x32"


def grey_frame(seq, args):
    Image.fromarray(scene(0, 32, 32)[..., 0]).save(seq / "frames" / "003.png")
    return "003.png: a frame must be an RGB image"


def counts_differ(seq, args):
    (seq / "masks" / "002.png").unlink()
    return "masks: 5 masks, but"


def empty_masks(seq, args):
    shutil.rmtree(seq / "masks")
    (seq / "masks").mkdir()
    return "masks: no masks"


def missing_frames(seq, args):
    shutil.rmtree(seq / "frames")
    return "frames: no such folder or video file"


def mask_with_two_channels(seq, args):
    Image.fromarray(np.zeros((32, 32, 2), np.uint8), mode="LA").save(seq / "masks" / "001.png")
    return "001.png: a mask must have 1 or 3 channels, got mode LA"


def not_a_video(seq, args):
    (seq / "clip.mp4").write_bytes(b"\x00" * 2000)
    args[args.index("--frames") : args.index("--frames") + 2] = ["--video", str(seq / "clip.mp4")]
    return "clip.mp4: not a readable video"


def checkpoint_that_does_not_fit(seq, args):
    checkpoint = args[args.index("--checkpoint") + 1]
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    state["first_stage_model.quantize.embedding.weight"] = torch.zeros(65, 3)
    torch.save({"state_dict": state}, checkpoint)
    return "quantize.embedding.weight (65, 3) vs (64, 3)"


def not_a_checkpoint(seq, args):
    checkpoint = args[args.index("--checkpoint") + 1]
    torch.save({"epoch": 3}, checkpoint)
    return "not a Lightning checkpoint"


def bad_list_line(seq, args):
    listing = seq / "list.txt"
    listing.write_text("frames masks\n")
    start = args.index("--frames")
    args[start : start + 6] = ["--list", str(listing)]
    return "list.txt:1: expected 'SOURCE MASKS OUT', got 2 fields"


BAD_INPUTS = [
    unreadable_frame,
    frame_of_another_size,
    grey_frame,
    counts_differ,
    empty_masks,
    missing_frames,
    mask_with_two_channels,
    not_a_video,
    checkpoint_that_does_not_fit,
    not_a_checkpoint,
    bad_list_line,
]


@pytest.mark.parametrize("spoil", BAD_INPUTS, ids=lambda spoil: spoil.__name__)
def test_bad_input_fails_with_one_line_and_writes_nothing(spoil, small, tmp_path, capsys):
    seq = tmp_path / "seq"
    frames, masks = write_sequence(seq, 6, height=32, width=32)
    out = tmp_path / "out"
    args = ["--frames", str(frames), "--masks", str(masks), "--out", str(out), *FAST, *small]
    fragment = spoil(seq, args)
    assert factorize(*args) == 1
    assert_one_error_line(capsys.readouterr().err, fragment)
    assert not out.exists()


def test_command_line_exit_status(tmp_path):
    failed = run_script(
        SCRIPT, "--frames", tmp_path / "absent", "--masks", tmp_path, "--out", tmp_path / "out"
    )
    assert failed.returncode == 1
    assert_one_error_line(failed.stderr, "absent: no such folder or video file")
    assert not (tmp_path / "out").exists()


def test_help_lists_the_options():
    text = help_text(factorize_script.main)
    for option in (
        "--frames",
        "--video",
        "--list",
        "--frame-skip",
        "--batch-size",
        "--devices",
        "--dtype",
        "--fps",
        "--num-nodes",
        "--summary",
        "torchrun",
    ):
        assert option in text
    assert "36" in text and "fps" in text


def test_several_nodes_without_a_launcher_is_one_error_line(tmp_path, monkeypatch, capsys):
    """--num-nodes 2 started by hand would wait for a second node forever: it is refused at once."""
    for name in factorize_script.LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    frames, masks = write_sequence(tmp_path / "seq", 2, height=32, width=32)
    args = ["--frames", frames, "--masks", masks, "--out", tmp_path / "out", "--num-nodes", "2"]
    assert factorize(*args) == 1
    assert_one_error_line(capsys.readouterr().err, "--num-nodes 2: no launcher started this process")
    assert not (tmp_path / "out").exists()


def test_a_video_with_a_bad_frame_stops_alone_and_the_summary_says_why(small, tmp_path):
    """In a list, a video whose frame is truncated stops there; the other videos are done, the command
    ends with one error line, and the summary names the video, the error and the frames left."""
    write_sequence(tmp_path / "good", 4, height=32, width=32)
    frames, _ = write_sequence(tmp_path / "bad", 6, height=32, width=32)
    good_bytes = (frames / "004.png").read_bytes()
    (frames / "004.png").write_bytes(good_bytes[: len(good_bytes) // 2])
    listing = tmp_path / "videos.txt"
    listing.write_text("bad/frames bad/masks out/bad\ngood/frames good/masks out/good\n")
    assert factorize("--list", listing, *FAST[:-4], "--batch-size", "2", "--device", "cpu", *small) == 1
    assert len(layer_files(tmp_path / "out" / "good", "environment")) == 4
    summary = json.loads((tmp_path / "videos.summary.json").read_text())
    (failure,) = summary["failures"]
    assert failure["video"] == str(frames) and "004.png: unreadable or truncated image" in failure["error"]
    assert (summary["written"], summary["failed"], failure["frames_left"]) == (8, 2, 2)


def torchrun_node(rank: int, port: int, *args: str | Path) -> subprocess.Popen:
    """One "node" of a multi-node run on this machine, launched as a user launches one: torchrun with
    its node rank and the first node's address; one CPU process."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"]
    command += ["--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", str(port)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [*command, str(SCRIPT), *map(str, args)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def kill_tree(pid: int) -> None:
    """SIGKILL a process and everything it started (torchrun's workers have process groups of their own)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children[int(fields[1])].append(int(stat.parent.name))
    stack = [pid]
    while stack:
        current = stack.pop()
        stack.extend(children[current])
        with contextlib.suppress(ProcessLookupError):
            os.kill(current, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def two_nodes(listing: Path, *args: str | Path) -> None:
    """Run both nodes to the end; their logs in the failure if either fails or hangs."""
    nodes = [torchrun_node(rank, port, "--list", listing, *args) for port in [free_port()] for rank in (0, 1)]
    try:
        logs = [node.communicate(timeout=180)[0] for node in nodes]
    except subprocess.TimeoutExpired:
        for node in nodes:
            kill_tree(node.pid)
        logs = [node.communicate()[0] for node in nodes]
        pytest.fail("the two nodes did not finish:\n" + logs[0][-3000:] + "\n----\n" + logs[1][-3000:])
    assert [node.returncode for node in nodes] == [0, 0], logs[0][-2000:] + logs[1][-2000:]


def environment_frames(out: Path) -> dict[str, list[np.ndarray]]:
    return {video: read_all(out / video / "environment") for video in ("a", "b")}


@pytest.mark.slow
def test_two_nodes_share_the_frames_and_a_rerun_after_a_lost_node_completes_them(reference, tmp_path):
    """Two nodes, each a torchrun launch on 127.0.0.1 (node ranks 0 and 1, one CPU process each): every
    frame is written once; after the second node is killed mid-run, running both again writes only
    what is missing; the frames equal those of one process."""
    config, checkpoint = write_small_model(tmp_path / "model", reference)
    for video in ("a", "b"):
        write_sequence(tmp_path / video, 16, height=32, width=32)
    lists = {}
    for run in ("one", "two", "lost"):
        lists[run] = tmp_path / f"{run}.txt"
        lists[run].write_text(f"a/frames a/masks {run}/a\nb/frames b/masks {run}/b\n")
    model = ["--config", config, "--checkpoint", checkpoint, "--device", "cpu", "--dtype", "fp32"]
    sampling = ["--steps", "4", "--batch-size", "1", "--frame-skip", "2", *model]
    assert run_script(SCRIPT, "--list", lists["one"], *sampling).returncode == 0
    expected = environment_frames(tmp_path / "one")

    two_nodes(lists["two"], "--num-nodes", "2", *sampling)
    summary = json.loads((tmp_path / "two.summary.json").read_text())
    assert [p["frames"] for p in summary["processes"]] == [16, 16] and summary["written"] == 32
    assert [p["node"] for p in summary["processes"]] == [0, 1] and summary["nodes"] == 2
    for video, frames in environment_frames(tmp_path / "two").items():
        assert all(np.array_equal(x, y) for x, y in zip(frames, expected[video], strict=True)), video

    port = free_port()
    nodes = [
        torchrun_node(rank, port, "--list", lists["lost"], "--num-nodes", "2", *sampling) for rank in (0, 1)
    ]
    second_share = tmp_path / "lost" / "b" / "environment"
    deadline = time.monotonic() + 240
    while not (second_share.is_dir() and any(second_share.glob("*.png"))) and time.monotonic() < deadline:
        time.sleep(0.02)
    kill_tree(nodes[1].pid)  # the second node is lost mid-run
    kill_tree(nodes[0].pid)  # and its peer, whose launcher would wait minutes for the lost one
    for node in nodes:
        node.communicate()
    done_before = len(finished_frames(tmp_path / "lost" / "a")) + len(
        finished_frames(tmp_path / "lost" / "b")
    )
    assert 0 < len(finished_frames(tmp_path / "lost" / "b")) < 16, (
        "the second node was lost before its share was done"
    )

    two_nodes(lists["lost"], "--num-nodes", "2", *sampling)
    summary = json.loads((tmp_path / "lost.summary.json").read_text())
    assert (summary["skipped"], summary["written"]) == (done_before, 32 - done_before)
    assert sum(p["frames"] for p in summary["processes"]) == 32 - done_before
    for video, frames in environment_frames(tmp_path / "lost").items():
        assert all(np.array_equal(x, y) for x, y in zip(frames, expected[video], strict=True)), video
