"""Print the panoptic summary (PQ, PQ_th, PQ_st, SQ, RQ, AP, mIoU) of several test runs.

    python tools/analysis/compare_metrics.py untrained=A/metrics.json trained=B/metrics.json
"""
import os, sys; sys.path.insert(0, os.path.realpath(__file__ + '/../../..'))  # noqa (this checkout first)

import argparse
import json
import sys

from mmmaps.evaluation import format_summary_table, panoptic_summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('runs', nargs='+', metavar='NAME=METRICS_JSON',
                        help='metrics.json written by tools/test.py')
    parser.add_argument('--title', default='Panoptic summary')
    args = parser.parse_args(argv)
    rows = {}
    for run in args.runs:
        if '=' not in run:
            sys.exit(f'compare_metrics: expected NAME=METRICS_JSON, got {run!r}')
        name, path = run.split('=', 1)
        try:
            with open(path) as f:
                rows[name] = panoptic_summary(json.load(f))
        except (OSError, json.JSONDecodeError) as err:
            sys.exit(f'compare_metrics: cannot read {path}: {err}')
    print(format_summary_table(rows, title=args.title))


if __name__ == '__main__':
    main()
