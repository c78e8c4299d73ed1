"""The model registry: a ``--model`` name -> its entry (``ModelSpec``), and the names the help texts list.

Spellings: ``tv:NAME`` (a torchvision segmentation builder), ``hf:ID_OR_FOLDER`` (a Hugging Face
semantic-segmentation model), and the two names the report's study used, kept as aliases so that presets,
recorded studies and checkpoints still read: ``fcn_resnet50`` (= ``tv:fcn_resnet50``, same weights and keys)
and ``segformer`` with ``variant`` b0..b5 (built offline from ``segformer.VARIANTS``).
"""

from __future__ import annotations

from collections.abc import Callable

from foundation.errors import ConfigError
from segmodels.hf import HuggingFaceSpec
from segmodels.segformer import VARIANTS, SegformerSpec
from segmodels.spec import ModelSpec
from segmodels.tv import TV_BUILDERS, TorchvisionSpec

SEGFORMER_VARIANTS = tuple(VARIANTS)
TV_MODELS = tuple(f"tv:{builder}" for builder in TV_BUILDERS)
MODELS = ("fcn_resnet50", "segformer", *TV_MODELS)  # the built-in names, for help texts (hf: is open-ended)


def _segformer(name: str, variant: str) -> ModelSpec:
    if variant not in VARIANTS:
        raise ConfigError(f"--variant: expected one of {', '.join(VARIANTS)}, got {variant!r}")
    return SegformerSpec(name, variant)


def _torchvision(name: str, builder: str) -> ModelSpec | None:
    return TorchvisionSpec(name, builder=builder) if builder in TV_BUILDERS else None


def _hugging_face(name: str, source: str) -> ModelSpec | None:
    return HuggingFaceSpec(name, source=source) if source.strip() else None


ALIASES: dict[str, Callable[[str, str], ModelSpec]] = {
    "fcn_resnet50": lambda name, variant: TorchvisionSpec(name, builder="fcn_resnet50"),
    "segformer": _segformer,
}
FAMILIES: dict[str, Callable[[str, str], ModelSpec | None]] = {"tv:": _torchvision, "hf:": _hugging_face}


def model_spec(name: str, variant: str = "b0") -> ModelSpec:
    """The registry entry for ``name``; ConfigError naming every spelling for an unknown one.

    Cheap and offline: nothing is built or read here (``spec.check()`` reads a local HF config if any).
    """
    if isinstance(name, str):
        if name in ALIASES:
            return ALIASES[name](name, variant)
        for prefix, family in FAMILIES.items():
            if name.startswith(prefix) and (spec := family(name, name[len(prefix):])) is not None:
                return spec
    raise ConfigError(f"--model: expected fcn_resnet50, segformer, tv:NAME (one of {', '.join(TV_BUILDERS)}) "
                      f"or hf:ID_OR_FOLDER, got {name!r}")


def check_model(name: str, variant: str = "b0", image_size: tuple[int, int] | None = None) -> ModelSpec:
    """What ``TrainConfig.validate`` asks: a known name, a known variant, an image size the model can take,
    and (for a Hugging Face config readable offline) a model type this family builds."""
    spec = model_spec(name, variant)
    spec.check(image_size)
    return spec
