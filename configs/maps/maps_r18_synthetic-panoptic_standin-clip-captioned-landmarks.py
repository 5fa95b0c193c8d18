# The tiny MAPS of the 'landmarks' data variant with a stand-in for CLIP that also learned
# from captions (issue 25's headroom experiment, docs/en/maps_evidence.md): 4000 images of the
# variant's generator (seed 1, disjoint from the labelled set), each captioned with its scene
# type, CLIP's image-to-caption term trained next to SimCLR's. The pool shows each of the
# 64 landmark glyphs about 30 times with its scene; the 50 labelled images show a third of
# them once or twice:
#   python tools/dataset_converters/make_synthetic_panoptic.py \
#       --out data/synthetic_pool_landmarks --num-train 4000 --num-val 1 --seed 1 \
#       --variant landmarks
#   python tools/pretrain_encoder.py --pool data/synthetic_pool_landmarks/train \
#       --captions data/synthetic_pool_landmarks/annotations/panoptic_train.json \
#       --out work_dirs/encoders/standin-clip_vit-ti16-112_synthetic-pool-landmarks-captioned.pt \
#       --steps 600
# (150 steps, the default, and 600 were pre-checked: benchmarks/results/
# maps_evidence_landmarks_*_precheck_steps{150,600}.md; neither tells meadow from lake yet)
_base_ = ['./maps_r18_synthetic-panoptic_standin-clip.py']

standin_checkpoint = \
    'work_dirs/encoders/standin-clip_vit-ti16-112_synthetic-pool-landmarks-captioned.pt'
memory = dict(key_encoder=dict(pretrained=standin_checkpoint),
              dense_encoder=dict(pretrained=standin_checkpoint))
