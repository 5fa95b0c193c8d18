"""MAPS: Mask2Former whose queries read a retrieved scene and object memory."""
from typing import Dict, List, Optional

import torch
from torch import Tensor

from mmdet.models.detectors import Mask2Former
from mmdet.registry import MODELS
from mmdet.structures import SampleList

from ...memory.encoders import BaseMemoryEncoder, build_memory_encoder
from ..dense_heads.maps_head import MAPSMask2FormerHead, MemoryInputs


@MODELS.register_module()
class MAPS(Mask2Former):
    """Memory Augmented Panoptic Segmentation (MAPS, Fig. 2).

    For each input image a frozen encoder computes the query key (CLIP CLS),
    the attached :class:`~mmmaps.memory.MemoryRetriever` returns the k most
    similar training scenes and their objects, and the
    :class:`MAPSMask2FormerHead` decoder fuses them into the object queries.

    The memory is attached by ``MemoryHook`` (``custom_hooks``), which loads the
    banks of ``memory.root`` and checks them against :meth:`memory_spec`. During
    training the query keys come from the memory's query-embedding cache (by
    image id) when it holds every image of the batch, otherwise the encoder runs
    on the un-normalised input images (B, 3, H, W), as it always does at test
    time unless an evaluation cache is attached.

    Args:
        query_encoder (dict): Config of the frozen key encoder (the memory's
            ``key_encoder``). It is kept out of the module tree: no gradients,
            not in checkpoints, untouched by ``init_weights``.
        **kwargs: Mask2Former arguments; ``panoptic_head`` must be a
            ``MAPSMask2FormerHead``.
    """

    def __init__(self, *args, query_encoder: Optional[dict] = None, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.panoptic_head, MAPSMask2FormerHead):
            raise TypeError('MAPS needs panoptic_head=dict(type="MAPSMask2FormerHead", ...), '
                            f'got {type(self.panoptic_head).__name__}')
        if query_encoder is None and self.panoptic_head.needs_memory:
            raise ValueError('MAPS needs query_encoder (the memory key encoder config, e.g. '
                             'query_encoder={{_base_.memory.key_encoder}})')
        # plain attributes, not submodules (see the class docstring)
        self.__dict__.update(_query_encoder_cfg=query_encoder, _query_encoder=None,
                             retriever=None, memory=None, eval_query_cache=None)

    # ------------------------------------------------------------------ memory
    @property
    def query_encoder(self) -> BaseMemoryEncoder:
        if self._query_encoder is None:
            self.__dict__['_query_encoder'] = build_memory_encoder(self._query_encoder_cfg)
        return self._query_encoder

    def memory_spec(self) -> Dict:
        """What the memory must provide (checked by ``MemoryHook``)."""
        head = self.panoptic_head
        sources = set(s for s in head.layer_sources if s)
        spec = dict(key_encoder=None if self._query_encoder_cfg is None else
                    self.query_encoder.describe())
        if spec['key_encoder'] is not None:
            spec['key_dim'] = spec['key_encoder']['out_channels']
        if 'scene' in sources:
            spec['scene_dim'] = head.scene_memory_dims
        if 'object' in sources:
            spec['object_dim'] = head.object_memory_dims
        return spec

    def attach_memory(self, retriever, memory=None, eval_query_cache=None) -> None:
        """Use ``retriever`` (and ``memory.query_cache`` in training)."""
        self.__dict__.update(retriever=retriever, memory=memory,
                             eval_query_cache=eval_query_cache)

    def _raw_images(self, batch_inputs: Tensor, batch_data_samples: SampleList) -> List[Tensor]:
        """Undo the data preprocessor: RGB images (3, h, w) in [0, 255], unpadded."""
        preprocessor = self.data_preprocessor
        images = batch_inputs * preprocessor.std + preprocessor.mean
        if not getattr(preprocessor, '_channel_conversion', False):
            images = images.flip(1)  # inputs kept the loader's BGR order
        out = []
        for image, sample in zip(images, batch_data_samples):
            height, width = sample.metainfo.get('img_shape', image.shape[-2:])[:2]
            out.append(image[:, :height, :width].clamp(0, 255))
        return out

    def query_keys(self, batch_inputs: Tensor, batch_data_samples: SampleList,
                   ids: Optional[List] = None) -> Tensor:
        """(B, D) query embeddings: from a cache when it has every image, else encoded."""
        if ids is None:
            ids = [sample.metainfo.get('img_id') for sample in batch_data_samples]
        cache = (self.memory.query_cache if self.training and self.memory is not None
                 else self.eval_query_cache)
        if cache is not None and all(i is not None and i in cache for i in ids):
            return cache.lookup(ids, device=batch_inputs.device)
        encoder = self.query_encoder
        if encoder.device != batch_inputs.device:
            encoder.to(batch_inputs.device)
        return encoder(self._raw_images(batch_inputs, batch_data_samples))

    def retrieve(self, batch_inputs: Tensor,
                 batch_data_samples: SampleList) -> Optional[MemoryInputs]:
        head = self.panoptic_head
        if not head.needs_memory:
            return None
        if self.retriever is None:
            raise RuntimeError('MAPS has no memory attached: add custom_hooks = '
                               '[dict(type="MemoryHook")] and build the memory with '
                               'tools/build_memory.py CONFIG')
        ids = [sample.metainfo.get('img_id') for sample in batch_data_samples]
        keys = self.query_keys(batch_inputs, batch_data_samples, ids)
        result = self.retriever.query(
            keys, image_ids=None if None in ids else ids, k=head.num_retrievals,
            training=self.training,
            random_sampling=head.random_sampling if self.training else None,
            with_objects=head.reads_objects)
        return MemoryInputs(scene=result.scene_values, scene_mask=result.scene_mask,
                            objects=result.object_values, object_mask=result.object_mask,
                            query_keys=keys)

    # ------------------------------------------------------------------ forward
    def loss(self, batch_inputs: Tensor, batch_data_samples: SampleList) -> Dict[str, Tensor]:
        with self.panoptic_head.memory(self.retrieve(batch_inputs, batch_data_samples)):
            return super().loss(batch_inputs, batch_data_samples)

    def predict(self, batch_inputs: Tensor, batch_data_samples: SampleList,
                rescale: bool = True) -> SampleList:
        with self.panoptic_head.memory(self.retrieve(batch_inputs, batch_data_samples)):
            return super().predict(batch_inputs, batch_data_samples, rescale=rescale)

    def _forward(self, batch_inputs: Tensor, batch_data_samples: SampleList = None):
        memory = (self.retrieve(batch_inputs, batch_data_samples)
                  if batch_data_samples is not None else None)
        with self.panoptic_head.memory(memory):
            return super()._forward(batch_inputs, batch_data_samples)
