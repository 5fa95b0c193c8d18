"""The tensor-in, tensor-out networks that are exported to ONNX.

Each graph runs a built mmmaps/mmdet model from the normalised, padded image to the
per-query class logits and mask logits its fusion head reads, with everything that the
PyTorch model takes from data samples (image sizes, the retrieved memory) as explicit
tensor inputs. The masks stay at the resolution the head predicts them (1/4 for
Mask2Former/MAPS, the first encoder level for Panoptic SegFormer: 1/8 with C3-C5); the
runtime upsamples them to the padded input as the heads' ``predict`` does (bilinear,
``align_corners=False``), which keeps the graph's output Q x H/4 x W/4, not Q x H x W.

Graph inputs and outputs (B images, Q queries, C classes, padded input H x W):

- :class:`Mask2FormerGraph` (Mask2Former, MAPS): ``inputs`` (B, 3, H, W) float32; MAPS
  adds ``scene`` (B, K_s, C_s) float32, ``scene_mask`` (B, K_s) bool, ``objects``
  (B, K_o, C_o) float32, ``object_mask`` (B, K_o) bool (True = padded slot), and
  ``query_keys`` (B, C_s) with ``aug_cls``. Outputs ``cls_logits`` (B, Q, C + 1) and
  ``mask_logits`` (B, Q, H/4, W/4).
- :class:`PanopticSegFormerGraph`: ``inputs`` and ``img_shape`` (B, 2) int64, the
  valid (h, w) of each padded image. Outputs ``cls_logits`` (B, Q + S, C) (-inf where a
  query cannot predict a class) and ``mask_logits`` (B, Q + S, H/s, W/s).
- :class:`KeyEncoderGraph` (MAPS' frozen key encoder): ``crops`` (B, 3, S, S) float32 RGB
  on the 0-255 scale (short side resized to S and centre-cropped by the runtime) ->
  ``keys`` (B, D) L2-normalised.
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from mmdet.structures import DetDataSample

from ..memory.encoders import GlobalMemoryEncoder
from ..models.dense_heads.maps_head import MAPSMask2FormerHead, MemoryInputs
from ..models.detectors.panoptic_segformer import PanopticSegFormer
from .errors import DeploymentError

MEMORY_INPUTS = ('scene', 'scene_mask', 'objects', 'object_mask')


def _shape_samples(inputs: Tensor) -> List[DetDataSample]:
    """Data samples that say only 'these images fill the padded batch'."""
    shape = tuple(int(s) for s in inputs.shape[-2:])
    return [DetDataSample(metainfo=dict(batch_input_shape=shape, img_shape=shape))
            for _ in range(inputs.shape[0])]


def model_family(model: nn.Module) -> str:
    """'mask2former', 'maps' or 'panoptic_segformer' (what can be exported)."""
    from mmdet.models.detectors import Mask2Former
    if isinstance(model, PanopticSegFormer):
        return 'panoptic_segformer'
    if isinstance(model, Mask2Former):
        head = model.panoptic_head
        if isinstance(head, MAPSMask2FormerHead):
            return 'maps'
        return 'mask2former'
    raise TypeError(f'{type(model).__name__} cannot be exported: the ONNX export covers '
                    'Mask2Former, MAPS and PanopticSegFormer models')


class Mask2FormerGraph(nn.Module):
    """Mask2Former / MAPS from the image (and, MAPS, the retrieved memory) to the last
    decoder layer's class and mask logits.

    Args:
        model: A built ``Mask2Former`` or ``MAPS`` in eval mode.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        head = model.panoptic_head
        self.is_maps = isinstance(head, MAPSMask2FormerHead)
        if self.is_maps and head.learned_memory is not None:
            raise DeploymentError('a MAPS head with learned_memory (the capacity control of '
                                  'benchmarks/maps_evidence.py) is not exported')
        self.reads_scene = self.is_maps and head.reads_scene
        self.reads_objects = self.is_maps and head.reads_objects
        self.aug_cls = self.is_maps and head.reads_scene and head.aug_cls
        self.needs_memory = self.reads_scene or self.reads_objects

    @property
    def input_names(self) -> List[str]:
        names = ['inputs']
        if self.reads_scene:
            names += ['scene', 'scene_mask']
        if self.reads_objects:
            names += ['objects', 'object_mask']
        if self.aug_cls:
            names.append('query_keys')
        return names

    def forward(self, inputs: Tensor, *memory: Tensor) -> Tuple[Tensor, Tensor]:
        named = dict(zip(self.input_names[1:], memory))
        if len(named) != len(memory):
            raise ValueError(f'expected inputs {self.input_names}, got {1 + len(memory)}')
        feats = self.model.extract_feat(inputs)
        head = self.model.panoptic_head
        if self.is_maps:
            memory_inputs = MemoryInputs(
                scene=named.get('scene'), scene_mask=named.get('scene_mask'),
                objects=named.get('objects'), object_mask=named.get('object_mask'),
                query_keys=named.get('query_keys')) if named else None
            cls_logits, mask_logits = head.forward_with_memory(feats, memory_inputs)
        else:
            cls_logits, mask_logits = head(feats, _shape_samples(inputs))
        return cls_logits[-1], mask_logits[-1]


