from .fast_panoptic_metric import FastCocoPanopticMetric
from .panoptic_semseg_metric import PanopticSemSegMetric

__all__ = ['PanopticSemSegMetric', 'FastCocoPanopticMetric']
