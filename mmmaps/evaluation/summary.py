"""One table with the numbers the papers report, from the metrics of one test run."""
from typing import Dict, List, Optional, Tuple

from terminaltables import AsciiTable

# (column, metric key, scale): CocoPanopticMetric reports PQ in percent already,
# CocoMetric reports AP in [0, 1], PanopticSemSegMetric mIoU in percent.
SUMMARY_COLUMNS: Tuple[Tuple[str, str, float], ...] = (
    ('PQ', 'coco_panoptic/PQ', 1.0),
    ('PQ_th', 'coco_panoptic/PQ_th', 1.0),
    ('PQ_st', 'coco_panoptic/PQ_st', 1.0),
    ('SQ', 'coco_panoptic/SQ', 1.0),
    ('RQ', 'coco_panoptic/RQ', 1.0),
    ('AP', 'coco/segm_mAP', 100.0),
    ('mIoU', 'semseg/mIoU', 1.0),
)


def panoptic_summary(metrics: Dict[str, float]) -> Dict[str, Optional[float]]:
    """Pick and scale the summary numbers; a metric that was not computed is None."""
    out = {}
    for column, key, scale in SUMMARY_COLUMNS:
        value = metrics.get(key)
        out[column] = None if value is None else float(value) * scale
    return out


def format_summary_table(rows: Dict[str, Dict[str, Optional[float]]],
                         title: str = 'Panoptic summary') -> str:
    """Render ``{row name: panoptic_summary(...)}`` as an ASCII table."""
    header: List[str] = ['model'] + [c for c, _, _ in SUMMARY_COLUMNS]
    data = [header]
    for name, summary in rows.items():
        data.append([name] + ['-' if summary.get(c) is None else f'{summary[c]:.1f}'
                              for c in header[1:]])
    table = AsciiTable(data, title=title)
    table.inner_footing_row_border = False
    return table.table
