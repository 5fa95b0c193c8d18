# Mask2Former R50 on Cityscapes panoptic, 45k iterations (MAPS paper Table 3, row
# "Mask2Former† R50 45K": PQ 60.5, AP 34.0, mIoU 75.3): Mask2Former's Cityscapes recipe
# (../../mask2former/...cityscapes-panoptic.py: 512x1024 crops, batch 16, AdamW 1e-4, poly
# LR) with the poly decay compressed to 45k iterations. The base of the MAPS Cityscapes
# configs. (For the 90k schedule stopped at 45k instead, pass
# --cfg-options param_scheduler.end=90000.)
_base_ = '../../mask2former/mask2former_r50_8xb2-lsj-50e_cityscapes-panoptic.py'

max_iters = 45000
param_scheduler = dict(
    _delete_=True, type='PolyLR', eta_min=0, power=0.9, begin=0, end=max_iters,
    by_epoch=False)
interval = 5000
train_cfg = dict(max_iters=max_iters, val_interval=interval,
                 dynamic_intervals=[(max_iters // interval * interval + 1, max_iters)])
