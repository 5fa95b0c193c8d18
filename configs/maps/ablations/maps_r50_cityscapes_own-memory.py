# Ablation (not in the paper): MAPS R50 on Cityscapes with the memory of its own training set
# instead of the paper's COCO memory (section 3.2; ../maps_r50_8xb2-lsj-45k_cityscapes-panoptic.py, Table 3).
#   python tools/build_memory.py configs/maps/ablations/maps_r50_cityscapes_own-memory.py
#   bash tools/dist_train.sh configs/maps/ablations/maps_r50_cityscapes_own-memory.py 8
_base_ = '../maps_r50_8xb2-lsj-45k_cityscapes-panoptic.py'

memory = dict(root='work_dirs/memory/cityscapes_train', dataset_config=None)
