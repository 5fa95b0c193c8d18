# TensorBoard logging (needs `pip install tensorboard`, listed in requirements/optional.txt):
# every scalar of the log line (losses, lr, the MAPS retrieval statistics retrieval/scene_sim,
# retrieval/scene_sim_k, retrieval/object_slots, the val/test metrics) is also written to
# WORK_DIR/TIMESTAMP/vis_data/ (events.out.tfevents.* beside scalars.json):
#   tensorboard --logdir work_dirs/NAME
# mmengine refuses a key defined by two `_base_` files, and the model configs already get
# `visualizer` from mmdet's default_runtime, so either list this file as a base of a config
# whose other bases do not define `visualizer`, or inherit the model config and override
# `visualizer` in the child (the same dict), e.g.
#   _base_ = ['../maps/maps_r18_synthetic-panoptic.py']
#   visualizer = dict(vis_backends=[dict(type='LocalVisBackend'),
#                                   dict(type='TensorboardVisBackend')])
visualizer = dict(
    type='DetLocalVisualizer',
    vis_backends=[dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')],
    name='visualizer')
