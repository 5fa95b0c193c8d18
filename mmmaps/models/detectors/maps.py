"""MAPS: Mask2Former whose queries read a retrieved scene and object memory."""
import logging
from typing import Dict, List, Optional, Tuple

import torch
from mmengine.logging import print_log
from torch import Tensor

from mmdet.models.detectors import Mask2Former
from mmdet.registry import MODELS
from mmdet.structures import SampleList

from ...memory.external_memory import ExternalMemory, shows_whole_picture
from ...memory.retriever import RetrievalResult
from ...utils.checkpoint_fit import CheckpointMismatchError, StateDiff, install_fit_check
from ...utils.text import name_list
from ..dense_heads.maps_head import MAPSMask2FormerHead


def unnormalized_images(batch_inputs: Tensor, batch_data_samples: SampleList,
                        preprocessor) -> List[Tensor]:
    """Undo the data preprocessor: RGB images (3, h, w) in [0, 255], unpadded (what the
    memory's key encoder reads)."""
    images = batch_inputs * preprocessor.std + preprocessor.mean
    if not getattr(preprocessor, '_channel_conversion', False):
        images = images.flip(1)  # inputs kept the loader's BGR order
    out = []
    for image, sample in zip(images, batch_data_samples):
        height, width = sample.metainfo.get('img_shape', image.shape[-2:])[:2]
        out.append(image[:, :height, :width].clamp(0, 255))
    return out


MAPS_ONLY_PARTS = ('.memory_attn.', '.extra_attn.')  # tensors a Mask2Former does not have
CLASS_HEAD = ('panoptic_head.cls_embed.weight', 'panoptic_head.cls_embed.bias')
MASK2FORMER_HINT = ('A Mask2Former checkpoint must come from the same Mask2Former config '
                    '(backbone, queries, decoder layers); convert detectron2 checkpoints with '
                    'tools/model_converters/mask2former_detectron2.py.')


