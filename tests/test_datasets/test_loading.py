import json
import os.path as osp

from mmengine.config import Config

from mmdet.registry import DATASETS
from mmdet.utils import register_all_modules
from tests.conftest import TINY_M2F


def test_coco_panoptic_dataset_reads_synthetic(synthetic_env):
    import mmmaps  # noqa: F401
    register_all_modules()
    cfg = Config.fromfile(TINY_M2F)
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    assert type(dataset).__name__ == 'CocoPanopticDataset'
    with open(osp.join(synthetic_env, 'annotations', 'panoptic_train.json')) as f:
        pan = json.load(f)
    assert len(dataset) == len(pan['images'])
    meta = dataset.metainfo
    assert len(meta['thing_classes']) == 7 and len(meta['stuff_classes']) == 6

    info = dataset.get_data_info(0)
    ann = next(a for a in pan['annotations'] if a['image_id'] == info['img_id'])
    num_things = sum(s['category_id'] <= 7 for s in ann['segments_info'])
    assert sum(s['is_thing'] for s in info['segments_info']) == num_things

    sample = dataset[0]
    gt = sample['data_samples']
    assert max(sample['inputs'].shape[-2:]) <= 128  # RandomResize + RandomCrop to 128
    assert len(gt.gt_instances) == num_things
    assert (gt.gt_instances.labels < 7).all()
    sem = gt.gt_sem_seg.sem_seg
    labels = set(sem.unique().tolist()) - {255}
    assert labels and max(labels) < 13
