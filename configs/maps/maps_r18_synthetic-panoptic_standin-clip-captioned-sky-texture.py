# The tiny MAPS of the 'sky_texture' data variant with a stand-in for CLIP that also learned
# from captions (issue 25's headroom experiment, docs/en/maps_evidence.md): the same pool as
# maps_r18_synthetic-panoptic_standin-clip-sky-texture.py (4000 images of the variant's
# generator, seed 1, disjoint from the labelled set), each captioned with its scene type, and
# CLIP's image-to-caption term trained next to SimCLR's. The self-supervised stand-in cannot
# tell the variant's meadow from its lake (scene P@5 at chance); CLIP would, from text:
#   python tools/pretrain_encoder.py --pool data/synthetic_pool_sky_texture/train \
#       --captions data/synthetic_pool_sky_texture/annotations/panoptic_train.json \
#       --out work_dirs/encoders/standin-clip_vit-ti16-112_synthetic-pool-sky-texture-captioned.pt
_base_ = ['./maps_r18_synthetic-panoptic_standin-clip.py']

standin_checkpoint = \
    'work_dirs/encoders/standin-clip_vit-ti16-112_synthetic-pool-sky-texture-captioned.pt'
memory = dict(key_encoder=dict(pretrained=standin_checkpoint),
              dense_encoder=dict(pretrained=standin_checkpoint))
