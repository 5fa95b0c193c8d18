from typing import Sequence

from mmdet.evaluation.metrics import SemSegMetric
from mmdet.registry import METRICS
from mmdet.evaluation.functional import INSTANCE_OFFSET


@METRICS.register_module()
class PanopticSemSegMetric(SemSegMetric):
    """mIoU of the semantic map derived from the *panoptic* prediction (mIoU_pan).

    mmdet's :class:`SemSegMetric` scores ``pred_sem_seg``; a panoptic model
    predicts ``pred_panoptic_seg`` (1, H, W) with ``id = label + instance *
    INSTANCE_OFFSET`` and ``label == num_classes`` for void. This metric takes
    ``label = id % INSTANCE_OFFSET`` and scores it against ``gt_sem_seg`` (from
    ``LoadPanopticAnnotations(with_seg=True)``; 255 = ignored). Void predictions
    count as misses: they add to the ground-truth class's union but to no
    predicted class (``torch.histc`` drops the out-of-range label).

    Keys: ``semseg/mIoU``, ``semseg/aAcc``, ``semseg/mAcc`` (+ per-class table).

    In an evaluator list, pair it with ``FastCocoPanopticMetric`` (the mmmaps configs
    do), not mmdet's ``CocoPanopticMetric`` before it: on CPU the latter rewrites void to
    class 0 in the prediction in place (mmdet 3.3), which this metric would then score.
    """
    default_prefix = 'semseg'

    def __init__(self, gt_ignore_index: int = 255, **kwargs) -> None:
        super().__init__(**kwargs)
        self.gt_ignore_index = gt_ignore_index

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        num_classes = len(self.dataset_meta['classes'])
        for data_sample in data_samples:
            if 'pred_panoptic_seg' not in data_sample:
                raise KeyError(
                    'PanopticSemSegMetric needs `pred_panoptic_seg` in the model output; '
                    'set test_cfg.panoptic_on=True in the model config')
            if 'gt_sem_seg' not in data_sample:
                raise KeyError(
                    'PanopticSemSegMetric needs `gt_sem_seg`; load it in the test pipeline '
                    'with LoadPanopticAnnotations(with_seg=True)')
            pan = data_sample['pred_panoptic_seg']['sem_seg'].squeeze(0)
            pred_label = pan % INSTANCE_OFFSET
            label = data_sample['gt_sem_seg']['sem_seg'].squeeze(0).to(pred_label)
            if pred_label.shape != label.shape:
                raise ValueError(
                    f'prediction {tuple(pred_label.shape)} and ground truth '
                    f'{tuple(label.shape)} differ in size for {data_sample.get("img_path")}; '
                    'the model must predict at the original resolution (rescale=True)')
            self.results.append(
                self._compute_pred_stats(pred_label, label, num_classes,
                                         self.gt_ignore_index))
