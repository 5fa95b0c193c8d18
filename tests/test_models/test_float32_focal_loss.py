"""Float32FocalLoss: Panoptic SegFormer's classification losses under bf16 AMP.

On the GPU, mmdet's FocalLoss calls mmcv's CUDA sigmoid focal loss kernel, which has no
bfloat16 dispatch (the H200 acceptance run of 2026-12-04 stopped there). The CPU takes
mmdet's PyTorch path, which accepts bfloat16, so these tests stand a strict stand-in for the
kernel in that path (float32 only, as the kernel's dispatch) and check the values against
torchvision's sigmoid_focal_loss."""
import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

import mmdet.models.losses.focal_loss as mmdet_focal
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules

import mmmaps  # noqa: F401  (registers Float32FocalLoss)
from .test_panoptic_segformer import build_psf, train_batch
from .test_panoptic_segformer_release import build_release

FOCAL = dict(use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=2.0)


@pytest.fixture
def float32_only_kernel(monkeypatch):
    """mmdet's PyTorch focal loss, refusing what mmcv's CUDA kernel refuses."""
    calls = []
    reference = mmdet_focal.py_sigmoid_focal_loss

    def strict(pred, target, *args, **kwargs):
        if pred.dtype not in (torch.float32, torch.float64, torch.float16):
            raise NotImplementedError(
                f'"sigmoid_focal_loss_forward_cuda_kernel" not implemented for {pred.dtype}')
        calls.append(pred.dtype)
        return reference(pred, target, *args, **kwargs)

    monkeypatch.setattr(mmdet_focal, 'py_sigmoid_focal_loss', strict)
    return calls


def test_bf16_logits_give_torchvisions_focal_loss(float32_only_kernel):
    register_all_modules()
    torch.manual_seed(0)
    logits = (torch.randn(12, 5) * 3).to(torch.bfloat16).requires_grad_()
    labels = torch.tensor([0, 4, 5, 5, 2, 1, 5, 3, 5, 0, 4, 5])  # 5: background
    with pytest.raises(NotImplementedError, match='bfloat16'):  # what the H200 hit
        MODELS.build(dict(type='FocalLoss', **FOCAL))(logits, labels, avg_factor=7.0)
    loss = MODELS.build(dict(type='Float32FocalLoss', **FOCAL))(logits, labels,
                                                                 avg_factor=7.0)
    onehot = torch.nn.functional.one_hot(labels, 6)[:, :5].float()
    expected = 2.0 * sigmoid_focal_loss(logits.detach().float(), onehot, alpha=0.25, gamma=2.0,
                                        reduction='sum') / 7.0
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert logits.grad.dtype == torch.bfloat16 and logits.grad.abs().sum() > 0
    # per-prediction weights of a reduced dtype are taken in float32 as well
    weight = torch.rand(12).to(torch.bfloat16)
    weighted = MODELS.build(dict(type='Float32FocalLoss', **FOCAL))(
        logits.detach(), labels, weight=weight, avg_factor=7.0)
    per_item = sigmoid_focal_loss(logits.detach().float(), onehot, alpha=0.25, gamma=2.0,
                                  reduction='none').sum(1)
    assert weighted.item() == pytest.approx(
        (2.0 * (per_item * weight.float()).sum() / 7.0).item(), rel=1e-5)


@pytest.mark.parametrize('builder', [build_psf, build_release], ids=['paper', 'release'])
def test_psf_trains_a_bf16_step_with_a_float32_only_focal_kernel(synthetic_root, builder,
                                                                 float32_only_kernel):
    """Every focal loss of both Panoptic SegFormer configs (location decoder, mask decoder,
    stuff queries) reaches the kernel in float32 under bf16 autocast."""
    model, cfg = builder(synthetic_root)
    data = train_batch(model, cfg)
    model.train()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        losses = model(**data, mode='loss')
    total = sum(v for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(total)
    total.backward()
    assert float32_only_kernel and set(float32_only_kernel) == {torch.float32}
