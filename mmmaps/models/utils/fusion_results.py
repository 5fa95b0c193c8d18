"""From fusion-head results to the predictions of data samples."""
from typing import List

from mmdet.structures import SampleList


def add_fusion_results(data_samples: SampleList, results_list: List[dict]) -> SampleList:
    """Put a fusion head's ``pan_results``/``ins_results``/``sem_results`` into the samples
    as ``pred_panoptic_seg``/``pred_instances``/``pred_sem_seg``."""
    for data_sample, results in zip(data_samples, results_list):
        if 'pan_results' in results:
            data_sample.pred_panoptic_seg = results['pan_results']
        if 'ins_results' in results:
            data_sample.pred_instances = results['ins_results']
        if 'sem_results' in results:
            data_sample.pred_sem_seg = results['sem_results']
    return data_samples