@MODELS.register_module()
class MAPS(Mask2Former):
    """Memory Augmented Panoptic Segmentation (MAPS, Fig. 2).

    For each input image the attached :class:`~mmmaps.memory.ExternalMemory` (built from
    the config's ``memory`` section and attached by ``MemoryHook``, or by
    :meth:`attach_memory` outside a run) computes the query key with its frozen encoder (or
    takes it from a query cache), retrieves the k most similar training scenes and their
    objects, and :class:`MAPSMask2FormerHead` fuses them into the object queries.

    The retrieval of an image travels with its data sample as ``metainfo['retrieval']``
    (a :class:`~mmmaps.memory.RetrievalResult` of one image): the head reads it there, and
    the predicted samples keep it (ids, scores, masks and keys, without the values).
    Training losses also report the retrieval statistics (``retrieval/scene_sim`` ...,
    not summed into the loss).

    Loading weights (``load_from``, ``--resume``, ``tools/test.py``): every tensor of the
    checkpoint must have a place of the same shape in MAPS, and every MAPS tensor must come
    from it, except the MAPS-only attention layers (``memory_attn``, ``extra_attn``), which
    a Mask2Former checkpoint does not have: they keep their initialisation and are listed
    in the log — allowed when that initialisation is defined (``init_weights()`` ran, as in
    training, or ``memory_init='identity'``); a model loaded without it (``tools/test.py``,
    the demo) with the default init is refused, as it would run random memory layers. A classifier for another number of classes (``panoptic_head.cls_embed``) is
    re-initialised, as the log says. Anything else is refused, naming the tensors; mmengine
    itself loads with ``strict=False`` and only warns.

    Args:
        **kwargs: Mask2Former arguments; ``panoptic_head`` must be a
            ``MAPSMask2FormerHead``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.panoptic_head, MAPSMask2FormerHead):
            raise TypeError('MAPS needs panoptic_head=dict(type="MAPSMask2FormerHead", ...), '
                            f'got {type(self.panoptic_head).__name__}')
        self.memory: Optional[ExternalMemory] = None
        install_fit_check(self)

    def allow_checkpoint_difference(self, diff: StateDiff, state_dict: dict,
                                    prefix: str) -> Tuple[StateDiff, str]:
        """MAPS's allowances of :func:`~mmmaps.utils.checkpoint_fit.check_state_fits` (see the
        class docstring): a classifier of another class count is dropped from ``state_dict``
        (re-initialised, logged); the MAPS-only tensors may be missing when their
        initialisation is defined (logged). Returns what stays refused and a hint."""
        mismatched = dict(diff.mismatched)
        if set(mismatched) >= set(CLASS_HEAD) and all(
                mismatched[k][0][1:] == mismatched[k][1][1:] for k in CLASS_HEAD):
            theirs, ours = mismatched[CLASS_HEAD[1]]
            print_log(f'the checkpoint classifies {theirs[0] - 1} classes, this model '
                      f'{ours[0] - 1}: {CLASS_HEAD[0]} and .bias are re-initialised',
                      logger='current', level=logging.WARNING)
            for key in CLASS_HEAD:
                state_dict.pop(prefix + key)
                del mismatched[key]
        maps_only = [k for k in diff.missing if any(part in k for part in MAPS_ONLY_PARTS)]
        rest = StateDiff([k for k in diff.missing if k not in maps_only], diff.unexpected,
                         mismatched)
        if rest or not maps_only:
            return rest, MASK2FORMER_HINT
        if self.panoptic_head.memory_init != 'identity' and not self.is_init:
            # tools/test.py and the demo load without init_weights(): the memory layers
            # would be PyTorch's default initialisation, defined by nothing
            raise CheckpointMismatchError(
                f'the checkpoint has no memory layers ({len(maps_only)} MAPS-only tensors, e.g. '
                f'{maps_only[0]}): it is a Mask2Former, and this MAPS model, which is not being '
                'trained, would run them with random weights. Test a trained MAPS checkpoint, '
                "or set model.panoptic_head.memory_init='identity' to evaluate the Mask2Former "
                'through MAPS (its memory layers then add exactly 0).')
        print_log(f'{len(maps_only)} MAPS-only tensors are not in the checkpoint and keep '
                  f'their initialisation (memory_init={self.panoptic_head.memory_init!r}): '
                  + name_list(maps_only, limit=None), logger='current')
        return rest, ''

    def attach_memory(self, memory: ExternalMemory) -> None:
        """Read ``memory`` from now on (it must hold the value dims the head reads)."""
        head = self.panoptic_head
        memory.check_fits(scene_dim=head.scene_memory_dims if head.reads_scene else None,
                          object_dim=head.object_memory_dims if head.reads_objects else None)
        self.memory = memory

    def retrieve(self, batch_inputs: Tensor,
                 batch_data_samples: SampleList) -> Optional[RetrievalResult]:
        """The batch's retrieval, also put into each sample's ``metainfo['retrieval']``
        (None, and nothing put, when the head reads no memory)."""
        head = self.panoptic_head
        if not head.needs_memory:
            return None
        if self.memory is None:
            raise RuntimeError('MAPS has no memory attached: add custom_hooks = '
                               '[dict(type="MemoryHook")] and build the memory with '
                               'tools/build_memory.py CONFIG')
        with torch.no_grad():
            result = self.memory.retrieve(
                unnormalized_images(batch_inputs, batch_data_samples, self.data_preprocessor),
                [sample.metainfo.get('img_path') for sample in batch_data_samples],
                training=self.training, with_objects=head.reads_objects,
                whole_pictures=[shows_whole_picture(s.metainfo) for s in batch_data_samples])
        for index, sample in enumerate(batch_data_samples):
            sample.set_metainfo(dict(retrieval=result.select(index)))
        return result

    # ------------------------------------------------------------------ forward
    def loss(self, batch_inputs: Tensor, batch_data_samples: SampleList) -> Dict[str, Tensor]:
        result = self.retrieve(batch_inputs, batch_data_samples)
        losses = super().loss(batch_inputs, batch_data_samples)
        if result is not None:
            losses.update({f'retrieval/{name}': torch.tensor(value, device=batch_inputs.device)
                           for name, value in result.statistics(
                               self.memory.retriever.max_objects).items()})
        return losses

    def predict(self, batch_inputs: Tensor, batch_data_samples: SampleList,
                rescale: bool = True) -> SampleList:
        self.retrieve(batch_inputs, batch_data_samples)
        results = super().predict(batch_inputs, batch_data_samples, rescale=rescale)
        for sample in results:
            if 'retrieval' in sample:
                sample.set_metainfo(dict(retrieval=sample.retrieval.without_values()))
        return results

    def _forward(self, batch_inputs: Tensor, batch_data_samples: SampleList = None):
        if batch_data_samples is not None:
            self.retrieve(batch_inputs, batch_data_samples)
        return super()._forward(batch_inputs, batch_data_samples)
