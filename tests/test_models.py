from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from segmodels import ConfigError, PretrainedUnavailable, build_model, save_encoder


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["segformer", "fcn_resnet50"])
@pytest.mark.parametrize("size", [(64, 64), (64, 128)])
def test_logits_come_at_input_resolution(name: str, size: tuple[int, int]) -> None:
    model = build_model(name, 5).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, *size)).shape == (2, 5, *size)


@pytest.fixture(scope="module")
def encoder_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("encoders")
    torch.manual_seed(123)
    return {name: save_encoder(build_model(name, 19), folder / f"{name}.pt") for name in ("segformer", "fcn_resnet50")}


@pytest.mark.parametrize("name", ["segformer", "fcn_resnet50"])
def test_finetune_loads_the_encoder_and_keeps_a_fresh_head(name: str, encoder_files: dict[str, Path]) -> None:
    source = torch.load(encoder_files[name], weights_only=True)["encoder"]
    torch.manual_seed(0)
    scratch = build_model(name, 3)
    torch.manual_seed(0)
    tuned = build_model(name, 3, "finetune", pretrained=str(encoder_files[name]))
    assert state_equal(tuned.encoder.state_dict(), source)
    assert not state_equal(scratch.encoder.state_dict(), source)
    head = [k for k in tuned.state_dict() if not k.startswith(("net.backbone.", "net.segformer."))]
    assert head and all(torch.equal(tuned.state_dict()[k], scratch.state_dict()[k]) for k in head)  # fresh, not loaded


@pytest.mark.parametrize("name", ["segformer", "fcn_resnet50"])
def test_freeze_keeps_encoder_and_its_statistics_fixed(name: str, encoder_files: dict[str, Path]) -> None:
    model = build_model(name, 3, "freeze", pretrained=str(encoder_files[name]))
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}  # includes BN running stats
    head_before = {k: v.clone() for k, v in model.state_dict().items()
                   if k not in {"net.backbone." + e for e in encoder_before}}
    model.train()
    assert not model.encoder.training and all(not p.requires_grad for p in model.encoder.parameters())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = F.cross_entropy(model(torch.randn(2, 3, 64, 64)), torch.randint(0, 3, (2, 64, 64)))
    loss.backward()
    optimizer.step()
    assert state_equal(model.encoder.state_dict(), encoder_before)
    changed = [k for k, v in model.state_dict().items() if k in head_before and not torch.equal(v, head_before[k])]
    assert changed


def test_segformer_loads_a_hugging_face_folder(tmp_path: Path) -> None:
    from transformers import SegformerModel

    from segmodels.segformer import segformer_config

    torch.manual_seed(5)
    hf = SegformerModel(segformer_config("b0", 19))
    hf.save_pretrained(tmp_path / "mit")
    model = build_model("segformer", 3, "finetune", pretrained=str(tmp_path / "mit"))
    assert state_equal(model.encoder.state_dict(), hf.state_dict())


def test_encoder_from_a_whole_checkpoint(tmp_path: Path, encoder_files: dict[str, Path]) -> None:
    donor = build_model("segformer", 19, "finetune", pretrained=str(encoder_files["segformer"]))
    torch.save({"model_state": donor.state_dict()}, tmp_path / "best.pt")
    model = build_model("segformer", 3, "finetune", pretrained=str(tmp_path / "best.pt"))
    assert state_equal(model.encoder.state_dict(), donor.encoder.state_dict())


def test_offline_without_weights_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # nothing cached there
    with pytest.raises(PretrainedUnavailable, match="--pretrained PATH"):
        build_model("segformer", 3, "finetune")
    with pytest.raises(PretrainedUnavailable, match="--pretrained PATH"):
        build_model("fcn_resnet50", 3, "finetune")


def test_wrong_names_and_files(encoder_files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--model"):
        build_model("unet", 3)
    with pytest.raises(ConfigError, match="--init"):
        build_model("segformer", 3, "warmstart")
    with pytest.raises(ConfigError, match="not segformer"):
        build_model("segformer", 3, "finetune", pretrained=str(encoder_files["fcn_resnet50"]))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="junk.pt"):
        build_model("segformer", 3, "finetune", pretrained=str(tmp_path / "junk.pt"))
