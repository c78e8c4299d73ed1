import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision

from foundation.errors import ConfigError, PretrainedUnavailable
from segmodels import (
    TV_MODELS,
    build_model,
    check_model,
    model_spec,
    save_encoder,
)
from segmodels.toy import write_tiny_model


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
    for name in ("segformer", "fcn_resnet50", "tv:lraspp_mobilenet_v3_large"):
        with pytest.raises(PretrainedUnavailable, match="--pretrained PATH"):
            build_model(name, 3, "finetune")
    config_only = write_tiny_model(tmp_path / "config-only", "segformer")  # builds from scratch, has no weights
    build_model(f"hf:{config_only}", 3)
    with pytest.raises(PretrainedUnavailable, match="--pretrained PATH") as info:
        build_model(f"hf:{config_only}", 3, "freeze")
    assert "\n" not in str(info.value)
    with pytest.raises(PretrainedUnavailable, match="hf:nvidia/mit-b2"):  # neither its config nor its weights
        build_model("hf:nvidia/mit-b2", 3)


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


# --- the registry: every family, with its smallest member -------------------------------------------------

CLASSES = ["pet", "background", "border"]


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny SegFormer and UperNet (ConvNeXt backbone) folders with random weights, as save_pretrained writes."""
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(7)
    return {kind: write_tiny_model(root / kind, kind, weights=True) for kind in ("segformer", "upernet")}


def spelled(name: str, hf_folders: dict[str, Path]) -> str:
    return f"hf:{hf_folders[name[3:]]}" if name.startswith("hf:") else name


@pytest.mark.parametrize("name", ["tv:lraspp_mobilenet_v3_large", "hf:segformer", "hf:upernet"])
def test_each_family_trains_a_step_and_round_trips_its_encoder(name: str, hf_folders: dict[str, Path],
                                                               tmp_path: Path) -> None:
    name = spelled(name, hf_folders)
    torch.manual_seed(0)
    model = build_model(name, 3, class_names=CLASSES).train()
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 3, 32, 32)
    F.cross_entropy(logits, torch.randint(0, 3, (2, 32, 32))).backward()
    torch.optim.AdamW(model.parameters(), lr=1e-2).step()
    assert not state_equal(model.encoder.state_dict(), encoder_before)  # the step reached the encoder

    path = save_encoder(model, tmp_path / "encoder.pt")
    torch.manual_seed(1)
    tuned = build_model(name, 5, "finetune", pretrained=str(path))  # another task: a fresh 5-class head
    assert state_equal(tuned.encoder.state_dict(), model.encoder.state_dict())
    assert tuned.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 5, 32, 32)

    frozen = build_model(name, 5, "freeze", pretrained=str(path)).train()
    encoder_params = {id(p) for p in frozen.encoder.parameters()}
    assert encoder_params and len(encoder_params) < len(list(frozen.parameters()))
    assert all(p.requires_grad == (id(p) not in encoder_params) for p in frozen.parameters())  # exactly the encoder
    assert not frozen.encoder.training and frozen.training


@pytest.mark.parametrize("kind, encoder_class", [("segformer", "SegformerModel"), ("upernet", "ConvNextBackbone")])
def test_hf_finetune_loads_the_encoder_of_its_own_folder(kind: str, encoder_class: str,
                                                         hf_folders: dict[str, Path]) -> None:
    from transformers import AutoModelForSemanticSegmentation

    saved = AutoModelForSemanticSegmentation.from_pretrained(hf_folders[kind])
    torch.manual_seed(3)
    model = build_model(f"hf:{hf_folders[kind]}", 3, "finetune", class_names=CLASSES)
    assert type(model.encoder).__name__ == encoder_class
    assert model.spec.default_pretrained == str(hf_folders[kind])
    ours, theirs = model.net.state_dict(), saved.state_dict()
    encoder_keys = {k for k in ours if any(k.startswith(p) for p in ("segformer.", "backbone."))}
    assert encoder_keys and all(torch.equal(ours[k], theirs[k]) for k in encoder_keys)
    decoder = [k for k in ours if k not in encoder_keys and ours[k].is_floating_point()
               and ours[k].shape == theirs[k].shape]
    assert decoder and not all(torch.equal(ours[k], theirs[k]) for k in decoder)  # decoder and head start fresh
    assert model.net.config.id2label == dict(enumerate(CLASSES)) and model.net.config.num_labels == 3


def test_hf_encoder_from_an_encoder_only_checkpoint(hf_folders: dict[str, Path], tmp_path: Path) -> None:
    from transformers import ConvNextConfig, ConvNextModel

    torch.manual_seed(11)
    for name, sizes in (("convnext", [8, 16, 16, 16]), ("wider", [8, 16, 32, 32])):
        ConvNextModel(ConvNextConfig(hidden_sizes=sizes, depths=[1, 1, 1, 1])).save_pretrained(tmp_path / name)
    donor = ConvNextModel.from_pretrained(tmp_path / "convnext").state_dict()
    model = build_model(f"hf:{hf_folders['upernet']}", 3, "finetune", pretrained=str(tmp_path / "convnext"))
    stages = [k for k in model.encoder.state_dict() if k.startswith("encoder.stages.")]
    assert stages and all(torch.equal(model.encoder.state_dict()[k], donor[k]) for k in stages)
    with pytest.raises(ConfigError, match="does not fit"):
        build_model(f"hf:{hf_folders['upernet']}", 3, "finetune", pretrained=str(tmp_path / "wider"))


@pytest.mark.parametrize("kind, encoder_class, size", [("dpt", "DPTModel", (32, 32)),  # DPT: square only
                                                       ("mobilevit", "MobileViTModel", (32, 48)),
                                                       ("beit", "BeitModel", (32, 48))])
def test_hf_architectures_build_from_a_config_folder(kind: str, encoder_class: str, size: tuple[int, int],
                                                     tmp_path: Path) -> None:
    folder = write_tiny_model(tmp_path / kind, kind)
    model = build_model(f"hf:{folder}", 3, class_names=CLASSES).eval()
    assert type(model.encoder).__name__ == encoder_class
    assert 0 < sum(p.numel() for p in model.encoder.parameters()) < sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, 3, *size)
    if kind == "dpt":
        with pytest.raises(ConfigError, match="square"):
            check_model(f"hf:{folder}", image_size=(32, 48))


def test_hf_scratch_ignores_the_image_processors_label_reduction(tmp_path: Path) -> None:
    folder = write_tiny_model(tmp_path / "ade", "segformer")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "reduce_labels": True, "do_reduce_labels": True}))
    (folder / "preprocessor_config.json").write_text(json.dumps({"do_reduce_labels": True}))
    net = build_model(f"hf:{folder}", 3, class_names=CLASSES).net
    assert not hasattr(net.config, "do_reduce_labels") and not hasattr(net.config, "reduce_labels")
    assert net.config.label2id == {name: i for i, name in enumerate(CLASSES)}


def test_universal_segmentation_and_other_configs_are_refused(tmp_path: Path) -> None:
    from transformers import BertConfig, Mask2FormerConfig

    Mask2FormerConfig().save_pretrained(tmp_path / "mask2former")
    BertConfig().save_pretrained(tmp_path / "bert")
    for folder, reason in (("mask2former", "universal-segmentation"), ("bert", "not a semantic-segmentation")):
        name = f"hf:{tmp_path / folder}"
        for attempt in (build_model, check_model):  # check_model: what TrainConfig asks, before Ray starts
            with pytest.raises(ConfigError, match=reason) as info:
                attempt(name, 3) if attempt is build_model else attempt(name)
            assert "segformer" in str(info.value) and "upernet" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="no config.json"):
        build_model(f"hf:{tmp_path / 'missing'}", 3)
    check_model(f"hf:{tmp_path / 'missing'}")  # another machine's folder (a recorded study) still validates


def test_the_registry_names_every_spelling_and_checks_sizes() -> None:
    from study.config import TrainConfig

    builders = torchvision.models.list_models(module=torchvision.models.segmentation)
    assert TV_MODELS == tuple(f"tv:{b}" for b in builders)
    for bad in ("unet", "tv:resnet50", "hf:", "segformer_b0"):
        with pytest.raises(ConfigError, match="--model") as info:
            model_spec(bad)
        assert all(s in str(info.value) for s in ("fcn_resnet50", "segformer", "hf:ID_OR_FOLDER", *builders))
    with pytest.raises(ConfigError, match="--variant"):
        model_spec("segformer", "b9")
    assert model_spec("fcn_resnet50").key == model_spec("tv:fcn_resnet50").key
    assert (model_spec("segformer", "b2").family, model_spec("segformer", "b2").default_pretrained) == (
        "huggingface", "nvidia/mit-b2")
    assert (model_spec("tv:deeplabv3_resnet50").family, model_spec("tv:deeplabv3_resnet50").default_pretrained) == (
        "torchvision", "imagenet")
    with pytest.raises(ConfigError, match="--model"):
        TrainConfig(model="unet")
    with pytest.raises(ConfigError, match="--image-size: segformer needs at least 32"):
        TrainConfig(model="segformer", image_size=16)
    assert TrainConfig(model="tv:lraspp_mobilenet_v3_large", image_size=16).model == "tv:lraspp_mobilenet_v3_large"


@pytest.mark.parametrize("builder", ["deeplabv3_mobilenet_v3_large", "deeplabv3_resnet50"])  # not the resnet101s:
def test_other_torchvision_builders_build(builder: str) -> None:  # the same code at twice the depth, seconds each
    model = build_model(f"tv:{builder}", 4).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 4, 32, 32)


def test_an_encoder_fits_another_model_of_its_family(tmp_path: Path) -> None:
    lraspp = save_encoder(build_model("tv:lraspp_mobilenet_v3_large", 3), tmp_path / "mobilenet.pt")
    model = build_model("tv:deeplabv3_mobilenet_v3_large", 3, "finetune", pretrained=str(lraspp))
    assert state_equal(model.encoder.state_dict(), torch.load(lraspp, weights_only=True)["encoder"])
    with pytest.raises(ConfigError, match="does not fit"):  # same family, another backbone
        build_model("segformer", 3, "finetune", pretrained=str(save_encoder(
            build_model(f"hf:{write_tiny_model(tmp_path / 'tiny', 'segformer')}", 3), tmp_path / "tiny.pt")))


@pytest.mark.parametrize("name", ["tv:lraspp_mobilenet_v3_large", "hf:upernet"])
def test_each_family_trains_an_epoch_and_resumes(name: str, hf_folders: dict[str, Path], toy_root: Path,
                                                 cache_dir: Path, tmp_path: Path) -> None:
    """The shared loop on toy Pets with each family's smallest member: one epoch, then --resume to the second
    (SegFormer, the third family entry, is resumed in tests/test_loop.py)."""
    import csv

    from study.config import TrainConfig
    from study.run_trial import run_local

    cfg = TrainConfig(dataset="pets", data_root=str(toy_root), model=spelled(name, hf_folders), epochs=1,
                      batch_size=16, image_size=32, val_every=1, device="cpu")
    run_local(cfg, tmp_path / "run")
    run_local(cfg.replace(epochs=2), tmp_path / "run", resume=True)
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] == 2
