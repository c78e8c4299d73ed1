"""Optimizer parameter groups: a head lr multiplier and a weight-decay multiplier for norms, biases and position
parameters (MMSegmentation's ``paramwise_cfg``; its SegFormer recipe gives the head lr x10 and norms and position
blocks no decay).

Which parameters are the head is the registry entry's to say (``ModelSpec.head_of``: everything outside the
encoder), for torchvision and Hugging Face models alike. Norms are found by their module's type (BatchNorm,
GroupNorm, InstanceNorm, LayerNorm, ... and a model's own ``*Norm`` classes such as ConvNeXt's channel-first
LayerNorm); position parameters by name (``POSITION_KEYS``); biases are every 1-d ``*bias``. Frozen parameters
(``requires_grad=False``) are left out, as the optimizer never sees them.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from segmodels.model import SegModel

POSITION_KEYS = ("pos_block", "pos_embed", "position_embedding", "relative_position_bias_table", "cls_token")
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm, nn.RMSNorm)


def is_norm(module: nn.Module) -> bool:
    """A normalisation layer: a torch norm type, or a model's own class named ``...Norm`` (``...LayerNorm``)."""
    return isinstance(module, NORM_TYPES) or type(module).__name__.lower().endswith(("norm", "norm1d", "norm2d"))


def no_decay_names(net: nn.Module) -> set[str]:
    """Names (in ``net``) of the parameters a decay multiplier applies to: norms' weights and biases, every
    other 1-d bias, and position embeddings / blocks."""
    names = set()
    for module_name, module in net.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for name, param in module.named_parameters(recurse=False):
            full = prefix + name
            if is_norm(module) or (name.endswith("bias") and param.ndim == 1) or \
                    any(key in full for key in POSITION_KEYS):
                names.add(full)
    return names


def head_names(model: SegModel) -> set[str]:
    """Names (in ``model.net``) of the head's parameters, as the registry entry defines the head."""
    head = {id(p) for module in model.spec.head_of(model.net) for p in module.parameters()}
    return {name for name, p in model.net.named_parameters() if id(p) in head}


def param_groups(model: SegModel, lr: float, weight_decay: float, head_lr_mult: float = 1.0,
                 norm_decay_mult: float = 1.0) -> list[dict[str, Any]]:
    """Parameter groups for a torch optimizer: encoder/head x decayed/not, each with its ``lr`` and
    ``weight_decay`` and a ``name`` (for logs); empty groups are left out.

    With both multipliers 1 this is one group of every trainable parameter in the model's order, exactly the
    list an optimizer built without groups gets (so its results and its state dict stay as they were).
    """
    if head_lr_mult == 1 and norm_decay_mult == 1:  # any nn.Module: no registry entry needed
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr, "weight_decay": weight_decay}]
    trainable = [(name, p) for name, p in model.net.named_parameters() if p.requires_grad]
    head, no_decay = head_names(model), no_decay_names(model.net)
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in trainable:
        groups.setdefault((name in head, name in no_decay), []).append(p)
    out = []
    for (in_head, undecayed), params in sorted(groups.items()):
        out.append({"params": params, "lr": lr * (head_lr_mult if in_head else 1.0),
                    "weight_decay": weight_decay * (norm_decay_mult if undecayed else 1.0),
                    "name": f"{'head' if in_head else 'encoder'}{'-no-decay' if undecayed else ''}"})
    return out
