from .query_set_loss import (QueryAssignment, query_set_cls_loss, query_set_losses,
                             query_set_mask_loss, resize_masks)

__all__ = ['QueryAssignment', 'query_set_losses', 'query_set_cls_loss', 'query_set_mask_loss',
           'resize_masks']
