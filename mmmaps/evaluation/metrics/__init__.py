from .panoptic_semseg_metric import PanopticSemSegMetric

__all__ = ['PanopticSemSegMetric']
