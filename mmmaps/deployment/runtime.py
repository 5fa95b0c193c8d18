"""onnxruntime inference of an export folder, with the project's own pre/post-processing.

:class:`ONNXRuntimePanopticModel` is an mmengine model (registered in mmdet's ``MODELS``)
that owns no network: its ``predict`` runs

1. the config's data preprocessor (normalise, pad; built from the config, no weights),
2. for MAPS, the memory's retrieval (:class:`~mmmaps.memory.ExternalMemory`, the same bank
   format, search and leak policy as training and ``tools/test.py``) with the exported
   key encoder (:class:`ONNXKeyEncoder`),
3. ``model.onnx`` in onnxruntime,
4. the masks' upsampling to the padded input (as the heads' ``predict``) and the
   config's fusion head (mmdet's MaskFormer rule or mask-wise merging; no weights).

No detector is built and no checkpoint is read. ``tools/test.py CONFIG EXPORT_DIR
--backend onnxruntime`` runs it in the usual Runner (same evaluators, hooks and output
files), :class:`ONNXPanopticPredictor` on single images (``tools/deployment/
onnx_demo.py``).
"""
import copy
import os.path as osp
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.logging import MMLogger, print_log
from mmengine.model import BaseModel
from torch import Tensor

from mmdet.registry import MODELS
from mmdet.structures import SampleList

from ..memory.encoders.base import resize_center_crop
from ..memory.external_memory import shows_whole_picture
from ..memory.storage import MemoryBankError
from ..models.detectors.maps import unnormalized_images
from ..models.seg_heads.mask_wise_merging_head import MaskWiseMergingFusionHead
from ..models.utils import add_fusion_results
from .deformable_attention import MMDEPLOY_OP
from .errors import DeploymentError, require_onnx
from .export import CONFIG_PY, MODEL_ONNX, read_export

# model settings the runtime applies itself (outside the graph); all others are in it
RUNTIME_MODEL_KEYS = ('type', 'data_preprocessor', 'panoptic_fusion_head', 'test_cfg',
                      'train_cfg', 'init_cfg')
# test_cfg keys that shape the Panoptic SegFormer graph (fixed at export)
GRAPH_TEST_CFG_KEYS = ('mask_decoder_layer', 'max_per_image')


def _session(path: str, num_threads: Optional[int]):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if num_threads:
        options.intra_op_num_threads = int(num_threads)
    return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])


class ONNXKeyEncoder:
    """The exported key encoder of a MAPS memory, usable where
    :class:`~mmmaps.memory.ExternalMemory` expects its frozen key encoder.

    ``__call__(images)``: RGB (3, H, W) tensors on the 0-255 scale -> (B, D) float32
    L2-normalised keys; the crop (short side -> S bicubic, central S x S) runs in PyTorch
    as in the encoder, the rest in onnxruntime.

    Args:
        path (str): ``key_encoder.onnx``.
        description (dict): The encoder's ``describe()`` recorded at export (the memory
            checks it against the encoder its banks were built with).
        image_size (int): S.
    """

    device = torch.device('cpu')

    def __init__(self, path: str, description: dict, image_size: int,
                 num_threads: Optional[int] = None):
        self.path = path
        self.session = _session(path, num_threads)
        self.description = dict(description)
        self.image_size = int(image_size)
        self.out_channels = int(description.get('out_channels', 0))

    def describe(self) -> dict:
        return dict(self.description)

    def to(self, device) -> 'ONNXKeyEncoder':
        return self  # onnxruntime on the CPU; keys are moved by the caller

    def __call__(self, images: Sequence[Tensor]) -> Tensor:
        if not len(images):
            return torch.zeros(0, self.out_channels)
        crops = torch.stack([resize_center_crop(image.detach().float().cpu(), self.image_size)
                             for image in images])
        keys, = self.session.run(['keys'], {'crops': crops.numpy()})
        return torch.from_numpy(keys)


def _strip(model_cfg: dict) -> dict:
    return {k: v for k, v in model_cfg.items() if k not in RUNTIME_MODEL_KEYS}


def _plain(value):
    return value.to_dict() if hasattr(value, 'to_dict') else copy.deepcopy(value)


