# The tiny MAPS of the 'sky_texture' data variant (issue 25's headroom experiment,
# docs/en/maps_evidence.md): the stand-in for CLIP pretrained on 4000 unlabelled images of
# the variant's generator (seed 1, disjoint from the labelled set) instead of the bundled
# generator's, so that its knowledge covers the variant's scenes the way the bundled
# stand-in's covers the bundled ones:
#   python tools/dataset_converters/make_synthetic_panoptic.py \
#       --out data/synthetic_pool_sky_texture --num-train 4000 --num-val 1 --seed 1 \
#       --variant sky_texture
#   python tools/pretrain_encoder.py --pool data/synthetic_pool_sky_texture/train \
#       --out work_dirs/encoders/standin-clip_vit-ti16-112_synthetic-pool-sky-texture.pt
_base_ = ['./maps_r18_synthetic-panoptic_standin-clip.py']

standin_checkpoint = \
    'work_dirs/encoders/standin-clip_vit-ti16-112_synthetic-pool-sky-texture.pt'
memory = dict(key_encoder=dict(pretrained=standin_checkpoint),
              dense_encoder=dict(pretrained=standin_checkpoint))
