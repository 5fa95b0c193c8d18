# MAPS R50 on Cityscapes panoptic fine-tuned from the detectron2 Mask2Former R50 of the
# Mask2Former model zoo (Cityscapes panoptic, PQ 62.1: model_final_4ab90c.pkl), converted with
#   python tools/model_converters/mask2former_detectron2.py model_final_4ab90c.pkl \
#       checkpoints/mask2former_r50_cityscapes-panoptic_d2-4ab90c.pth
# (the classifier's rows are reordered from Cityscapes' trainId order to things first). Recipe
# and memory of maps_r50_8xb2-lsj-45k_cityscapes-panoptic.py; memory layers start as an
# identity (see the COCO fine-tune config). Fine-tune schedule: 5,000 iterations (about 10 %
# of 45k), poly decay over them; Mask2Former tensors at 1e-5 (backbone 1e-6), memory
# attention at 1e-4.
#   python tools/build_memory.py configs/maps/maps_r50_8xb2-lsj-5k_cityscapes-panoptic_from-mask2former.py
#   bash tools/dist_train.sh configs/maps/maps_r50_8xb2-lsj-5k_cityscapes-panoptic_from-mask2former.py 8
_base_ = './maps_r50_8xb2-lsj-45k_cityscapes-panoptic.py'

load_from = 'checkpoints/mask2former_r50_cityscapes-panoptic_d2-4ab90c.pth'
model = dict(panoptic_head=dict(memory_init='identity'))

optim_wrapper = dict(
    optimizer=dict(lr=1e-5),
    paramwise_cfg=dict(custom_keys={'memory_attn': dict(lr_mult=10.0)}))
max_iters = 5000
param_scheduler = dict(end=max_iters)
interval = 1000
train_cfg = dict(max_iters=max_iters, val_interval=interval,
                 dynamic_intervals=[(max_iters // interval * interval + 1, max_iters)])
