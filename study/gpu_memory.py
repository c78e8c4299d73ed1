"""A trial's peak GPU memory, estimated before it runs, so that ``--gpus-per-trial`` can be sized per model.

    peak = 20 B per parameter        fp32 weights, their gradients, and AdamW's exp_avg, exp_avg_sq and
                                     amsgrad's max_exp_avg_sq (4 B each)
         + batch x activations       the bytes one image's forward pass keeps for the backward pass, measured
                                     on the CPU: every tensor autograd saves (``saved_tensors_hooks``) for one
                                     image, each storage counted once, the weights left out (counted above)
         + OVERHEAD                  the CUDA context, cuDNN/cuBLAS workspaces and allocator slack
         + augmentation              with a base scale (``study.augment``): the batch's rows gathered at the
                                     stored width (two float32 neighbours and their blend), then its crops'
                                     columns and photometric copies (``augment_bytes``)

Measured, not guessed from the architecture: the hooks see what this model at this image size really keeps,
whatever the registry built (a transformer's attention maps grow with the square of the tokens; a convnet's
maps with the pixels). It is an upper estimate: fp32 activations (bf16 autocast keeps some in half), the
whole model trained (a frozen encoder keeps neither gradients nor optimizer state), the data not counted
(``study.data.stream`` keeps it on the device only when it fits in what is left). Untested on a GPU here.
"""

from __future__ import annotations

import functools
import math

import torch

STATE_BYTES_PER_PARAMETER = 20  # fp32 weights + gradients + three AdamW (amsgrad) buffers
OVERHEAD_BYTES = 1 << 30  # CUDA context (~0.5 GiB on recent drivers), workspaces, allocator slack
MIN_SHARE = 0.25  # study.orchestrate.cluster.SINGLE_WORKER_GPU_SHARE: 4 small trials per GPU measured best
SHARE_STEP = 0.25  # shares in quarters, so trials of different models still pack whole GPUs


@functools.lru_cache(maxsize=32)
def training_memory(model: str, variant: str, num_classes: int, height: int, width: int) -> tuple[int, int]:
    """(parameters, bytes one image's training forward pass saves for backward at height x width): see the
    module. The global RNG is left as it was (building draws random weights)."""
    from segmodels import build_model
    from segmodels.cost import count_parameters

    with torch.random.fork_rng(devices=[]):
        net = build_model(model, num_classes, "scratch", variant=variant)
    net.eval()  # saves what training saves, bar dropout masks, and takes one image (BatchNorm in train mode
    seen: dict[tuple[int, int], int] = {}  # cannot, after a global pooling)

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        net(torch.zeros(1, 3, height, width))
    weights = {(p.untyped_storage().data_ptr(), p.untyped_storage().nbytes()) for p in net.parameters()}
    return count_parameters(net), sum(nbytes for key, nbytes in seen.items() if key not in weights)


def estimate_peak_bytes(parameters: int, activations_per_image: int, batch_size: int) -> int:
    """The module's formula: model state, the batch's activations and the fixed overhead."""
    return STATE_BYTES_PER_PARAMETER * parameters + batch_size * activations_per_image + OVERHEAD_BYTES


def augment_bytes(batch_size: int, crop: tuple[int, int], stored_width: int) -> int:
    """The float32 temporaries ``study.augment.augment_batch`` holds at once for a batch of ``crop`` (height,
    width) crops from images stored ``stored_width`` wide: three row-gathered tensors at the stored width, then
    about eight crop-sized ones (column neighbours, the blend, the photometric HSV copies), 3 channels each."""
    return batch_size * 3 * 4 * crop[0] * (3 * stored_width + 8 * crop[1])


def gpu_share(peak_bytes: int, gpu_bytes: int) -> float:
    """The fraction of a GPU of ``gpu_bytes`` to ask for: the smallest multiple of ``SHARE_STEP`` holding
    ``peak_bytes``, at least ``MIN_SHARE`` and at most one whole GPU (a trial cannot span two)."""
    quarters = math.ceil(peak_bytes / gpu_bytes / SHARE_STEP - 1e-9)
    return min(1.0, max(MIN_SHARE, quarters * SHARE_STEP))
