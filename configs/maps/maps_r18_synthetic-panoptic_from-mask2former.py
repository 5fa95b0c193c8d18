# Tiny MAPS fine-tuned from a trained tiny Mask2Former (the recipe of the R50 *_from-mask2former
# configs on the bundled synthetic dataset): the checkpoint of
#   python tools/train.py configs/mask2former/mask2former_r18_synthetic-panoptic.py
# loads into it; the memory layers start as an identity (step 0 = that Mask2Former, bit for
# bit). Every Mask2Former tensor trains at 0.1 x the from-scratch lr (4e-5), the memory
# attention at 4e-4; 200 iterations (half of the tiny from-scratch 400). Used by
# benchmarks/maps_from_mask2former.py (with the stand-in memory) and the tests.
_base_ = './maps_r18_synthetic-panoptic.py'

load_from = 'work_dirs/mask2former_r18_synthetic-panoptic/iter_400.pth'
model = dict(panoptic_head=dict(memory_init='identity'))

optim_wrapper = dict(
    optimizer=dict(lr=4e-5),
    paramwise_cfg=dict(custom_keys={'memory_attn': dict(lr_mult=10.0)}))
max_iters = 200
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=20),
    dict(type='MultiStepLR', begin=0, end=max_iters, by_epoch=False,
         milestones=[int(max_iters * 0.85)], gamma=0.1),
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(checkpoint=dict(interval=max_iters))
