"""A checkpoint must fit the config's model in train (load_from, --resume), test, demo and
export (issue 29): one shared check, errors naming the file and the tensors.

Independent references: checkpoints edited by hand (a tensor removed, one added, one of
another shape: their names are what the error must list), a truncated file, and the sha256
of every user file before and after.
"""
import hashlib
import os
import os.path as osp
import re

import pytest
import torch

from tests.conftest import REPO_ROOT, TINY_M2F, load_config_with_root, load_tool

TINY_PSF = osp.join(REPO_ROOT, 'configs', 'panoptic_segformer',
                    'panoptic-segformer_r18_synthetic.py')
NO_WORKERS = [f'{split}_dataloader.{key}' for split in ('train', 'val', 'test')
              for key in ('num_workers=0', 'persistent_workers=False')]
REMOVED = 'backbone.layer2.0.conv1.weight'
ADDED = 'panoptic_head.extra.weight'



@pytest.fixture(autouse=True)
def unformatted_config_dumps(monkeypatch):
    """The Runner yapf-formats the config it logs and dumps (most of a tiny run's start-up
    time); the runs here keep the text as it is."""
    import mmengine.config.config as config_module
    monkeypatch.setattr(config_module, 'FormatCode', lambda text, **kwargs: (text, False))

def sha256(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def _state(config, root, seed=0):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    cfg = load_config_with_root(config, root)
    torch.manual_seed(seed)
    return MODELS.build(cfg.model).state_dict()


@pytest.fixture(scope='module')
def m2f_state(synthetic_root):
    return _state(TINY_M2F, synthetic_root)


def _save(state, path, **extra):
    torch.save(dict(state_dict=state, meta=dict(epoch=0, iter=1), **extra), path)
    return str(path)


@pytest.fixture
def misfit(m2f_state, tmp_path):
    """A Mask2Former checkpoint with one tensor removed, one added, one of another shape."""
    state = dict(m2f_state)
    state.pop(REMOVED)
    state[ADDED] = torch.zeros(2)
    state['panoptic_head.query_feat.weight'] = torch.zeros(21, 64)
    return _save(state, tmp_path / 'misfit.pth')


def _assert_names_the_misfit(message, path):
    assert path in message
    assert REMOVED in message and ADDED in message
    assert re.search(r'panoptic_head\.query_feat\.weight: checkpoint \(21, 64\), model '
                     r'\(20, 64\)', message), message


def test_test_tool_refuses_a_checkpoint_that_does_not_fit(synthetic_env, misfit, tmp_path):
    before = sha256(misfit)
    test_tool = load_tool('tools/test.py')
    with pytest.raises(ValueError) as err:  # mmengine would load what fits and test
        test_tool.main([TINY_M2F, misfit, '--work-dir', str(tmp_path / 'w'),
                        '--cfg-options'] + NO_WORKERS)
    _assert_names_the_misfit(str(err.value), misfit)
    assert not osp.exists(tmp_path / 'w' / 'metrics.json')
    assert sha256(misfit) == before


def _imagenet_backbone(root, path):
    """ResNet-18 weights as ImageNet checkpoints hold them: with a classifier (fc) that the
    detector's backbone has no place for."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    cfg = load_config_with_root(TINY_M2F, root)
    backbone = MODELS.build(cfg.model.backbone).state_dict()
    backbone.update({'fc.weight': torch.zeros(1000, 512), 'fc.bias': torch.zeros(1000)})
    torch.save(dict(state_dict=backbone), path)
    return str(path)


def test_train_load_from_refuses_a_checkpoint_that_does_not_fit(synthetic_env, misfit,
                                                                tmp_path, monkeypatch):
    """The backbone's init_cfg=Pretrained load (before load_from, into the backbone, with
    ImageNet's classifier unexpected) is mmdet's business and passes; load_from is refused."""
    monkeypatch.setenv('MMMAPS_CACHE', str(tmp_path / 'cache'))
    imagenet = _imagenet_backbone(synthetic_env, tmp_path / 'imagenet.pth')
    before = {path: sha256(path) for path in (misfit, imagenet)}
    train = load_tool('tools/train.py')
    with pytest.raises(ValueError) as err:
        train.main([TINY_M2F, '--work-dir', str(tmp_path / 'w'), '--cfg-options',
                    f'load_from={misfit}', 'model.backbone.init_cfg._delete_=True',
                    'model.backbone.init_cfg.type=Pretrained',
                    f'model.backbone.init_cfg.checkpoint={imagenet}', 'train_cfg.max_iters=1',
                    'train_cfg.val_interval=10', 'train_dataloader.batch_size=2'] + NO_WORKERS)
    _assert_names_the_misfit(str(err.value), misfit)
    assert imagenet not in str(err.value)
    log = ''.join(open(osp.join(base, n)).read() for base, _, files in os.walk(tmp_path / 'w')
                  for n in files if n.endswith('.log'))
    assert f'load model from: {imagenet}' in log  # mmengine's line: the Pretrained load ran
    assert not osp.exists(tmp_path / 'w' / 'iter_1.pth')
    assert {path: sha256(path) for path in before} == before


def test_demo_refuses_a_panoptic_segformer_checkpoint_that_does_not_fit(synthetic_env,
                                                                       tmp_path):
    state = _state(TINY_PSF, synthetic_env)
    name = next(k for k in state if k.startswith('bbox_head.') and k.endswith('.weight'))
    state[name] = torch.zeros(tuple(state[name].shape[:-1]) + (state[name].shape[-1] + 1,))
    ckpt = _save(state, tmp_path / 'psf.pth')
    before = sha256(ckpt)
    image = osp.join(synthetic_env, 'val', sorted(os.listdir(osp.join(synthetic_env, 'val')))[0])
    demo = load_tool('demo/image_demo.py')
    with pytest.raises(ValueError) as err:
        demo.main([image, TINY_PSF, ckpt, '--out-file', str(tmp_path / 'out.png'),
                   '--device', 'cpu'])
    message = str(err.value)
    assert ckpt in message and f'{name}: checkpoint' in message, message
    assert not osp.exists(tmp_path / 'out.png')
    assert sha256(ckpt) == before
    # export refuses with the same error class
    from mmmaps.deployment import CheckpointMismatchError as ExportError
    from mmmaps.utils.checkpoint_fit import CheckpointMismatchError
    assert ExportError is CheckpointMismatchError and isinstance(err.value, ExportError)


def test_resume_from_a_state_of_another_run_is_named(synthetic_env, m2f_state, tmp_path,
                                                     monkeypatch):
    """Weights that fit, but an optimizer state of another parameter grouping (what a
    checkpoint of another config brings): mmengine's bare param-group ValueError before."""
    monkeypatch.setenv('MMMAPS_CACHE', str(tmp_path / 'cache'))
    other = _save(dict(m2f_state), tmp_path / 'other_run.pth',
                  message_hub=dict(log_scalars={}, runtime_info={}, resumed_keys={}),
                  optimizer=dict(state={}, param_groups=[dict(lr=0.1, params=[0])]))
    weights_only = str(tmp_path / 'weights_only.pth')
    torch.save(dict(state_dict=dict(m2f_state)), weights_only)
    train = load_tool('tools/train.py')
    for ckpt in (other, weights_only):
        before = sha256(ckpt)
        with pytest.raises(ValueError) as err:
            train.main([TINY_M2F, '--work-dir', str(tmp_path / 'w'), '--resume', ckpt,
                        '--cfg-options', 'train_cfg.max_iters=1',
                        'train_dataloader.batch_size=2'] + NO_WORKERS)
        message = str(err.value)
        assert message.startswith(f'{ckpt}: --resume cannot continue'), message
        assert 'load_from' in message
        assert sha256(ckpt) == before


def test_unreadable_checkpoints_name_their_file(synthetic_env, m2f_state, tmp_path):
    good = _save(dict(m2f_state), tmp_path / 'good.pth')
    with open(good, 'rb') as f:
        data = f.read()
    files = {'truncated.pth': data[:len(data) // 2], 'empty.pth': b'',
             'notes.pth': b'these are my notes, not a checkpoint\n'}
    from mmmaps.utils.checkpoint_loading import UnreadableCheckpointError, safe_torch_load
    for name, content in files.items():
        path = str(tmp_path / name)
        with open(path, 'wb') as f:
            f.write(content)
        with pytest.raises(UnreadableCheckpointError,
                           match=re.escape(path) + ': cannot read the checkpoint: the file is '
                           'truncated or not a PyTorch checkpoint'):
            safe_torch_load(path)
    truncated = str(tmp_path / 'truncated.pth')
    before = sha256(truncated)
    test_tool = load_tool('tools/test.py')
    with pytest.raises(ValueError, match=re.escape(truncated) + ': cannot read'):
        test_tool.main([TINY_M2F, truncated, '--work-dir', str(tmp_path / 'w'),
                        '--cfg-options'] + NO_WORKERS)
    assert sha256(truncated) == before
