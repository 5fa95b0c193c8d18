# Mask2Former R50 on ADE20K panoptic with the MAPS paper's ADE20K learning-rate schedule
# (section 4.3): 160k iterations at a constant LR, x0.1 at 100k and again at 140k, instead of
# Mask2Former's poly decay. Everything else is ../../mask2former/...ade20k-panoptic.py.
# The base of the MAPS ADE20K configs and of the Table 4 extra-layer baselines, so they differ
# from this plain Mask2Former only in the decoder. (The paper does not say which schedule its
# own Mask2Former run, Table 2/4 row "Mask2Former†", used; see ../README.md.)
_base_ = '../../mask2former/mask2former_r50_8xb2-lsj-50e_ade20k-panoptic.py'

max_iters = 160000
param_scheduler = dict(
    _delete_=True, type='MultiStepLR', begin=0, end=max_iters, by_epoch=False,
    milestones=[100000, 140000], gamma=0.1)
