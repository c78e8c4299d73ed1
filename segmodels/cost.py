"""What a model costs: parameters, and FLOPs per image counted by torch's own ``FlopCounterMode``.

Counted, not estimated: the counter sees every matmul and convolution that one forward (and, when asked,
backward) pass of the real model at the given size dispatches. The report's cost figure, ``summary.csv``'s
cost columns, the registry table (docs/models.md) and the benchmarks' MFU all read these two functions.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape, **kwargs) -> int:
    """A convolution's backward: one forward's FLOPs per gradient computed (input, weight). torch's own formula
    counts the weight gradient of a grouped convolution as if it were dense (a depthwise 3x3 over 64 channels
    came out at 65x its forward), which made SegFormer's Mix-FFN look twice as costly as it is."""
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed=transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


CUSTOM_FLOPS = {torch.ops.aten.convolution_backward: _conv_backward_flop}


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, image_size: tuple[int, int], batch_size: int = 2, backward: bool = False,
                device: torch.device | str = "cpu") -> float:
    """FLOPs per image of one forward (plus backward when ``backward``) pass at ``image_size`` (H, W).

    Runs the model once on zeros in fp32 (a batch of 2: BatchNorm in train mode needs more than one value
    per channel, e.g. after ASPP's global pooling); the model's mode and gradients are left as they were.
    """
    height, width = image_size
    images = torch.zeros(batch_size, 3, height, width, device=device)
    was_training = model.training
    model.train(backward)
    try:
        with FlopCounterMode(display=False, custom_mapping=CUSTOM_FLOPS) as counter:
            if backward:
                out = model(images)
                out.float().sum().backward()
            else:
                with torch.no_grad():
                    model(images)
    finally:
        if backward:
            model.zero_grad(set_to_none=True)
        model.train(was_training)
    return counter.get_total_flops() / batch_size
