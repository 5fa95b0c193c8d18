"""What the content-identity leak guard costs at the start of a COCO-scale run.

    python benchmarks/image_identity_cost.py [--images 118287] [--hash-sample 2000]
        [--image-kb 160] [--threads 8]

``MemoryHook.before_train`` lists the distinct image files of the training dataset
(``dataset_image_paths``) and looks up each file's content identity (sha256 of its bytes),
which ``ImageIdentities`` caches per folder by (name, size, mtime). Measured here on
fabricated data of COCO train2017's size (118,287 images, ~160 KB each, ~19 GB):

1. listing the images of a CocoPanopticDataset with that many entries;
2. the first run: hashing every file (measured on ``--hash-sample`` files of COCO's mean size,
   extrapolated to the whole set), with the threads the builder uses;
3. every later run: a ``stat`` per file and a cache look-up (measured on all files, made
   small: the cached path never reads them).
"""
import os, sys; sys.path.insert(0, os.path.realpath(__file__ + '/../..'))  # noqa (this checkout first)

import argparse
import json
import os
import os.path as osp
import sys
import tempfile
import time

from mmmaps.memory.image_identity import ImageIdentities  # noqa: E402


def fabricate_annotations(path: str, num: int) -> None:
    """A COCO-panoptic annotation file of ``num`` images with 10 segments each."""
    from mmdet.datasets import CocoPanopticDataset
    meta = CocoPanopticDataset.METAINFO
    things = set(meta['thing_classes'])
    categories = [dict(id=i + 1, name=name, isthing=int(name in things))
                  for i, name in enumerate(meta['classes'])]
    images, annotations = [], []
    for i in range(num):
        image_id = 9 + 5 * i  # sparse like COCO's
        images.append(dict(id=image_id, file_name=f'{image_id:012d}.jpg', height=480,
                           width=640))
        annotations.append(dict(image_id=image_id, file_name=f'{image_id:012d}.png',
                                # distinct segment ids, as COCO's RGB-coded ones
                                segments_info=[dict(id=10 * i + s + 1, category_id=s % 133 + 1,
                                                    iscrowd=0, bbox=[0, 0, 10, 10], area=100)
                                               for s in range(10)]))
    with open(path, 'w') as f:
        json.dump(dict(images=images, annotations=annotations, categories=categories), f)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--images', type=int, default=118287)
    parser.add_argument('--hash-sample', type=int, default=2000)
    parser.add_argument('--image-kb', type=int, default=160)
    parser.add_argument('--threads', type=int, default=8)
    args = parser.parse_args()
    from mmdet.datasets import CocoPanopticDataset
    from mmdet.utils import register_all_modules

    from mmmaps.engine.hooks.memory_hook import dataset_image_paths
    register_all_modules()
    with tempfile.TemporaryDirectory() as tmp:
        ann = osp.join(tmp, 'panoptic_train.json')
        fabricate_annotations(ann, args.images)
        start = time.perf_counter()
        dataset = CocoPanopticDataset(ann_file=ann, data_root=tmp,
                                      data_prefix=dict(img='train/', seg='seg/'),
                                      filter_cfg=None, pipeline=[])
        load_s = time.perf_counter() - start
        start = time.perf_counter()
        paths = dataset_image_paths(dataset)
        list_s = time.perf_counter() - start

        os.makedirs(osp.join(tmp, 'train'))
        for path in paths:  # small files: the cached path only stats them
            with open(path, 'wb') as f:
                f.write(os.urandom(16))
        cache = osp.join(tmp, 'cache')
        ImageIdentities(cache_dir=cache).of_many(paths, threads=args.threads)
        start = time.perf_counter()
        again = ImageIdentities(cache_dir=cache)
        again.of_many(paths)
        cached_s = time.perf_counter() - start
        assert again.hashed == 0

        sample_dir = osp.join(tmp, 'sample')
        os.makedirs(sample_dir)
        sample = [osp.join(sample_dir, f'{i}.jpg') for i in range(args.hash_sample)]
        for path in sample:
            with open(path, 'wb') as f:
                f.write(os.urandom(args.image_kb * 1024))
        start = time.perf_counter()
        ImageIdentities(cache_dir='').of_many(sample, threads=args.threads)
        hash_s = time.perf_counter() - start
    per_image = hash_s / args.hash_sample
    gb = args.images * args.image_kb / 1024 ** 2
    print(f'{args.images} images of {args.image_kb} KB, {os.cpu_count()} cores, '
          f'{args.threads} hashing threads')
    print(f'  CocoPanopticDataset load (mmdet, for reference)    {load_s:8.1f} s')
    print(f'  list the distinct image files                      {list_s:8.1f} s')
    print(f'  first run: hash {gb:.1f} GB ({1000 * per_image:.2f} ms/image, '
          f'{args.image_kb / 1024 / per_image:.0f} MB/s, files in page cache) '
          f'{per_image * args.images:8.1f} s (extrapolated)')
    print(f'  later runs: stat + cached identity                 {cached_s:8.1f} s '
          f'({1e6 * cached_s / args.images:.1f} us/image)')


if __name__ == '__main__':
    main()
