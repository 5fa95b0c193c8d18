from .fusion_results import add_fusion_results
from .panoptic_targets import (PanopticTargets, build_panoptic_targets, batch_loss_weights,
                               mask_mass_centers)
from .query_filter import hungarian_rounds, release_thing_queries, select_thing_queries

__all__ = ['PanopticTargets', 'build_panoptic_targets', 'batch_loss_weights', 'mask_mass_centers',
           'select_thing_queries', 'hungarian_rounds', 'release_thing_queries',
           'add_fusion_results']
