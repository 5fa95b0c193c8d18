# MAPS R50 on ADE20K panoptic fine-tuned from the detectron2 Mask2Former R50 of the Mask2Former
# model zoo (ADE20K panoptic, PQ 39.7: model_final_5c90d4.pkl), converted with
#   python tools/model_converters/mask2former_detectron2.py model_final_5c90d4.pkl \
#       checkpoints/mask2former_r50_ade20k-panoptic_d2-5c90d4.pth
# (the classifier's rows are reordered to mmmaps' things-first class order). Recipe and memory
# of maps_r50_8xb2-lsj-160k_ade20k-panoptic.py; memory layers start as an identity (see the
# COCO fine-tune config). Fine-tune schedule: 16,000 iterations = 10 % of 160k, lr x0.1 at 90 %;
# Mask2Former tensors at 1e-5 (backbone 1e-6), memory attention at 1e-4.
#   python tools/build_memory.py configs/maps/maps_r50_8xb2-lsj-16k_ade20k-panoptic_from-mask2former.py
#   bash tools/dist_train.sh configs/maps/maps_r50_8xb2-lsj-16k_ade20k-panoptic_from-mask2former.py 8
_base_ = './maps_r50_8xb2-lsj-160k_ade20k-panoptic.py'

load_from = 'checkpoints/mask2former_r50_ade20k-panoptic_d2-5c90d4.pth'
model = dict(panoptic_head=dict(memory_init='identity'))

optim_wrapper = dict(
    optimizer=dict(lr=1e-5),
    paramwise_cfg=dict(custom_keys={'memory_attn': dict(lr_mult=10.0)}))
max_iters = 16000
param_scheduler = dict(end=max_iters, milestones=[14400])
interval = 2000
train_cfg = dict(max_iters=max_iters, val_interval=interval,
                 dynamic_intervals=[(max_iters // interval * interval + 1, max_iters)])
