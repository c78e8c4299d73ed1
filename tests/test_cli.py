"""Bad input: one line naming the option or file, exit code 2, no traceback, nothing written."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from analysis import score
from study import run_trial
from study.cli import main_guard
from study.data.formats import open_source

REPO = Path(__file__).resolve().parents[1]


def run_train(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = main_guard("study.run_trial", run_trial.main, ["--no-progress", *args])
    return code, capsys.readouterr().err


def fast(root: Path, out: Path, *extra: str) -> list[str]:
    return ["--dataset", "pets", "--data-root", str(root), "--epochs", "2", "--batch-size", "16",
            "--image-size", "32", "--out", str(out), *extra]


@pytest.mark.parametrize(
    ("extra", "names"),
    [
        (["--dataset", "mnist"], "--dataset"),
        (["--model", "unet"], "--model"),
        (["--init", "warm"], "--init"),
        (["--lr", "0"], "--lr"),
        (["--lr", "-1e-3"], "--lr"),
        (["--lr", "fast"], "--lr"),
        (["--gamma", "0"], "--gamma"),
        (["--gamma", "1.5"], "--gamma"),
        (["--epochs", "0"], "--epochs"),
        (["--batch-size", "0"], "--batch-size"),
        (["--image-size", "64xfoo"], "--image-size"),
        (["--image-size", "16"], "--image-size"),
        (["--precision", "fp16"], "--precision"),
    ],
)
def test_bad_options(extra: list[str], names: str, toy_root: Path, tmp_path: Path, capsys) -> None:
    code, err = run_train(fast(toy_root, tmp_path / "out") + extra, capsys)
    assert code == 2 and names in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_missing_data_root(tmp_path: Path, capsys) -> None:
    code, err = run_train(fast(tmp_path / "nowhere", tmp_path / "out"), capsys)
    assert code == 2 and "--data-root" in err and str(tmp_path / "nowhere") in err
    assert not (tmp_path / "out").exists()


def test_broken_file_stops_before_training(toy_copy: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("SEGSTUDY_CACHE", str(tmp_path / "cache"))
    label = open_source("pets", "train", toy_copy).label_files[3]
    trimap = np.asarray(Image.open(label)).copy()
    trimap[:2] = 0
    Image.fromarray(trimap).save(label)
    code, err = run_train(fast(toy_copy, tmp_path / "out"), capsys)
    assert code == 2 and str(label) in err and "1, 2 or 3" in err
    assert not (tmp_path / "out").exists()


def test_existing_run_is_refused_and_kept(toy_root: Path, cache_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert run_train(fast(toy_root, out), capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, err = run_train(fast(toy_root, out, "--lr", "5e-4"), capsys)
    assert code == 2 and "--resume" in err
    code, err = run_train(fast(toy_root, out, "--lr", "5e-4", "--resume"), capsys)
    assert code == 2 and "--lr" in err and "differs" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    code, err = run_train(fast(toy_root, tmp_path / "empty", "--resume"), capsys)
    assert code == 2 and "nothing to resume" in err


def test_evaluate_scores_best_checkpoint(toy_root: Path, cache_dir: Path, tmp_path: Path, capsys) -> None:
    assert run_train(fast(toy_root, tmp_path / "run"), capsys)[0] == 0
    code = main_guard("analysis.score", score.main, ["--checkpoint", str(tmp_path / "run" / "best.pt"),
                      "--dataset", "pets", "--data-root", str(toy_root), "--split", "test",
                      "--out", str(tmp_path / "ev")])
    assert code == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["images"] == 24 and 0 <= metrics["miou"] <= 1
    assert set(metrics["per_class_iou"]) == {"pet", "background", "boundary"}
    assert np.array(metrics["confusion_matrix"]).sum() == 24 * 32 * 32
    (tmp_path / "bad.pt").write_bytes(b"\x80\x02truncated")
    code = main_guard("analysis.score", score.main, ["--checkpoint", str(tmp_path / "bad.pt"),
                      "--dataset", "pets", "--data-root", str(toy_root), "--out", str(tmp_path / "ev2")])
    err = capsys.readouterr().err
    assert code == 2 and "bad.pt" in err and not (tmp_path / "ev2").exists()


def test_real_process_exit_code_and_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "study.run_trial", "--data-root", str(tmp_path / "none"), "--out",
                           str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0 and "--data-root" in proc.stderr


def test_wandb_offline_needs_no_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Ray's W&B callback refuses to start without a key, even offline; the study's runs are offline then."""
    from study.orchestrate.tuner import wandb_callbacks
    from study.settings import StudySettings

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path))  # no wandb login on this machine either
    monkeypatch.setenv("HOME", str(tmp_path))
    callback, = wandb_callbacks(StudySettings(wandb=True, storage=str(tmp_path), name="w"))
    callback.setup()
    assert callback.kwargs["mode"] == "offline"


