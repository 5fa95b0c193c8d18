"""Mask2Former head whose decoder reads scene and object memory (MAPS section 3.3)."""
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from mmengine.logging import print_log
from torch import Tensor, nn

from mmdet.models.dense_heads import Mask2FormerHead
from mmdet.registry import MODELS
from mmdet.structures import SampleList

from ...memory.retriever import RetrievalResult
from ..layers import MAPSTransformerDecoder

INPUT_MASKING_MODES = ('item', 'memory')


@dataclass
class MemoryInputs:
    """Retrieved memory of a batch (padding masks: True = padded slot).

    Attributes:
        scene (Tensor | None): (B, K_s, C_s) scene values.
        scene_mask (Tensor | None): (B, K_s) bool.
        objects (Tensor | None): (B, K_o, C_o) object values.
        object_mask (Tensor | None): (B, K_o) bool.
        query_keys (Tensor | None): (B, C_s) the images' own CLS embeddings (Aug-CLS).
    """
    scene: Optional[Tensor] = None
    scene_mask: Optional[Tensor] = None
    objects: Optional[Tensor] = None
    object_mask: Optional[Tensor] = None
    query_keys: Optional[Tensor] = None

    @classmethod
    def from_retrieval(cls, result: RetrievalResult) -> 'MemoryInputs':
        return cls(scene=result.scene_values, scene_mask=result.scene_mask,
                   objects=result.object_values, object_mask=result.object_mask,
                   query_keys=result.query_keys)