def onnx_model_config(cfg: Config, export_dir: str, num_threads: Optional[int] = None) -> dict:
    """``cfg.model`` for running the export in ``export_dir`` with ``cfg``'s pre- and
    post-processing (data preprocessor, fusion head, ``test_cfg``).

    Raises DeploymentError when ``cfg``'s network is not the exported one (any model
    setting other than those is compared with the export's ``config.py``)."""
    info = read_export(export_dir)
    exported = Config.fromfile(osp.join(export_dir, CONFIG_PY))
    mine, theirs = _plain(cfg.model), _plain(exported.model)
    if _strip(mine) != _strip(theirs):
        differing = sorted(k for k in set(_strip(mine)) | set(_strip(theirs))
                           if _strip(mine).get(k) != _strip(theirs).get(k))
        raise DeploymentError(
            f'the model of the config differs from the one exported to {export_dir} '
            f'(exported from {info.get("config")}) in model.{", model.".join(differing)}; '
            'use the config the export was made from, or export again')
    if info['family'] == 'panoptic_segformer':
        test_cfg, exported_test_cfg = mine.get('test_cfg') or {}, theirs.get('test_cfg') or {}
        changed = [k for k in GRAPH_TEST_CFG_KEYS
                   if test_cfg.get(k) != exported_test_cfg.get(k)]
        if changed:
            raise DeploymentError(f'test_cfg.{", test_cfg.".join(changed)} shape the exported '
                                  f'graph ({export_dir}); export again to change them')
        wants_stuff = test_cfg.get('panoptic_on', True) or test_cfg.get('semantic_on', False)
        if wants_stuff and not info.get('with_stuff', True):
            raise DeploymentError(f'{export_dir} was exported without the stuff queries '
                                  '(instance mode); panoptic/semantic output needs them: '
                                  'export again with panoptic_on=True')
    return dict(type='ONNXRuntimePanopticModel', export_dir=osp.abspath(export_dir),
                data_preprocessor=mine.get('data_preprocessor'),
                panoptic_fusion_head=mine.get('panoptic_fusion_head'),
                test_cfg=mine.get('test_cfg'), num_threads=num_threads)


