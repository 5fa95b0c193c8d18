# MAPS R50 on COCO panoptic fine-tuned from mmdet's trained Mask2Former R50 (PQ 52.0) instead
# of trained from scratch (maps_r50_8xb2-lsj-50e_coco-panoptic.py, whose recipe and memory it
# keeps). The memory layers start as an identity (memory_init='identity': zero value
# projections), so at step 0 this model computes the checkpoint's Mask2Former outputs bit for
# bit, memory on; loading names the MAPS-only tensors the checkpoint lacks and refuses any
# Mask2Former tensor without a place (see configs/maps/README.md, "From a trained Mask2Former").
# Fine-tune schedule (not from the paper, which trains from scratch): 36,875 iterations = 5 of
# the 50 epochs, lr x0.1 at 90 %; every Mask2Former tensor at 0.1 x the from-scratch lr
# (1e-5; backbone 1e-6 through Mask2Former's own 0.1 multiplier), the memory attention at the
# from-scratch 1e-4 (lr_mult 10).
#   download https://download.openmmlab.com/mmdetection/v3.0/mask2former/mask2former_r50_8xb2-lsj-50e_coco-panoptic/mask2former_r50_8xb2-lsj-50e_coco-panoptic_20230118_125535-54df384a.pth to checkpoints/
#   python tools/build_memory.py configs/maps/maps_r50_8xb2-lsj-5e_coco-panoptic_from-mask2former.py
#   bash tools/dist_train.sh configs/maps/maps_r50_8xb2-lsj-5e_coco-panoptic_from-mask2former.py 8
_base_ = './maps_r50_8xb2-lsj-50e_coco-panoptic.py'

load_from = 'checkpoints/mask2former_r50_8xb2-lsj-50e_coco-panoptic_20230118_125535-54df384a.pth'
model = dict(panoptic_head=dict(memory_init='identity'))

optim_wrapper = dict(
    optimizer=dict(lr=1e-5),
    paramwise_cfg=dict(custom_keys={'memory_attn': dict(lr_mult=10.0)}))
max_iters = 36875
param_scheduler = dict(end=max_iters, milestones=[33188])
interval = 5000
train_cfg = dict(max_iters=max_iters, val_interval=interval,
                 dynamic_intervals=[(max_iters // interval * interval + 1, max_iters)])
