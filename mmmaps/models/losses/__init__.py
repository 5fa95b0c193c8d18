from .focal_loss import Float32FocalLoss
from .query_set_loss import (MASK_TARGET_RESIZES, QueryAssignment, query_set_cls_loss,
                             query_set_losses, query_set_mask_loss, resize_masks)

__all__ = ['Float32FocalLoss', 'MASK_TARGET_RESIZES', 'QueryAssignment', 'query_set_losses',
           'query_set_cls_loss', 'query_set_mask_loss', 'resize_masks']
