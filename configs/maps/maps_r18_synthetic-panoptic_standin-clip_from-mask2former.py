# The tiny stand-in MAPS (./maps_r18_synthetic-panoptic_standin-clip.py: memory of the
# pretrained stand-in for CLIP) fine-tuned from a trained tiny Mask2Former with the recipe of
# ./maps_r18_synthetic-panoptic_from-mask2former.py. benchmarks/maps_from_mask2former.py.
_base_ = ['./maps_r18_synthetic-panoptic_from-mask2former.py',
          '../_base_/encoders/synthetic_standin-clip.py']

memory = {{_base_.standin_memory}}
model = dict(
    panoptic_head=dict(scene_memory_dims={{_base_.standin_dims}},
                       object_memory_dims={{_base_.standin_dims}}))