@MODELS.register_module()
class ONNXRuntimePanopticModel(BaseModel):
    """An exported Mask2Former, MAPS or Panoptic SegFormer run by onnxruntime.

    Args:
        export_dir (str): Folder written by ``tools/deployment/export_onnx.py``.
        data_preprocessor (dict): The config's data preprocessor.
        panoptic_fusion_head (dict): The config's fusion head (``test_cfg`` is added).
        test_cfg (dict): The config's ``model.test_cfg``.
        num_threads (int, optional): onnxruntime intra-op threads (default: all cores).

    ``predict`` returns the samples with ``pred_panoptic_seg`` / ``pred_instances`` /
    ``pred_sem_seg`` as the PyTorch model does; MAPS predictions also carry
    ``metainfo['retrieval']`` (ids, scores, masks and keys; no values).
    """

    def __init__(self, export_dir: str, data_preprocessor: dict,
                 panoptic_fusion_head: dict, test_cfg: Optional[dict] = None,
                 num_threads: Optional[int] = None, init_cfg=None):
        require_onnx('running an ONNX export', modules=('onnxruntime', ))
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.export_dir = osp.abspath(export_dir)
        self.info = read_export(self.export_dir)
        self.family = self.info['family']
        if self.info.get('deformable_attention') == 'mmdeploy':
            raise DeploymentError(
                f'{self.export_dir} was exported for TensorRT (--deformable-attention mmdeploy: '
                f'its deformable attention is {MMDEPLOY_OP}, a node of mmdeploy\'s TensorRT '
                'plugin); onnxruntime has no kernel for it. Build a TensorRT engine with '
                'mmdeploy\'s plugin (docs/en/user_guides/deployment.md, "TensorRT"), or export '
                'again with --deformable-attention gather to run it here.')
        self.session = _session(osp.join(self.export_dir, MODEL_ONNX), num_threads)
        self.num_threads = num_threads
        self.input_specs = {spec['name']: spec for spec in self.info['inputs']}
        self.test_cfg = copy.deepcopy(test_cfg)
        fusion = copy.deepcopy(panoptic_fusion_head)
        fusion.update(test_cfg=self.test_cfg)
        self.panoptic_fusion_head = MODELS.build(fusion)
        self.memory = None
        self._warned_padding = False

    # ------------------------------------------------------------------ memory (MAPS)
    @property
    def memory_spec(self) -> Optional[dict]:
        return self.info.get('memory')

    @property
    def needs_memory(self) -> bool:
        spec = self.memory_spec
        return bool(spec and (spec['reads_scene'] or spec['reads_objects']))

    @property
    def exported_checkpoint_meta(self) -> dict:
        """The meta of the exported checkpoint that concerns the memory (what
        ``MemoryHook`` compares a memory with, as for a loaded checkpoint)."""
        trained_with = (self.memory_spec or {}).get('trained_with')
        return dict(memory=trained_with) if trained_with else {}

    def memory_key_encoder(self) -> ONNXKeyEncoder:
        """The exported key encoder (``MemoryHook`` builds the memory with it)."""
        if 'key_encoder' not in self.info:
            raise DeploymentError(f'{self.export_dir} holds no key encoder: the exported model '
                                  'reads no memory')
        spec = self.info['key_encoder']
        return ONNXKeyEncoder(osp.join(self.export_dir, spec['file']), spec['describe'],
                              spec['image_size'], self.num_threads)

    def attach_memory(self, memory) -> None:
        """Read ``memory`` from now on; its value dims must be the exported graph's."""
        spec = self.memory_spec
        if spec is None:
            raise DeploymentError(f'{self.export_dir} is a {self.family} export; it reads no '
                                  'memory')
        try:
            memory.check_fits(scene_dim=spec['scene_dims'] if spec['reads_scene'] else None,
                              object_dim=spec['object_dims'] if spec['reads_objects'] else None)
        except MemoryBankError as err:
            raise DeploymentError(
                f'the memory does not fit the exported MAPS graph {self.export_dir}/'
                f'{MODEL_ONNX} (scene values {spec["scene_dims"]}-d, object values '
                f'{spec["object_dims"]}-d): {err}') from None
        self.memory = memory

    def _memory_feeds(self, inputs: Tensor, samples: SampleList) -> Dict[str, np.ndarray]:
        if not self.needs_memory:
            return {}
        if self.memory is None:
            raise DeploymentError('the exported MAPS model has no memory attached: run it '
                                  'through tools/test.py (MemoryHook) or ONNXPanopticPredictor')
        spec = self.memory_spec
        result = self.memory.retrieve(
            unnormalized_images(inputs, samples, self.data_preprocessor),
            [sample.metainfo.get('img_path') for sample in samples], training=False,
            with_objects=spec['reads_objects'],
            whole_pictures=[shows_whole_picture(sample.metainfo) for sample in samples])
        for index, sample in enumerate(samples):
            sample.set_metainfo(dict(retrieval=result.select(index).without_values()))
        tensors = dict(scene=result.scene_values, scene_mask=result.scene_mask,
                       objects=result.object_values, object_mask=result.object_mask,
                       query_keys=result.query_keys)
        feeds = {}
        for name in self.input_specs:
            if name == 'inputs':
                continue
            if tensors.get(name) is None:
                raise DeploymentError(f'the retrieval gave no {name!r}, which {MODEL_ONNX} takes')
            feeds[name] = tensors[name].detach().cpu().numpy()
            dtype = self.input_specs[name]['dtype']
            feeds[name] = feeds[name].astype(dtype)
        return feeds

    # ------------------------------------------------------------------ forward
    def forward(self, inputs: Tensor, data_samples: SampleList = None, mode: str = 'predict'):
        if mode != 'predict':
            raise DeploymentError(f'an ONNX export only predicts (mode {mode!r} asked)')
        return self.predict(inputs, data_samples)

    def _fit_to_graph(self, inputs: Tensor, samples: SampleList) -> Tensor:
        """Pad the batch to the exported fixed (H, W); refuse larger images."""
        shape = self.input_specs['inputs']['shape']
        height, width = shape[2], shape[3]
        if not (isinstance(height, int) and isinstance(width, int)):
            return inputs  # dynamic height and width
        have = tuple(inputs.shape[-2:])
        if have == (height, width):
            return inputs
        if have[0] > height or have[1] > width:
            raise DeploymentError(
                f'a batch padded to {have[0]}x{have[1]} does not fit the fixed input '
                f'{height}x{width} of {self.export_dir}/{MODEL_ONNX}; export with a larger '
                '--shape, or with --dynamic')
        if not self._warned_padding:
            self._warned_padding = True
            masked = self.family == 'panoptic_segformer'
            print_log(
                f'the exported graph has a fixed {height}x{width} input: images padded to '
                f'{have[0]}x{have[1]} by the data preprocessor are padded further to it'
                + (' (Panoptic SegFormer masks the padding).' if masked else
                   f'; {self.family} does not mask padding, so results can differ from the '
                   'PyTorch model\'s. Export with --dynamic for the same padding.'),
                logger='current', level=30)
        for sample in samples:
            sample.set_metainfo(dict(batch_input_shape=(height, width),
                                     pad_shape=(height, width)))
        return F.pad(inputs, (0, width - have[1], 0, height - have[0]), value=0)

    def _run_graph(self, inputs: Tensor, samples: SampleList,
                   feeds: Dict[str, np.ndarray]) -> List[np.ndarray]:
        if self.family == 'panoptic_segformer':
            feeds['img_shape'] = np.array([sample.metainfo['img_shape'][:2] for sample in samples],
                                          dtype=np.int64)
        batch = self.input_specs['inputs']['shape'][0]
        images = inputs.detach().cpu().float().numpy()
        if not isinstance(batch, int) or batch == len(images):
            return self.session.run(['cls_logits', 'mask_logits'], dict(feeds, inputs=images))
        outputs = [self.session.run(['cls_logits', 'mask_logits'],
                                    dict({k: v[i:i + 1] for k, v in feeds.items()},
                                         inputs=images[i:i + 1]))
                   for i in range(len(images))]  # a fixed batch of 1: one image per run
        return [np.concatenate(part) for part in zip(*outputs)]

    def predict(self, inputs: Tensor, data_samples: SampleList,
                rescale: bool = True) -> SampleList:
        feeds = self._memory_feeds(inputs, data_samples)
        inputs = self._fit_to_graph(inputs, data_samples)
        cls_logits, mask_logits = self._run_graph(inputs, data_samples, feeds)
        device = inputs.device
        masks = torch.from_numpy(mask_logits).to(device)
        if not isinstance(self.panoptic_fusion_head, MaskWiseMergingFusionHead):
            # mmdet's fusion head crops masks of the padded input, as mmdet's heads give it
            masks = F.interpolate(masks, size=tuple(inputs.shape[-2:]), mode='bilinear',
                                  align_corners=False)
        results = self.panoptic_fusion_head.predict(torch.from_numpy(cls_logits).to(device),
                                                    masks, data_samples, rescale=rescale)
        return add_fusion_results(data_samples, results)

    def _forward(self, *args, **kwargs):
        raise DeploymentError('an ONNX export only predicts')

    def loss(self, *args, **kwargs):
        raise DeploymentError('an ONNX export cannot be trained')


