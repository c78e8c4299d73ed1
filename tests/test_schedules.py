"""Schedules (study.schedules) and parameter groups (segmodels.groups): values at given iterations, and which
parameters of a torchvision and a Hugging Face model are the head, the norms and the biases."""

from pathlib import Path

import pytest
import torch

from segmodels import build_model
from segmodels.groups import param_groups
from segmodels.toy import write_tiny_model
from study.schedules import build_optimizer, build_scheduler


def lrs(name: str, total: int, warmup: int, **kwargs) -> tuple[list[list[float]], bool]:
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([{"params": [a]}, {"params": [b], "lr": 10.0}], lr=1.0)
    scheduler, per_iteration = build_scheduler(name, optimizer, total, warmup, **kwargs)
    values = []
    for _ in range(total + 1):
        values.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return values, per_iteration


def test_warmup_then_poly_and_cosine_at_given_iterations() -> None:
    values, per_iteration = lrs("poly", 10, 4, warmup_ratio=0.1, power=2.0)
    assert per_iteration
    assert [v[0] for v in values[:5]] == pytest.approx([0.1, 0.325, 0.55, 0.775, 1.0])  # linear from 0.1 x lr
    assert values[7][0] == pytest.approx((1 - 3 / 6) ** 2) and values[10][0] == 0  # (1 - t/T)^power after warmup
    assert values[2][1] == pytest.approx(5.5)  # every group scaled alike: a head multiplier is kept
    cosine, _ = lrs("cosine", 10, 4, warmup_ratio=0.1)
    assert cosine[7][0] == pytest.approx(0.5) and cosine[6][0] == pytest.approx(0.75)
    no_warmup, _ = lrs("poly", 4, 0, power=1.0)
    assert [v[0] for v in no_warmup] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    exponential, per_iteration = lrs("exponential", 3, 0, gamma=0.5)
    assert not per_iteration and [v[0] for v in exponential] == pytest.approx([1.0, 0.5, 0.25, 0.125])
    with pytest.raises(ValueError, match="warmup_iters"):
        lrs("poly", 10, 10)
    with pytest.raises(ValueError, match="schedule"):
        lrs("step", 10, 0)


def test_parameter_groups_of_a_torchvision_and_a_hugging_face_model(tmp_path: Path) -> None:
    tv = build_model("tv:lraspp_mobilenet_v3_large", 3)
    hf = build_model(f"hf:{write_tiny_model(tmp_path / 'tiny', 'segformer')}", 3)
    for model, head_prefix in ((tv, "classifier."), (hf, "decode_head.")):
        groups = {g["name"]: g for g in param_groups(model, 1e-3, 0.01, head_lr_mult=10, norm_decay_mult=0)}
        names = {id(p): n for n, p in model.net.named_parameters()}
        by_group = {key: {names[id(p)] for p in g["params"]} for key, g in groups.items()}
        assert set(by_group) == {"encoder", "encoder-no-decay", "head", "head-no-decay"}
        head = by_group["head"] | by_group["head-no-decay"]
        assert head == {n for n in names.values() if n.startswith(head_prefix)}
        assert groups["head"]["lr"] == pytest.approx(1e-2) and groups["encoder"]["lr"] == 1e-3
        assert groups["encoder-no-decay"]["weight_decay"] == 0 and groups["encoder"]["weight_decay"] == 0.01
        undecayed = by_group["encoder-no-decay"] | by_group["head-no-decay"]
        modules = dict(model.net.named_modules())
        norms = {f"{m}.{p}" for m, mod in modules.items() if "norm" in type(mod).__name__.lower()
                 for p, _ in mod.named_parameters(recurse=False)}
        assert norms and norms <= undecayed
        assert all(n.endswith("bias") or n in norms for n in undecayed)
        assert {n for n in names.values() if n.endswith("bias")} <= undecayed
    single = param_groups(tv, 1e-3, 0.01)  # multipliers 1: one group, in the model's order
    assert len(single) == 1 and single[0]["params"] == list(tv.parameters())
    tv.freeze_encoder()  # frozen parameters are left out
    optimizer = build_optimizer(tv, 1e-3, 0.01, head_lr_mult=10)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == sum(p.requires_grad for p in tv.parameters())
    assert {g["name"] for g in optimizer.param_groups} == {"head", "head-no-decay"}
