"""``python -m leffa tryon | pose-transfer | trace | download``: single pairs, batches, logs, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leffa.app import cli
from leffa.app.batch import BatchInputError, jobs_from_pairs_file, jobs_from_paths
from leffa.app.cli import EXIT_ERROR, EXIT_OK, EXIT_USAGE, main
from leffa.assets import DEMO_MODEL_DIR
from leffa.app.runtime import single_model_runtime
from tests.conftest import read_run_log, write_block_image

SIZE = (48, 64)  # model size (width, height) of the tiny model in these tests
FAST = ["--steps", "2", "--seed", "5"]


@pytest.fixture()
def tiny(tiny_model, monkeypatch):
    """``--tiny`` serves the session's random tiny model at a small size (no demo assets needed)."""
    monkeypatch.setattr(cli, "tiny_runtime", lambda **options: single_model_runtime(tiny_model, SIZE, []))


@pytest.mark.parametrize("command", ["tryon", "pose-transfer", "trace", "download", "convert"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "usage: python -m leffa" in capsys.readouterr().out


def test_tryon_one_pair(tiny, tmp_path, capsys):
    person = write_block_image(tmp_path / "in" / "anna.png", size=(90, 150))
    garment = write_block_image(tmp_path / "in" / "shirt.png", colour=(0, 0, 255))
    mask = write_block_image(tmp_path / "in" / "mask.png", size=(90, 150), mode="L")
    densepose = write_block_image(tmp_path / "in" / "dp.png", size=(90, 150))
    out = tmp_path / "out"
    code = main([
        "tryon", str(person), str(garment), "--mask", str(mask), "--densepose", str(densepose), "--tiny",
        "-o", str(out), *FAST,
    ])
    assert code == EXIT_OK
    result = out / "anna__shirt.png"
    assert Image.open(result).size == (90, 150)  # cropped back to the person photo's framing
    (entry,) = read_run_log(out)
    assert entry["status"] == "ok" and entry["seed"] == 5 and entry["output"] == str(result)
    assert entry["mask"] == str(mask) and entry["size"] == [90, 150]
    assert "1 of 1 done, 0 failed" in capsys.readouterr().out


def test_several_images_per_pair_are_numbered_and_logged_with_their_seeds(tiny, tmp_path, capsys):
    person = write_block_image(tmp_path / "in" / "anna.png", size=(90, 150))
    garment = write_block_image(tmp_path / "in" / "shirt.png", colour=(0, 0, 255))
    mask = write_block_image(tmp_path / "in" / "mask.png", size=(90, 150), mode="L")
    out = tmp_path / "out"
    arguments = [
        "tryon", str(person), str(garment), "--mask", str(mask), "--densepose", str(person), "--tiny",
        "-o", str(out), "--steps", "2",
    ]
    assert main([*arguments, "--seed", "5", "--num-images", "3", "--memory", "group_offload"]) == EXIT_OK
    names = ["anna__shirt.png", "anna__shirt_2.png", "anna__shirt_3.png"]
    (entry,) = read_run_log(out)
    assert entry["outputs"] == [str(out / name) for name in names] and entry["seeds"] == [5, 6, 7]
    assert entry["memory"] == "group_offload" and entry["output"] == str(out / names[0])
    assert f"{out / names[0]} and 2 more (anna__shirt_2.png, anna__shirt_3.png)" in capsys.readouterr().out
    assert main([*arguments, "--seed", "6", "--overwrite"]) == EXIT_OK  # the second image, alone
    assert Image.open(out / "anna__shirt.png").tobytes() == Image.open(out / names[1]).tobytes()
    (out / "anna__shirt.png").unlink()
    assert main([*arguments, "--seed", "5", "--num-images", "2"]) == EXIT_ERROR  # anna__shirt_2.png is there
    assert "1 of the results already exist in" in capsys.readouterr().err
    assert not (out / "anna__shirt.png").exists()  # refused before anything was written


def test_mask_adjustments_and_auto_crop_reach_the_mask(tiny, tiny_model, tmp_path, capsys, monkeypatch):
    from leffa.app.service import TryOn

    seen = []
    prepare = TryOn.prepare
    monkeypatch.setattr(TryOn, "prepare", lambda self, *a, **k: seen.append(k) or prepare(self, *a, **k))
    person = write_block_image(tmp_path / "in" / "anna.png", size=(90, 150))
    mask = write_block_image(tmp_path / "in" / "mask.png", size=(90, 150), mode="L")
    out = tmp_path / "out"
    code = main([
        "tryon", str(person), str(person), "--mask", str(mask), "--densepose", str(person), "--tiny", "-o", str(out),
        *FAST, "--grow", "3", "--extend-down", "9000", "--no-keep-face", "--cover-legs", "--auto-crop", "off",
        "--category", "dresses",
    ])
    assert code == EXIT_OK
    adjustments = seen[-1]["adjustments"]
    assert (adjustments.grow, adjustments.extend_down, adjustments.keep_hands, adjustments.keep_face) == (3, 9000, True, False)
    assert adjustments.cover_legs and seen[-1]["auto_crop"] == "off"
    (entry,) = read_run_log(out)
    assert entry["notes"] == [
        "cover legs needs the parse map of the photo; ignored for a supplied mask",
        "extend down 9000 px is outside 0..64 for this image; 64 px used",
        "keeping hands needs the parse map of the photo; not done for a supplied mask",
    ]
    assert "  note: extend down 9000 px is outside 0..64" in capsys.readouterr().out


def test_a_launcher_splits_the_pairs_and_picks_each_process_its_gpu(monkeypatch):
    from leffa.app import sharding
    from leffa.app.sharding import Shard, launcher_shard, shard_device

    assert launcher_shard({}) is None and launcher_shard({"WORLD_SIZE": "1", "RANK": "0"}) is None
    shard = launcher_shard({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert shard == Shard(3, 4, 1) and shard.take(list(range(10))) == [3, 7] and shard.label == "shard 3/4"
    monkeypatch.setattr(sharding.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(sharding.torch.cuda, "device_count", lambda: 2)
    assert shard_device("auto", Shard(3, 4, 3)) == "cuda:1" and shard_device("cpu", shard) == "cpu"
    assert shard_device("auto", Shard(1, 2)) == "auto"  # --shard without a launcher: the device as given


def test_tryon_folder_of_persons_with_matching_masks(tiny, tmp_path):
    for name in ("a", "b"):
        write_block_image(tmp_path / "persons" / f"{name}.png")
        write_block_image(tmp_path / "masks" / f"{name}.png", mode="L")
        write_block_image(tmp_path / "dense" / f"{name}.png")
    (tmp_path / "persons" / "notes.txt").write_text("not an image")
    garment = write_block_image(tmp_path / "shirt.jpg", colour=(0, 0, 255))
    out = tmp_path / "out"
    code = main(["tryon", str(tmp_path / "persons"), str(garment), "--mask", str(tmp_path / "masks"),
                 "--densepose", str(tmp_path / "dense"), "--tiny", "-o", str(out), *FAST])
    assert code == EXIT_OK
    log = read_run_log(out)
    assert [Path(e["output"]).name for e in log] == ["a__shirt.png", "b__shirt.png"]
    assert [Path(e["mask"]).name for e in log] == ["a.png", "b.png"]


def test_pairs_file_batch_keeps_going_after_a_bad_pair(tiny, tmp_path, capsys):
    write_block_image(tmp_path / "p1.png")
    write_block_image(tmp_path / "tiny.png", size=(20, 20))
    write_block_image(tmp_path / "g.png")
    write_block_image(tmp_path / "m.png", mode="L")
    write_block_image(tmp_path / "d.png")
    pairs = tmp_path / "pairs.txt"
    lines = ["# columns", "p1.png g.png m.png d.png # fine", "", "tiny.png g.png m.png d.png"]
    pairs.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert main(["tryon", "--pairs", str(pairs), "--tiny", "-o", str(out), *FAST]) == EXIT_ERROR
    first, second = read_run_log(out)
    assert first["status"] == "ok" and Path(first["output"]).is_file()
    assert second["status"] == "error" and "at least 64 pixels" in second["error"]
    err = capsys.readouterr().err
    assert "tiny__g failed: image is 20x20" in err and "1 of 2 done, 1 failed" in err


def test_pose_transfer(tiny, tmp_path):
    person = write_block_image(tmp_path / "who.png")
    target = write_block_image(tmp_path / "pose.png", size=(80, 140))
    densepose = write_block_image(tmp_path / "pose_dp.png", size=(80, 140))
    out = tmp_path / "out"
    code = main([
        "pose-transfer", str(person), str(target), "--densepose", str(densepose), "--tiny", "-o", str(out),
        *FAST,
    ])
    assert code == EXIT_OK and Image.open(out / "who__pose.png").size == (80, 140)


def test_trace_writes_panels_per_layer(tiny, tiny_model, tmp_path):
    person = write_block_image(tmp_path / "p.png")
    garment = write_block_image(tmp_path / "g.png")
    mask = write_block_image(tmp_path / "m.png", mode="L")
    out = tmp_path / "out"
    code = main([
        "trace", str(person), str(garment), "--mask", str(mask), "--densepose", str(person), "--tiny",
        "-o", str(out), "--point", "10,20", "--point", "50,100", *FAST,
    ])
    assert code == EXIT_OK
    folder = out / "p__g"
    summary = json.loads((folder / "trace.json").read_text())
    assert summary["seed"] == 5 and summary["points"] == [[10.0, 20.0], [50.0, 100.0]]
    assert list(summary["layers"].values()) == tiny_model.layers
    assert sorted(p.name for p in (folder / "layers").iterdir()) == sorted(summary["layers"])
    # Where each point takes from, in reference pixels of the model frame: the default view's flow, which
    # is the mean of its layers' own points (each over the same timesteps).
    view, width, height = summary["view"], *summary["reference_size"]
    assert (width, height) == (48, 64) and set(view["timesteps"]) <= set(summary["timesteps"])
    assert set(summary["layer_peaks"]) == set(tiny_model.layers) and len(summary["peaks"]) == 2
    for index, (x, y) in enumerate(summary["peaks"]):
        assert 0 <= x <= width - 1 and 0 <= y <= height - 1
        mean = np.mean([summary["layer_peaks"][layer][index] for layer in view["layers"]], axis=0)
        assert mean == pytest.approx([x, y], abs=2e-3)
    assert all(text.startswith(("sharp", "broad", "spread", "nearly", "diffuse")) for text in summary["spread"])
    assert Image.open(folder / "result.png").size == (96, 128)
    overview = np.asarray(Image.open(folder / "overview.png"))
    layer_panel = np.asarray(Image.open(folder / "layers" / "00.png"))
    # overview: 2 marked results + 2 heatmaps + flow + warped + legend; per layer: 2 heatmaps + flow + warped
    assert overview.shape[1] > layer_panel.shape[1] > 4 * 48


def test_trace_point_outside_the_result_fails_that_pair(tiny, tmp_path, capsys):
    person = write_block_image(tmp_path / "p.png")
    mask = write_block_image(tmp_path / "m.png", mode="L")
    code = main([
        "trace", str(person), str(person), "--mask", str(mask), "--densepose", str(person), "--tiny",
        "-o", str(tmp_path / "out"), "--point", "500,5", *FAST,
    ])
    assert code == EXIT_USAGE  # found before any model loads
    assert "outside the result image of 96x128" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _no_model(**options):
    raise AssertionError("no model may load before the inputs are checked")


@pytest.mark.parametrize(
    ("command", "given", "missing"),
    [
        (["tryon"], [], "--mask and --densepose"),
        (["tryon"], ["--mask", "MASK"], "--densepose"),
        (["pose-transfer"], [], "--densepose"),
        (["trace", "--point", "1,1"], ["--densepose", "IMAGE"], "--mask"),
        (["trace", "--task", "pose-transfer"], [], "--densepose"),
    ],
)
def test_the_tiny_model_asks_for_mask_and_densepose_before_loading(command, given, missing, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "tiny_runtime", _no_model)
    image = write_block_image(tmp_path / "p.png")
    given = [str(image) if value in ("MASK", "IMAGE") else value for value in given]
    with pytest.raises(SystemExit) as info:
        main([*command, str(image), str(image), *given, "--tiny", "-o", str(tmp_path / "out")])
    assert info.value.code == EXIT_USAGE
    error = capsys.readouterr().err
    assert "the built-in tiny model (--tiny) has no preprocessing models" in error and f"give {missing}" in error


def test_the_tiny_model_needs_every_pairs_mask_and_densepose(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "tiny_runtime", _no_model)
    for name in ("p.png", "g.png", "d.png"):
        write_block_image(tmp_path / name)
    (tmp_path / "pairs.txt").write_text("p.png g.png - d.png\n")
    code = main(["tryon", "--pairs", str(tmp_path / "pairs.txt"), "--tiny", "-o", str(tmp_path / "out")])
    assert code == EXIT_USAGE
    error = capsys.readouterr().err
    assert "give every pair its mask and densepose in the pairs file; missing for p.png + g.png" in error


def test_missing_weights_stop_the_batch_with_the_download_command(tmp_path, capsys):
    persons = tmp_path / "persons"
    for name in ("a", "b"):
        write_block_image(persons / f"{name}.png")
    code = main([
        "tryon", str(persons), str(write_block_image(tmp_path / "g.png")),
        "--ckpt-dir", str(tmp_path / "ckpts"), "--no-download", "--device", "cpu", "-o", str(tmp_path / "out"),
    ])
    assert code == EXIT_ERROR
    (entry,) = read_run_log(tmp_path / "out")  # the second pair is not attempted
    assert "python -m leffa download parsing" in entry["error"]
    assert "stopped early" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["tryon"], "give two inputs (files or folders) or --pairs FILE"),
        (["tryon", "a.png"], "give two inputs"),
        (["tryon", "a.png", "b.png", "--pairs", "p.txt"], "either two inputs or --pairs, not both"),
        (["tryon", "--pairs", "p.txt", "--mask", "m.png"], "put masks and DensePose in the pairs file"),
        (["tryon", "a.png", "b.png", "--steps", "0"], "steps (num_inference_steps) must be between 1 and 200, got 0"),
        (["tryon", "a.png", "b.png", "--resolution", "4k"], "invalid choice: '4k'"),
        (["tryon", "a.png", "b.png", "--category", "hat"], "invalid choice: 'hat'"),
        (["trace", "a.png", "b.png", "--point", "3"], "expected X,Y in pixels"),
        (["trace", "a.png", "b.png", "--task", "pose-transfer", "--mask", "m.png"], "--mask is for try-on"),
        (["download"], "name at least one TASK"),
        (["download", "everything"], "unknown task 'everything'"),
        (["pose-transfer", "a.png", "b.png", "--device", "tpu"], "invalid choice: 'tpu'"),
        (["tryon", "a.png", "b.png", "--num-images", "5"], "argument --num-images: invalid choice: 5 (choose from 1, 2, 3, 4)"),
        (["tryon", "a.png", "b.png", "--memory", "fp4"], "argument --memory: invalid choice: 'fp4'"),
        (["tryon", "a.png", "b.png", "--offload", "--memory", "int8"], "--offload means --memory model_offload"),
        (["trace", "a.png", "b.png", "--num-images", "2"], "unrecognized arguments: --num-images 2"),
        (["tryon", "a.png", "b.png", "--auto-crop", "yes"], "argument --auto-crop: invalid choice: 'yes'"),
        (["tryon", "a.png", "b.png", "--grow", "2.5"], "argument --grow: invalid int value: '2.5'"),
        (["tryon", "a.png", "b.png", "--shard", "2/2"], "argument --shard: I/N needs 0 <= I < N, got '2/2'"),
        (["tryon", "a.png", "b.png", "--shard", "half"], "argument --shard: expected I/N"),
        (["tryon", "a.png", "b.png", "--overwrite", "--skip-existing"], "--overwrite replaces results, --skip-existing"),
    ],
)
def test_bad_arguments_exit_with_2(arguments, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(arguments)
    assert info.value.code == EXIT_USAGE
    assert message in capsys.readouterr().err


def test_missing_input_file_is_a_runtime_error(tmp_path, capsys):
    mask = str(write_block_image(tmp_path / "m.png", mode="L"))
    code = main(["tryon", str(tmp_path / "nobody.png"), str(tmp_path / "g.png"), "--tiny", "--mask", mask, "--densepose", mask])
    assert code == EXIT_ERROR
    assert f"input not found: {tmp_path / 'nobody.png'}" in capsys.readouterr().err


def test_download_check_list_and_fetch(tmp_path, monkeypatch, capsys):
    root = tmp_path / "ckpts"
    assert main(["download", "openpose", "--check", "--ckpt-dir", str(root)]) == EXIT_ERROR
    out = capsys.readouterr().out
    assert "openpose/body_pose_model.pth" in out
    assert f"python -m leffa download openpose --ckpt-dir {root}" in out

    def fake_snapshot(repo_id, local_dir, allow_patterns):
        for pattern in allow_patterns:
            target = Path(local_dir) / pattern
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"weights")

    monkeypatch.setattr("leffa.weights.snapshot_download", fake_snapshot)
    assert main(["download", "openpose", "--ckpt-dir", str(root)]) == EXIT_OK
    assert f"openpose: ready in {root}" in capsys.readouterr().out
    assert main(["download", "openpose", "--check", "--ckpt-dir", str(root)]) == EXIT_OK
    assert main(["download", "--list", "--ckpt-dir", str(root)]) == EXIT_OK
    listing = capsys.readouterr().out
    assert "openpose: complete" in listing and "virtual_tryon: incomplete" in listing
    assert "  pose_transfer.pth" in listing


def test_batch_pairing_rules(tmp_path):
    for name in ("x", "y", "z"):
        write_block_image(tmp_path / "persons" / f"{name}.png")
    for name in ("y", "z", "w"):
        write_block_image(tmp_path / "garments" / f"{name}.jpg")
    jobs = jobs_from_paths(tmp_path / "persons", tmp_path / "garments", {})
    assert [(j.first.name, j.second.name) for j in jobs] == [("y.png", "y.jpg"), ("z.png", "z.jpg")]
    single = jobs_from_paths(tmp_path / "persons" / "x.png", tmp_path / "garments", {"mask": None})
    assert [j.name for j in single] == ["x__w", "x__y", "x__z"] and single[0].extras == {}
    (tmp_path / "empty").mkdir()
    with pytest.raises(BatchInputError, match="no images with the same name"):
        jobs_from_paths(tmp_path / "persons", tmp_path / "empty", {})
    with pytest.raises(BatchInputError, match="no mask for x.png"):
        garments = tmp_path / "garments"
        jobs_from_paths(tmp_path / "persons", garments / "w.jpg", {"mask": garments})


def test_pairs_file_errors(tmp_path):
    write_block_image(tmp_path / "a.png")
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("a.png\n")
    with pytest.raises(BatchInputError, match=r"pairs.txt:1: expected 'first second \[mask\] \[densepose\]'"):
        jobs_from_pairs_file(pairs, ("mask", "densepose"))
    pairs.write_text("a.png a.png - a.png\n")
    (job,) = jobs_from_pairs_file(pairs, ("mask", "densepose"))
    assert job.extras == {"densepose": tmp_path / "a.png"}
    pairs.write_text("a.png missing.png\n")
    with pytest.raises(FileNotFoundError, match="pairs.txt:1: file not found"):
        jobs_from_pairs_file(pairs, ())
    pairs.write_text("# nothing\n")
    with pytest.raises(BatchInputError, match="lists no pairs"):
        jobs_from_pairs_file(pairs, ())
    # Windows editors start UTF-8 files with a byte-order mark: it is not part of the first path
    pairs.write_bytes("\ufeffa.png a.png\n".encode())
    (job,) = jobs_from_pairs_file(pairs, ())
    assert job.first == tmp_path / "a.png"
    pairs.write_bytes("a.png caf\xe9.png\n".encode("latin-1"))
    with pytest.raises(BatchInputError, match=r"pairs.txt is not UTF-8 text \(byte 9 cannot be decoded\); save it as UTF-8"):
        jobs_from_pairs_file(pairs, ())


@pytest.mark.slow
@pytest.mark.skipif(not (DEMO_MODEL_DIR / "virtual_tryon" / "model.safetensors").is_file(), reason="no demo model in assets/")
def test_tiny_runs_the_shipped_demo_model_on_its_examples(tmp_path):
    from leffa.app.examples import demo_example_files

    example = demo_example_files()[0]
    out = tmp_path / "out"
    code = main(["tryon", str(example.person), str(example.garment), "--mask", str(example.mask),
                 "--densepose", str(example.densepose), "--tiny", "--device", "cpu", "-o", str(out), *FAST])
    assert code == EXIT_OK
    result = out / f"{example.person.stem}__{example.garment.stem}.png"
    assert Image.open(result).size == Image.open(example.person).size


def test_an_output_folder_that_is_a_file_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "tiny_runtime", _no_model)
    image = str(write_block_image(tmp_path / "p.png"))
    taken = tmp_path / "results"
    taken.write_text("my notes")
    arguments = ["tryon", image, image, "--mask", image, "--densepose", image, "--tiny"]
    assert main([*arguments, "-o", str(taken)]) == EXIT_USAGE
    assert f"the output folder {taken} is a file, not a folder; choose another --out-dir" in capsys.readouterr().err
    assert main([*arguments, "-o", str(taken / "sub")]) == EXIT_USAGE
    assert f"{taken} is a file, so the output folder {taken / 'sub'} cannot be made in it" in capsys.readouterr().err
    assert taken.read_text() == "my notes"


def test_a_pipe_is_not_taken_for_a_missing_image(tmp_path):
    import os

    from preprocess.images import InvalidImageError, load_image

    fifo = tmp_path / "photo.png"
    os.mkfifo(fifo)
    with pytest.raises(InvalidImageError, match="is not a regular file \\(a pipe, socket or device\\)"):
        load_image(fifo)
