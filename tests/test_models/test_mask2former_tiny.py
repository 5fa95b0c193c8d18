import subprocess
import sys

import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate

from mmdet.registry import DATASETS, MODELS
from mmdet.utils import register_all_modules
from tests.conftest import REPO_ROOT, TINY_M2F


def test_builds_in_a_fresh_interpreter():
    code = (
        'import mmmaps\n'
        'from mmengine.config import Config\n'
        'from mmdet.registry import MODELS\n'
        'from mmdet.utils import register_all_modules\n'
        'register_all_modules()\n'
        f'cfg = Config.fromfile({TINY_M2F!r})\n'
        'model = MODELS.build(cfg.model)\n'
        'print(type(model).__name__, sum(p.numel() for p in model.parameters()))\n')
    out = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    name, params = out.stdout.split()[-2:]
    assert name == 'Mask2Former' and 5e6 < int(params) < 2e7


def _tiny_model_and_batch(batch_size=2):
    import mmmaps  # noqa: F401
    register_all_modules()
    cfg = Config.fromfile(TINY_M2F)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    batch = pseudo_collate([dataset[i] for i in range(batch_size)])
    return model, batch, cfg


def test_forward_backward(synthetic_env):
    model, batch, _ = _tiny_model_and_batch()
    model.train()
    data = model.data_preprocessor(batch, True)
    losses = model(**data, mode='loss')
    assert {'loss_cls', 'loss_mask', 'loss_dice', 'd0.loss_cls'} <= set(losses)
    total = sum(v for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in model.panoptic_head.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert model.backbone.conv1.weight.grad is not None


def test_predict_gives_panoptic_instances_at_original_size(synthetic_env):
    import mmmaps  # noqa: F401
    register_all_modules()
    cfg = Config.fromfile(TINY_M2F)
    model = MODELS.build(cfg.model)
    model.eval()
    dataset = DATASETS.build(cfg.val_dataloader.dataset)
    batch = pseudo_collate([dataset[0]])
    with torch.no_grad():
        data = model.data_preprocessor(batch, False)
        results = model(**data, mode='predict')
    ori_h, ori_w = results[0].ori_shape
    pan = results[0].pred_panoptic_seg.sem_seg
    assert pan.shape == (1, ori_h, ori_w)
    assert 'masks' in results[0].pred_instances
