"""mmdet's sigmoid focal loss, computed in float32 whatever the autocast dtype."""
from mmdet.models.losses import FocalLoss
from mmdet.registry import MODELS


@MODELS.register_module()
class Float32FocalLoss(FocalLoss):
    """mmdet's ``FocalLoss`` (same arguments) on float32 logits.

    Under bf16 AMP on a GPU the logits reach the loss in bfloat16, and mmcv's CUDA sigmoid
    focal loss kernel has no bfloat16 dispatch: Panoptic SegFormer's first bf16 training
    step on an H200 stopped with ``"sigmoid_focal_loss_forward_cuda_kernel" not implemented
    for 'BFloat16'`` (benchmarks/results/gpu_acceptance_2026-12-04.md). The logits are cast
    to float32 before the loss, as autocast itself runs its losses; the cast is
    differentiable, so the gradient flows back in the logits' dtype. fp16 and float32
    training compute exactly what ``FocalLoss`` does.

    Args: as ``FocalLoss``. forward: ``pred`` (N, C) logits of any floating dtype,
    ``target`` (N,) labels in [0, C] (C: background) or (N, C) one-hot, ``weight`` (N,) or
    (N, C); returns the loss in float32.
    """

    def forward(self, pred, target, weight=None, avg_factor=None, reduction_override=None):
        if weight is not None and weight.is_floating_point():
            weight = weight.float()
        return super().forward(pred.float(), target, weight, avg_factor, reduction_override)
