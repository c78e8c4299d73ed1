from pathlib import Path

import pytest
import torch

from study.config import TrainConfig
from study.metrics import SegMetric
from study.run_trial import run_local
from study.trial import load_splits


def small_config(toy_root: Path, **changes) -> TrainConfig:
    base = dict(dataset="pets", data_root=str(toy_root), model="segformer", epochs=6, batch_size=16,
                image_size=32, lr=2e-3, seed=1, device="cpu")
    return TrainConfig(**{**base, **changes})


def constant_baseline_miou(train_masks: torch.Tensor, val_masks: torch.Tensor, num_classes: int) -> float:
    """The best constant prediction: the most frequent training class everywhere."""
    counts = torch.bincount(train_masks[train_masks != 255].flatten().long(), minlength=num_classes)
    metric = SegMetric(num_classes)
    metric.update(torch.full_like(val_masks, int(counts.argmax())).long(), val_masks.long())
    return metric.miou()


def test_short_run_beats_the_constant_prediction(toy_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    cfg = small_config(toy_root)
    result = run_local(cfg, tmp_path / "run")
    train_set, val_set = load_splits(cfg)
    baseline = constant_baseline_miou(train_set.masks, val_set.masks, 3)
    assert [row["epoch"] for row in result.rows] == [2, 4, 6]
    assert result.best_val_miou > baseline + 0.2, (result.best_val_miou, baseline)
    assert {p.name for p in (tmp_path / "run").iterdir()} >= {"config.json", "metrics.csv", "best.pt", "last.pt"}
    lrs = [row["lr"] for row in result.rows]
    assert lrs[1] == pytest.approx(cfg.lr * cfg.gamma**3)  # ExponentialLR stepped once per epoch


def test_resume_equals_an_uninterrupted_run(toy_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    full = run_local(small_config(toy_root, epochs=4), tmp_path / "full")
    run_local(small_config(toy_root, epochs=2), tmp_path / "split")
    resumed = run_local(small_config(toy_root, epochs=4), tmp_path / "split", resume=True)
    assert [r["epoch"] for r in resumed.rows] == [4]
    assert resumed.rows[0]["val_miou"] == full.rows[-1]["val_miou"]
    assert resumed.rows[0]["train_loss"] == full.rows[-1]["train_loss"]
    lines = (tmp_path / "split" / "metrics.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines] == ["epoch", "2", "4"]  # each validation recorded once
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["model_state"]
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=True)["model_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fcn_trains_too(toy_root: Path, cache_dir: Path, tmp_path: Path) -> None:
    result = run_local(small_config(toy_root, model="fcn_resnet50", epochs=2, batch_size=24), tmp_path / "fcn")
    assert len(result.rows) == 1 and 0 <= result.rows[0]["val_miou"] <= 1


def test_precision_bf16_autocasts_training_and_validates_in_fp32(toy_root: Path, cache_dir: Path) -> None:
    from study.loop import resolve_precision, train
    from study.trial import build_trial_model

    cfg = small_config(toy_root, epochs=1, precision="bf16")
    train_set, val_set = load_splits(cfg)
    model = build_trial_model(cfg, train_set.num_classes)
    seen: list[tuple[bool, torch.dtype]] = []
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(lambda m, i, out: seen.append((m.training, out.dtype)))
    train(cfg, train_set, val_set, model)
    assert {dtype for training, dtype in seen if training} == {torch.bfloat16}
    assert {dtype for training, dtype in seen if not training} == {torch.float32}
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert resolve_precision("auto", torch.device("cuda")) == "fp32"  # until the GPU benchmark decides


class Crash(Exception):
    """Stands for the process dying at a chosen point."""


def test_a_crash_between_the_metrics_and_the_resumable_state_loses_no_row(toy_root: Path, cache_dir: Path,
                                                                         tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """``study.run_trial`` dies after epoch 4's metrics.csv row but before its last.pt; --resume trains epoch 4
    again: every row is there once, and best.pt is the weights of metrics.csv's best row."""
    import pandas as pd

    from study import run_trial

    real_save = run_trial.atomic_torch_save

    def dying_save(data: dict, path: Path) -> Path:
        if Path(path).name == "last.pt" and data["epoch"] == 4:
            raise Crash
        return real_save(data, path)

    out = tmp_path / "run"
    monkeypatch.setattr(run_trial, "atomic_torch_save", dying_save)
    with pytest.raises(Crash):
        run_local(small_config(toy_root), out)
    assert list(pd.read_csv(out / "metrics.csv")["epoch"]) == [2, 4]  # the row went first
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 2
    monkeypatch.setattr(run_trial, "atomic_torch_save", real_save)
    run_local(small_config(toy_root), out, resume=True)
    rows = pd.read_csv(out / "metrics.csv")
    assert list(rows["epoch"]) == [2, 4, 6]
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["val_miou"] == pytest.approx(rows["val_miou"].max())
    assert best["epoch"] == rows.loc[rows["val_miou"].idxmax(), "epoch"]
    uninterrupted = run_local(small_config(toy_root), tmp_path / "uninterrupted")
    assert list(rows["val_miou"]) == pytest.approx([r["val_miou"] for r in uninterrupted.rows])


def test_the_resumable_state_keeps_the_cuda_random_state_where_cuda_is_used(toy_root: Path, cache_dir: Path,
                                                                          tmp_path: Path) -> None:
    run_local(small_config(toy_root, epochs=2), tmp_path / "run")
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert "rng_cuda" in state  # empty on a machine where CUDA was never initialised
    assert len(state["rng_cuda"]) == (torch.cuda.device_count() if torch.cuda.is_initialized() else 0)
