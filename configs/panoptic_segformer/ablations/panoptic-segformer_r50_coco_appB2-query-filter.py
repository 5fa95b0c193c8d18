# Appendix B.2 query filter (no number given; "trained with less than 12G memory"): only
# the most promising thing queries enter the mask decoder. Training: 3 rounds (as in the
# authors' release) of Hungarian matching on the location decoder's last layer, each on the
# queries not yet matched, then the highest-scoring queries fill up; inference: the
# top-scoring queries (at most 46 instance results per image).
# The paper: "the mask decoder usually only needs to handle less than 100 thing and stuff
# queries"; with 53 stuff queries that leaves 46 thing queries (46 + 53 = 99), which keeps
# all three rounds' matches for images with up to 15 things.
_base_ = '../panoptic-segformer_r50_8xb1-24e_coco-panoptic.py'

model = dict(bbox_head=dict(query_filter=dict(num_queries=46, num_rounds=3)))