class ONNXPanopticPredictor:
    """Single-image panoptic inference of an export folder (what ``demo/image_demo.py``
    does with a checkpoint, without building the model).

    Args:
        export_dir (str): Folder written by ``tools/deployment/export_onnx.py``.
        memory_root (str, optional): MAPS memory directory (default ``memory.root`` of
            the exported config); built with the exported key encoder and checked against
            the memory the checkpoint was trained with, as ``tools/test.py`` does.
        cfg_options (dict, optional): Overrides of the exported config (post-processing).
        num_threads (int, optional): onnxruntime threads.

    ``predictor(image)`` (a file path or an array) returns a ``DetDataSample``.
    """

    def __init__(self, export_dir: str, memory_root: Optional[str] = None,
                 cfg_options: Optional[dict] = None, num_threads: Optional[int] = None):
        from ..apis.inference import dataset_meta_of
        from ..memory.checkpoint_meta import check_checkpoint_memory
        from ..memory.external_memory import build_external_memory
        from mmdet.utils import register_all_modules
        register_all_modules()  # mmdet's scope, as mmdet's init_detector sets it
        read_export(export_dir)
        cfg = Config.fromfile(osp.join(export_dir, CONFIG_PY))
        if cfg_options:
            cfg.merge_from_dict(cfg_options)
        self.cfg = cfg
        self.model = MODELS.build(onnx_model_config(cfg, export_dir, num_threads))
        self.model.cfg = cfg
        self.model.dataset_meta = dataset_meta_of(cfg)
        if self.model.needs_memory:
            memory = build_external_memory(cfg.memory, root=memory_root, device='cpu',
                                           key_encoder=self.model.memory_key_encoder())
            self.model.attach_memory(memory)
            check_checkpoint_memory(memory, dict(meta=self.model.exported_checkpoint_meta),
                                    memory_swap=memory_root is not None,
                                    logger=MMLogger.get_current_instance())

    @property
    def dataset_meta(self) -> dict:
        return self.model.dataset_meta

    @property
    def memory(self):
        return self.model.memory

    def __call__(self, image):
        from ..apis.inference import inference_panoptic
        with torch.no_grad():
            return inference_panoptic(self.model, image)
