# The tiny MAPS of the 'landmarks' data variant whose *key encoder* is the max-pooled ConvNet
# stand-in (issue 25's headroom experiment, docs/en/maps_evidence.md): the captioned ViT
# stand-in never learnt which of the 64 landmark glyphs belongs to a lake (meadow/lake scene
# P@5 0.54 after 600 steps), the same pool and captions teach this CNN in a few hundred steps
# (mmmaps/memory/encoders/convnet.py says why: a maximum over positions finds a small pattern
# anywhere). The keys and scene values come from the ConvNet; the dense (object) features stay
# the captioned ViT stand-in's, as TiledCLIP needs a ViT. Both are trained on 4000 images of the
# variant's generator (seed 1, disjoint from the labelled set), captioned with their scene type:
#   python tools/dataset_converters/make_synthetic_panoptic.py \
#       --out data/synthetic_pool_landmarks --num-train 4000 --num-val 1 --seed 1 \
#       --variant landmarks
#   python tools/pretrain_encoder.py --arch mmmaps-ConvNet-MaxPool-112 \
#       --pool data/synthetic_pool_landmarks/train \
#       --captions data/synthetic_pool_landmarks/annotations/panoptic_train.json \
#       --out \
#       work_dirs/encoders/standin-convnet-maxpool-112_synthetic-pool-landmarks-caption-only.pt \
#       --steps 400 --batch-size 64 --simclr-weight 0 \
#       --eval-ann data/synthetic_landmarks/annotations/panoptic_train.json --no-reference
# and the ViT stand-in as in ./maps_r18_synthetic-panoptic_standin-clip-captioned-landmarks.py.
# The caption term alone (--simclr-weight 0), by the rule written before either finished: with
# SimCLR next to it (the ViT's recipe, the same command without --simclr-weight, 1061 s) the
# meadow/lake scene P@5 is 0.746, below the pre-check's 0.9; alone (1041 s) it is the one
# published (benchmarks/results/maps_evidence_landmarks_*convnet*_precheck_*.md).
_base_ = ['./maps_r18_synthetic-panoptic_standin-clip-captioned-landmarks.py']

convnet_checkpoint = \
    'work_dirs/encoders/standin-convnet-maxpool-112_synthetic-pool-landmarks-caption-only.pt'
memory = dict(key_encoder=dict(_delete_=True, type='ConvNetMaxPoolEncoder',
                               arch='mmmaps-ConvNet-MaxPool-112', pretrained=convnet_checkpoint))