class PanopticSegFormerGraph(nn.Module):
    """Panoptic SegFormer from the image and its valid size to the mask decoder's class
    logits and masks (thing queries, then stuff queries; ``test_cfg`` decides the layer
    and the query filter, as in ``predict``).

    Args:
        model: A built ``PanopticSegFormer`` in eval mode.
        with_stuff (bool): Run the stuff queries (panoptic/semantic output).
    """

    input_names = ['inputs', 'img_shape']

    def __init__(self, model: PanopticSegFormer, with_stuff: bool = True):
        super().__init__()
        self.model = model
        self.with_stuff = with_stuff

    @staticmethod
    def padding_mask(inputs: Tensor, img_shape: Tensor) -> Tensor:
        """(B, H, W) bool, True outside each image's valid (h, w) top-left region."""
        height, width = inputs.shape[-2:]
        rows = torch.arange(height, device=inputs.device)[None, :, None]
        cols = torch.arange(width, device=inputs.device)[None, None, :]
        return (rows >= img_shape[:, 0, None, None]) | (cols >= img_shape[:, 1, None, None])

    def forward(self, inputs: Tensor, img_shape: Tensor) -> Tuple[Tensor, Tensor]:
        model = self.model
        samples = _shape_samples(inputs)
        feats = model.extract_feat(inputs)
        head_inputs = model.forward_transformer(
            feats, samples, padding_mask=self.padding_mask(inputs, img_shape))
        head = model.bbox_head
        last = head.forward_tensors(**head_inputs, batch_data_samples=samples,
                                    with_stuff=self.with_stuff)[-1]
        masks = last['thing_masks']
        if 'stuff_masks' in last:
            masks = torch.cat([masks, last['stuff_masks']], dim=1)
        return head.class_logits(last), masks


class KeyEncoderGraph(nn.Module):
    """A MAPS memory's frozen key encoder from its 0-255 crops to L2-normalised keys.

    Args:
        encoder (GlobalMemoryEncoder): e.g. ``CLIPCLSEncoder``.
    """

    input_names = ['crops']

    def __init__(self, encoder: GlobalMemoryEncoder):
        super().__init__()
        if not isinstance(encoder, GlobalMemoryEncoder):
            raise TypeError(f'the key encoder must be a GlobalMemoryEncoder, got '
                            f'{type(encoder).__name__}')
        self.encoder = encoder

    def forward(self, crops: Tensor) -> Tensor:
        return self.encoder.embed_crops(crops)


def memory_example(graph: Mask2FormerGraph, batch: int, scene_slots: int,
                   object_slots: int, generator: Optional[torch.Generator] = None
                   ) -> List[Tensor]:
    """Example memory inputs of a MAPS graph (random unit vectors, the last slot of each
    memory padded) in ``graph.input_names[1:]`` order."""
    head = graph.model.panoptic_head
    tensors = []
    for name in graph.input_names[1:]:
        if name == 'scene':
            values = torch.randn(batch, scene_slots, head.scene_memory_dims,
                                 generator=generator)
            tensors.append(nn.functional.normalize(values, dim=-1))
        elif name == 'objects':
            values = torch.randn(batch, object_slots, head.object_memory_dims,
                                 generator=generator)
            tensors.append(nn.functional.normalize(values, dim=-1))
        elif name in ('scene_mask', 'object_mask'):
            slots = scene_slots if name == 'scene_mask' else object_slots
            mask = torch.zeros(batch, slots, dtype=torch.bool)
            mask[:, -1] = slots > 1
            tensors.append(mask)
        elif name == 'query_keys':
            tensors.append(nn.functional.normalize(
                torch.randn(batch, head.scene_memory_dims, generator=generator), dim=-1))
    return tensors