@MODELS.register_module()
class MAPSMask2FormerHead(Mask2FormerHead):
    """Mask2FormerHead with memory cross-attention (Eq. 1) in chosen decoder layers.

    By default (9 layers) layers 0-2 attend to the scene memory, 3-5 to the object
    memory and 6-8 are plain Mask2Former layers (MAPS section 3.3).

    The memory of each image arrives with its data sample:
    ``data_sample.metainfo['retrieval']`` is the image's
    :class:`~mmmaps.memory.RetrievalResult` (scene values (1, k, C_s), object values
    (1, K_obj, C_o), padding masks; MAPS puts it there), and :meth:`forward` hands each
    decoder layer the memory it reads as an argument. How many images are retrieved, and
    how, is the memory's business (the config's ``memory.retrieval``), not the head's.

    Args:
        scene_layers (Sequence[int]): Decoder layers reading the scene memory.
        object_layers (Sequence[int]): Decoder layers reading the object memory.
        scene_memory_dims (int): C_s of the scene values (CLIP ViT-B/16: 512).
        object_memory_dims (int): C_o of the object values.
        memory_num_heads (int): Heads of the memory attention (1 = Eq. 1).
        use_scene_memory (bool): Forward-pass switch (Table 7).
        use_object_memory (bool): Forward-pass switch (Table 7).
        swap_memory (bool): Scene layers read the object memory and vice versa
            (Table 5 "Swapped").
        input_masking (float): Masking probability of the memory, drawn once per forward
            pass and shared by all layers (Table 5 "input masking"; training only).
        input_masking_mode (str): What ``input_masking`` masks: ``'item'`` (default) each
            retrieved item (scene entry, object) independently; ``'memory'`` the whole
            memory of an image (all its scene and object items together), so the model
            also learns to work with no memory at all. The paper's "randomly masked once at
            the beginning of the forward pass" reads either way.
        layer_masking (float): Same, drawn independently for every layer (Table 5).
        aug_cls (bool): Append the image's own CLS embedding to the scene memory
            ("MAPS-Aug-CLS").
        augment_at_test (bool): Keep masking at test time (off by default).
        learned_memory (tuple[int, int], optional): ``(K_s, K_o)``: the memory layers
            attend to K_s / K_o learned tokens (C_s / C_o wide, the same for every image)
            instead of a retrieval: the same attention parameters and no retrieval, the
            capacity control of an experiment on what the memory adds.
        extra_self_attn_layers (Sequence[int]): Layers with an extra Eq.-1-style
            attention over the queries themselves, no memory (Table 4
            "Mask2Former (6)/(9)").
        memory_init (str): ``'xavier'`` (default: as Mask2Former initialises its decoder)
            or ``'identity'``: the memory attentions' value projections start at zero, so
            every memory layer adds exactly 0 and a MAPS initialised from a trained
            Mask2Former computes that Mask2Former's outputs bit for bit at step 0 (the
            value projection gets gradients from the first step; the query/key
            projections from the second).
        **kwargs: Mask2FormerHead arguments.
    """

    def __init__(self, *args, scene_layers: Sequence[int] = (0, 1, 2),
                 object_layers: Sequence[int] = (3, 4, 5), scene_memory_dims: int = 512,
                 object_memory_dims: int = 512, memory_num_heads: int = 1,
                 use_scene_memory: bool = True, use_object_memory: bool = True,
                 swap_memory: bool = False, input_masking: float = 0.0,
                 input_masking_mode: str = 'item', layer_masking: float = 0.0,
                 aug_cls: bool = False,
                 augment_at_test: bool = False, learned_memory: Optional[Sequence[int]] = None,
                 extra_self_attn_layers: Sequence[int] = (),
                 memory_init: str = 'xavier', transformer_decoder=None, **kwargs):
        super().__init__(*args, transformer_decoder=transformer_decoder, **kwargs)
        if memory_init not in ('xavier', 'identity'):
            raise ValueError(f"memory_init must be 'xavier' or 'identity', got {memory_init!r}")
        self.memory_init = memory_init
        num_layers = self.num_transformer_decoder_layers
        scene_layers, object_layers = list(scene_layers), list(object_layers)
        for name, layers in (('scene_layers', scene_layers), ('object_layers', object_layers),
                             ('extra_self_attn_layers', extra_self_attn_layers)):
            bad = [i for i in layers if not 0 <= i < num_layers]
            if bad:
                raise ValueError(f'{name} {bad} outside the {num_layers} decoder layers')
        taken = scene_layers + object_layers + list(extra_self_attn_layers)
        if len(set(taken)) != len(taken):
            raise ValueError('scene_layers, object_layers and extra_self_attn_layers overlap: '
                             f'{scene_layers}, {object_layers}, {list(extra_self_attn_layers)}')
        if input_masking_mode not in INPUT_MASKING_MODES:
            raise ValueError(f'input_masking_mode must be one of {INPUT_MASKING_MODES}, got '
                             f'{input_masking_mode!r}')
        for name, p in (('input_masking', input_masking), ('layer_masking', layer_masking)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f'{name} must be in [0, 1), got {p}')
        self.scene_layers, self.object_layers = scene_layers, object_layers
        self.scene_memory_dims, self.object_memory_dims = scene_memory_dims, object_memory_dims
        self.use_scene_memory, self.use_object_memory = use_scene_memory, use_object_memory
        self.swap_memory = swap_memory
        self.input_masking, self.layer_masking = input_masking, layer_masking
        self.input_masking_mode = input_masking_mode
        self.aug_cls = aug_cls
        self.augment_at_test = augment_at_test
        # which memory each layer reads
        self.layer_sources = [None] * num_layers
        for i in scene_layers:
            self.layer_sources[i] = 'object' if swap_memory else 'scene'
        for i in object_layers:
            self.layer_sources[i] = 'scene' if swap_memory else 'object'
        dims = dict(scene=scene_memory_dims, object=object_memory_dims)
        baseline_params = sum(p.numel() for p in self.transformer_decoder.parameters())
        self.transformer_decoder = MAPSTransformerDecoder(
            memory_dims_per_layer=[dims.get(s) for s in self.layer_sources],
            extra_self_attn_layers=extra_self_attn_layers, memory_num_heads=memory_num_heads,
            **transformer_decoder)
        self.learned_memory = None
        if learned_memory is not None:
            if aug_cls:
                raise ValueError('learned_memory has no query keys for aug_cls')
            num_scene, num_objects = (int(n) for n in learned_memory)
            self.learned_memory = nn.ParameterDict(dict(
                scene=nn.Parameter(torch.randn(num_scene, scene_memory_dims) * 0.02),
                object=nn.Parameter(torch.randn(num_objects, object_memory_dims) * 0.02)))
        self.extra_params = (sum(p.numel() for p in self.transformer_decoder.parameters())
                             - baseline_params
                             + sum(p.numel() for p in (self.learned_memory or {}).values()))
        self._init_memory_values()
        print_log(f'MAPSMask2FormerHead: memory layers {self.layer_sources}, extra attention '
                  f'layers {list(extra_self_attn_layers)}: {self.extra_params:,} parameters '
                  'over Mask2Former', logger='current')

    def init_weights(self) -> None:
        super().init_weights()  # Mask2Former's: xavier on the decoder, memory layers too
        self._init_memory_values()

    def _init_memory_values(self) -> None:
        """``memory_init='identity'``: zero value projections. Also done at construction,
        so that a model that is only loaded (``tools/test.py``, no ``init_weights``) from a
        Mask2Former checkpoint is the identity too."""
        if self.memory_init != 'identity':
            return
        for layer in self.transformer_decoder.layers:
            if layer.memory_attn is not None:
                nn.init.zeros_(layer.memory_attn.v_proj.weight)
                nn.init.zeros_(layer.memory_attn.v_proj.bias)

    @property
    def reads_scene(self) -> bool:
        return self.use_scene_memory and 'scene' in self.layer_sources

    @property
    def reads_objects(self) -> bool:
        return self.use_object_memory and 'object' in self.layer_sources

    @property
    def needs_memory(self) -> bool:
        """Whether a retrieval must come with each sample (not with ``learned_memory``)."""
        return self.learned_memory is None and (self.reads_scene or self.reads_objects)

    def _drop(self, mask: Tensor, p: float) -> Tensor:
        """Add random masking with probability p to a padding mask."""
        if p <= 0:
            return mask
        return mask | (torch.rand(mask.shape, device=mask.device) < p)

    def _memory_per_layer(self, memory: Optional[MemoryInputs]):
        if memory is None:
            return [None] * len(self.layer_sources)
        augment = self.training or self.augment_at_test
        sources = {}
        if self.use_scene_memory and memory.scene is not None:
            scene, mask = memory.scene, memory.scene_mask
            if mask is None:
                mask = scene.new_zeros(scene.shape[:2], dtype=torch.bool)
            if self.aug_cls:
                if memory.query_keys is None:
                    raise ValueError('aug_cls needs the query keys in MemoryInputs')
                scene = torch.cat([scene, memory.query_keys[:, None].to(scene)], dim=1)
                mask = torch.cat([mask, mask.new_zeros((len(mask), 1))], dim=1)
            sources['scene'] = (scene, mask)
        if self.use_object_memory and memory.objects is not None:
            objects, mask = memory.objects, memory.object_mask
            if mask is None:
                mask = objects.new_zeros(objects.shape[:2], dtype=torch.bool)
            sources['object'] = (objects, mask)
        if augment and self.input_masking > 0 and sources:
            if self.input_masking_mode == 'item':
                sources = {k: (v, self._drop(m, self.input_masking))
                           for k, (v, m) in sources.items()}
            else:  # one draw per image masks every item of its memory
                some_mask = next(iter(sources.values()))[1]
                dropped = torch.rand(len(some_mask), device=some_mask.device) < self.input_masking
                sources = {k: (v, m | dropped[:, None]) for k, (v, m) in sources.items()}
        per_layer = []
        for source in self.layer_sources:
            if source is None or source not in sources:
                per_layer.append(None)
                continue
            values, mask = sources[source]
            if augment and self.layer_masking > 0:
                mask = self._drop(mask, self.layer_masking)
            per_layer.append((values, mask))
        return per_layer

    def memory_of(self, batch_data_samples: SampleList) -> Optional[MemoryInputs]:
        """The batch's memory, from each sample's ``metainfo['retrieval']`` (the learned
        tokens with ``learned_memory``)."""
        if self.learned_memory is not None:
            batch = len(batch_data_samples)
            scene, objects = self.learned_memory['scene'], self.learned_memory['object']
            return MemoryInputs(scene=scene.expand(batch, -1, -1),
                                scene_mask=scene.new_zeros((batch, len(scene)), dtype=torch.bool),
                                objects=objects.expand(batch, -1, -1),
                                object_mask=objects.new_zeros((batch, len(objects)),
                                                              dtype=torch.bool))
        if not self.needs_memory:
            return None
        missing = [i for i, s in enumerate(batch_data_samples) if 'retrieval' not in s]
        if missing:
            raise KeyError(f'data samples {missing} carry no metainfo["retrieval"]: the MAPS '
                           'head reads the memory each sample brings (MAPS.loss/predict '
                           'retrieve it); call the head through the MAPS detector')
        return MemoryInputs.from_retrieval(
            RetrievalResult.cat([s.retrieval for s in batch_data_samples]))

    def forward(self, x: List[Tensor],
                batch_data_samples: SampleList) -> Tuple[List[Tensor], List[Tensor]]:
        """Mask2FormerHead.forward with each decoder layer given the memory the samples
        carry (:meth:`memory_of`).

        Returns:
            tuple: per decoder stage, class logits (B, N_q, C + 1) and mask logits
            (B, N_q, h, w), as Mask2FormerHead.
        """
        return self.forward_with_memory(x, self.memory_of(batch_data_samples))

    def forward_with_memory(self, x: List[Tensor], memory_inputs: Optional[MemoryInputs]
                            ) -> Tuple[List[Tensor], List[Tensor]]:
        """:meth:`forward` with the batch's memory given as tensors (None: no memory);
        what the ONNX graph of MAPS runs (the memory is a graph input there)."""
        memory = self._memory_per_layer(memory_inputs)
        batch_size = x[0].shape[0]
        mask_features, multi_scale_memorys = self.pixel_decoder(x)
        decoder_inputs, decoder_positional_encodings = [], []
        for i in range(self.num_transformer_feat_level):
            decoder_input = self.decoder_input_projs[i](multi_scale_memorys[i])
            decoder_input = decoder_input.flatten(2).permute(0, 2, 1)
            decoder_input = decoder_input + self.level_embed.weight[i].view(1, 1, -1)
            mask = decoder_input.new_zeros((batch_size, ) + multi_scale_memorys[i].shape[-2:],
                                           dtype=torch.bool)
            positional = self.decoder_positional_encoding(mask).flatten(2).permute(0, 2, 1)
            decoder_inputs.append(decoder_input)
            decoder_positional_encodings.append(positional)
        query_feat = self.query_feat.weight.unsqueeze(0).repeat((batch_size, 1, 1))
        query_embed = self.query_embed.weight.unsqueeze(0).repeat((batch_size, 1, 1))

        cls_pred, mask_pred, attn_mask = self._forward_head(
            query_feat, mask_features, multi_scale_memorys[0].shape[-2:])
        cls_pred_list, mask_pred_list = [cls_pred], [mask_pred]
        for i in range(self.num_transformer_decoder_layers):
            level_idx = i % self.num_transformer_feat_level
            # a query whose mask is all background attends everywhere (as Mask2Former)
            attn_mask = attn_mask & (attn_mask.sum(-1) != attn_mask.shape[-1]).unsqueeze(-1)
            query_feat = self.transformer_decoder.layers[i](
                query=query_feat, key=decoder_inputs[level_idx],
                value=decoder_inputs[level_idx], query_pos=query_embed,
                key_pos=decoder_positional_encodings[level_idx], cross_attn_mask=attn_mask,
                query_key_padding_mask=None, key_padding_mask=None, memory=memory[i])
            cls_pred, mask_pred, attn_mask = self._forward_head(
                query_feat, mask_features,
                multi_scale_memorys[(i + 1) % self.num_transformer_feat_level].shape[-2:])
            cls_pred_list.append(cls_pred)
            mask_pred_list.append(mask_pred)
        return cls_pred_list, mask_pred_list
