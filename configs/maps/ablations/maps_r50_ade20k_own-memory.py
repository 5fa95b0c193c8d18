# Ablation (not in the paper): MAPS R50 on ADE20K with the memory of its own training set
# instead of the paper's COCO memory (section 3.2; ../maps_r50_8xb2-lsj-160k_ade20k-panoptic.py, Table 2).
#   python tools/build_memory.py configs/maps/ablations/maps_r50_ade20k_own-memory.py
#   bash tools/dist_train.sh configs/maps/ablations/maps_r50_ade20k_own-memory.py 8
_base_ = '../maps_r50_8xb2-lsj-160k_ade20k-panoptic.py'

memory = dict(root='work_dirs/memory/ade20k_train', dataset_config=None)