def test_every_path_option_is_absolute_from_each_commands_bare_defaults(tmp_path: Path, monkeypatch) -> None:
    """Issue 34: a default (``results``, ``data``) is made absolute like a given value, on every command: Ray
    Train's storage refuses a relative path, and Ray's workers and a resumed study run in other folders."""
    import os

    from study.options import LocalPath, declared
    from study.run import settings_from_args
    from study.settings import StudySettings

    monkeypatch.chdir(tmp_path)
    declared_paths = [f.name for f in declared(StudySettings) if isinstance(f.metadata["kind"], LocalPath)]
    assert set(declared_paths) == {"storage", "data_root", "cache_dir", "task", "autoscaler_config"}
    bare = settings_from_args([])
    assert bare.storage == str(tmp_path / "results") and bare.experiment_dir == str(tmp_path / "results" / "demo")
    assert bare.data_root == str(tmp_path / "data" / "toy")  # the demo preset's, as the preset spells it
    assert all(getattr(bare, name) is None or os.path.isabs(getattr(bare, name)) for name in declared_paths)
    (tmp_path / "cluster.yaml").write_text("cluster_name: x\n")
    given = settings_from_args(["--storage", "out", "--data-root", "d", "--cache-dir", "~/c",
                                "--autoscaler-config", "cluster.yaml", "--storage", "s3://bucket/r"])
    assert given.storage == "s3://bucket/r"  # a URI is kept
    assert (given.data_root, given.autoscaler_config) == (str(tmp_path / "d"), str(tmp_path / "cluster.yaml"))
    assert given.cache_dir == os.path.expanduser("~/c")

    args = run_trial.build_parser().parse_args([])
    cfg = run_trial.config_from_args(args)
    assert cfg.data_root == str(tmp_path / "data")
    assert run_trial.out_dir(args, cfg) == str(tmp_path / "runs" / "pets-segformer-scratch-seed0")
    args = run_trial.build_parser().parse_args(["--model", "tv:lraspp_mobilenet_v3_large"])
    assert run_trial.out_dir(args, run_trial.config_from_args(args)) == str(
        tmp_path / "runs" / "pets-tv_lraspp_mobilenet_v3_large-scratch-seed0")  # one folder, no colon
    args = score.build_parser().parse_args(["--checkpoint", "b.pt", "--data-root", "d", "--out", "o",
                                            "--save-predictions", "p", "--cache-dir", "c"])
    assert [args.checkpoint, args.data_root, args.out, args.save_predictions, args.cache_dir] == [
        str(tmp_path / name) for name in ("b.pt", "d", "o", "p", "c")]


def test_save_predictions_refuses_a_file_or_a_folder_with_files_before_anything_is_read(tmp_path: Path,
                                                                                        capsys) -> None:
    """Issue 35: a path that is a file gave a traceback, a folder with files was overwritten silently."""
    (tmp_path / "file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.png").write_text("mine")
    for option, target, expected in [("--save-predictions", "file", "is a file"),
                                     ("--save-predictions", "full", "not empty"), ("--out", "file", "is a file")]:
        paths = {"--out": str(tmp_path / "ev"), "--save-predictions": str(tmp_path / "masks"),
                 option: str(tmp_path / target)}
        argv = ["--checkpoint", str(tmp_path / "no.pt"), "--dataset", "pets", "--data-root", str(tmp_path)]
        code = main_guard("analysis.score", score.main, [*argv, *[word for pair in paths.items() for word in pair]])
        err = capsys.readouterr().err
        assert code == 2 and f"{option} {tmp_path / target}: {expected}" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "full" / "mine.png").read_text() == "mine" and not (tmp_path / "ev").exists()


def test_save_predictions_of_an_input_size_checkpoint_are_at_each_labels_size(toy_root: Path, cache_dir: Path,
                                                                             tmp_path: Path) -> None:
    """The report recipe scores at the input size (--eval-at input); its saved masks are still at each label's own
    size, as --help says, and agree with the input-size prediction scored."""
    import torch

    from analysis.score import original_pairs, score_checkpoint
    from segmodels import build_model
    from segmodels.toy import write_tiny_model
    from study.config import TrainConfig
    from study.data import Labels

    tiny = f"hf:{write_tiny_model(tmp_path / 'tiny', 'segformer', num_classes=3)}"
    cfg = TrainConfig(dataset="pets", data_root=str(toy_root), model=tiny, image_size=32, device="cpu")
    torch.manual_seed(0)
    torch.save({"config": cfg.to_dict(), "class_names": ["pet", "background", "boundary"],
                "model_state": build_model(tiny, 3).state_dict()}, tmp_path / "best.pt")
    result = score_checkpoint(tmp_path / "best.pt", "pets", toy_root, "val", "cpu", save_predictions=tmp_path / "m")
    assert result["eval_at"] == "input" and sum(map(sum, result["confusion_matrix"])) <= result["images"] * 32 * 32
    stems = [f.stem for f in open_source("pets", "val", toy_root).image_files]
    pairs = list(original_pairs("pets", "val", toy_root, Labels.of(cfg)))
    assert len(list((tmp_path / "m").iterdir())) == len(pairs) == result["images"]
    for stem, (_, label) in zip(stems, pairs, strict=True):
        mask = Image.open(tmp_path / "m" / f"{stem}.png")
        assert mask.mode == "P" and mask.size == (label.shape[1], label.shape[0]) != (32, 32)
