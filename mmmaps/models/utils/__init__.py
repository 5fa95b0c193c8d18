from .panoptic_targets import (PanopticTargets, build_panoptic_targets, loss_weights,
                               mask_mass_centers)
from .query_filter import select_thing_queries

__all__ = ['PanopticTargets', 'build_panoptic_targets', 'loss_weights', 'mask_mass_centers',
           'select_thing_queries']
