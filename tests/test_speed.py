"""The loop's speed options: how each ``auto`` resolves, and the static shapes a compiled step relies on.

Everything runs on the CPU with a tiny convnet on random 32x32 data. The recompile test uses torch.compile
itself with dynamo's ``eager`` backend (dynamo's guards decide recompiles, whatever the backend); the
Inductor test (C++ on the CPU, as the loop compiles) takes tens of seconds on 2 cores, so it is a benchmark.
"""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from torch import nn

from foundation.errors import ConfigError
from study.config import TrainConfig
from study.data import SegDataset
from study.loop import train, train_one_epoch
from study.speed import Speed, pad_order, resolve_speed

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def tiny_net() -> nn.Module:
    """Conv-BN-ReLU-conv: BatchNorm so that train and eval modes differ, as in FCN."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 1))


def per_pixel_net() -> nn.Module:
    """No BatchNorm: every image's logits depend on that image alone."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1))


def random_split(n: int, size: int = 32, seed: int = 0, split: str = "train") -> SegDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    masks = torch.randint(0, 3, (n, size, size), generator=g, dtype=torch.uint8)
    masks[:, :2] = 255  # some ignored pixels, as the trimaps' borders
    return SegDataset("pets", split, images, masks, [f"{i}.jpg" for i in range(n)], ("pet", "background", "border"))


def config(**changes) -> TrainConfig:
    base = dict(dataset="pets", model="fcn_resnet50", epochs=2, batch_size=8, image_size=32, val_every=1,
                device="cpu", seed=3)
    return TrainConfig(**{**base, **changes})


def test_pad_order_fills_the_last_batch_with_the_first_entries() -> None:
    order = torch.tensor([5, 3, 9, 0, 7])
    assert pad_order(order, 5) is order
    assert pad_order(order, 4).tolist() == [5, 3, 9, 0, 7, 5, 3, 9]
    assert pad_order(order, 8).tolist() == [5, 3, 9, 0, 7, 5, 3, 9]
    assert pad_order(torch.tensor([4, 1]), 5).tolist() == [4, 1, 4, 1, 4]  # fewer images than one batch


def test_auto_resolves_off_on_the_cpu_and_by_trial_length_on_cuda() -> None:
    assert resolve_speed(config(), CPU, steps=10**6) == Speed(tf32=False, fused_adamw=False, channels_last=False,
                                                               compile="off")
    long_fcn, short_fcn = resolve_speed(config(), CUDA, 10**6), resolve_speed(config(), CUDA, 10)
    assert long_fcn.compile == "reduce-overhead" and short_fcn.compile == "off"
    assert long_fcn.tf32 and long_fcn.fused_adamw and long_fcn.channels_last
    assert not resolve_speed(config(model="segformer"), CUDA, 10).channels_last  # not a convnet
    strict = resolve_speed(config(tf32="off", fused_adamw="off", channels_last="off", compile="off"), CUDA, 10**6)
    assert strict == Speed(tf32=False, fused_adamw=False, channels_last=False, compile="off")
    forced = resolve_speed(config(fused_adamw="on", channels_last="on", compile="max-autotune"), CPU, 1)
    assert forced.fused_adamw and forced.channels_last and forced.compile == "max-autotune"
    assert resolve_speed(config(compile="reduce-overhead"), CPU, 1).compile == "default"  # no CUDA graphs on CPU


def test_speed_options_are_validated_and_named() -> None:
    with pytest.raises(ConfigError, match="--compile"):
        config(compile="fast")
    with pytest.raises(ConfigError, match="--fused-adamw"):
        config(fused_adamw="yes")


def test_static_shapes_train_exactly_what_the_eager_tail_trains() -> None:
    """Without BatchNorm the fillers change nothing: same loss, same pixels, same weights after the epoch."""
    data = random_split(13)  # batch 8: a tail of 5
    cfg = config(batch_size=8)
    results = []
    for static in (False, True):
        net = per_pixel_net()
        seen: list[int] = []
        net.register_forward_pre_hook(lambda m, args, seen=seen: seen.append(args[0].shape[0]))
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2, amsgrad=True)
        stats = train_one_epoch(net, optimizer, data.images, data.masks, cfg, 1, num_classes=3, ignore_index=255,
                                bf16=False, track_metric=True, static_shapes=static)
        results.append((stats, net.state_dict(), seen))
    (eager, eager_w, eager_seen), (static, static_w, static_seen) = results
    assert eager_seen == [8, 5] and static_seen == [8, 8]
    assert static.images == eager.images == 13
    assert torch.equal(static.pixels, eager.pixels)
    assert torch.allclose(static.loss_sum, eager.loss_sum, rtol=1e-5)
    assert torch.equal(static.metric.confusion, eager.metric.confusion)
    assert all(torch.allclose(static_w[k], eager_w[k], rtol=1e-4, atol=1e-6) for k in eager_w)


def _dynamo_only(compile_fn):
    def compile_(model, mode=None, dynamic=None):
        return compile_fn(model, backend="eager", dynamic=dynamic)

    return compile_


def test_a_compiled_trial_never_recompiles_after_its_first_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tail batch every epoch, validation between epochs (with its own tail): still one graph."""
    import torch._dynamo

    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", _dynamo_only(torch.compile))
    train_set, val_set = random_split(13), random_split(5, seed=1, split="val")
    compiles: list[int] = []
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)  # a recompile fails the test
    from torch._dynamo.utils import counters

    counters.clear()
    result = train(config(epochs=3, compile="default"), train_set, val_set, tiny_net())
    compiles.append(counters["stats"]["unique_graphs"])
    assert [row["epoch"] for row in result.rows] == [1, 2, 3]
    assert compiles == [1]
    assert all(math.isfinite(row["val_loss"]) for row in result.rows)


@pytest.mark.benchmark
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="Inductor needs a C++ compiler")
def test_inductor_compiled_training_matches_eager() -> None:
    """The loop's real compile (Inductor, C++ on the CPU): the same losses as eager, within float tolerance."""
    import torch._dynamo

    torch._dynamo.reset()
    train_set, val_set = random_split(16), random_split(4, seed=1, split="val")
    eager = train(config(epochs=2, batch_size=8), train_set, val_set, per_pixel_net())
    compiled = train(config(epochs=2, batch_size=8, compile="default"), train_set, val_set, per_pixel_net())
    for a, b in zip(eager.rows, compiled.rows, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-3)


def test_both_command_lines_pass_the_speed_options_to_every_trial(tmp_path) -> None:
    from study.cli import OneLineParser
    from study.run import settings_from_args
    from study.run_trial import add_trial_options, config_from_args
    from study.settings import ResourcePlan

    parser = OneLineParser(prog="run_trial")
    add_trial_options(parser)
    cfg = config_from_args(parser.parse_args(["--compile", "max-autotune", "--fused-adamw", "on", "--tf32", "off"]))
    assert (cfg.compile, cfg.fused_adamw, cfg.tf32, cfg.channels_last) == ("max-autotune", "on", "off", "auto")
    settings = settings_from_args(["--preset", "demo", "--storage", str(tmp_path), "--compile", "off",
                                   "--channels-last", "on"])
    base = settings.trial_base({}, ResourcePlan(cpus_per_trial=1, gpus_per_trial=0))
    assert (base["compile"], base["channels_last"], base["tf32"], base["fused_adamw"]) == ("off", "on", "auto", "auto")
    fields = set(TrainConfig.__dataclass_fields__)
    assert TrainConfig(**{k: v for k, v in base.items() if k in fields}, model="fcn_resnet50").compile == "off"
