from .metrics import PanopticSemSegMetric
from .summary import format_summary_table, panoptic_summary

__all__ = ['PanopticSemSegMetric', 'panoptic_summary', 'format_summary_table']
