"""What the training benchmarks share: running a tool with one thread, the tiny configs'
schedule override, reading a test's summary, stamped (reusable) trainings, the committed
ledger of finished runs, subsets of the labelled split and the paired 95 % interval."""
import os, sys; sys.path.insert(0, os.path.realpath(__file__ + '/../..'))  # noqa (this checkout first)

import glob
import json
import os.path as osp
import statistics
import subprocess
import threading
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from mmmaps.memory.storage import write_bytes

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def run(cmd, log, threads=None):
    """Run ``cmd`` in the repository root, output to ``log``; raise with the log's tail."""
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    os.makedirs(osp.dirname(osp.abspath(log)), exist_ok=True)
    with open(log, 'w') as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
    if proc.returncode:
        with open(log) as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f'{" ".join(cmd)} failed (exit {proc.returncode}); log {log}:\n'
                           f'{tail}')


def schedule(iters, val_interval=None):
    """--cfg-options giving the tiny configs ``iters`` iterations (lr step at 85 %), a
    validation every ``val_interval`` iterations (default: none; logged at its iteration,
    not at "epoch 0") and the last checkpoint."""
    options = [f'train_cfg.max_iters={iters}',
               f'train_cfg.val_interval={val_interval or iters + 1}',
               f'default_hooks.checkpoint.interval={iters}', f'param_scheduler.1.end={iters}',
               f'param_scheduler.1.milestones=[{iters * 85 // 100}]']
    if val_interval:
        options.append('default_hooks.logger.log_metric_by_epoch=False')
    return options


def summary(metrics_file):
    from mmmaps.evaluation.summary import panoptic_summary
    with open(metrics_file) as f:
        return panoptic_summary(json.load(f))


def validation_curve(train_dir) -> Dict[int, dict]:
    """{iteration: summary} of the validations a training ran (its ``vis_data/scalars.json``)."""
    from mmmaps.evaluation.summary import panoptic_summary
    curve = {}
    for path in sorted(glob.glob(osp.join(train_dir, '*', 'vis_data', 'scalars.json'))):
        with open(path) as f:
            for line in f:
                record = json.loads(line)
                if 'coco_panoptic/PQ' in record:
                    step = int(record['step'])
                    if step in curve:
                        raise ValueError(f'{path}: two validations logged at step {step} (train '
                                         'with default_hooks.logger.log_metric_by_epoch=False)')
                    curve[step] = panoptic_summary(record)
    return curve


def last_checkpoint(work):
    with open(osp.join(work, 'train', 'last_checkpoint')) as f:
        return f.read().strip()


def stamped_training(work: str, config: str, options: Sequence[str]) -> float:
    """Train ``config`` into ``WORK/train`` unless a finished run with the same config and
    options is there (its ``run.json`` stamp); returns the training's seconds."""
    stamp_file, stamp = osp.join(work, 'run.json'), dict(config=config, options=list(options))
    if osp.isfile(stamp_file):
        with open(stamp_file) as f:
            record = json.load(f)
        if record.get('stamp') == stamp:
            return record['seconds']
    start = time.time()
    run([sys.executable, 'tools/train.py', config, '--work-dir', osp.join(work, 'train'),
         '--cfg-options', *options], osp.join(work, 'train.log'), threads=1)
    seconds = time.time() - start
    with open(stamp_file + '.tmp', 'w') as f:
        json.dump(dict(stamp=stamp, seconds=seconds), f)
    os.replace(stamp_file + '.tmp', stamp_file)
    return seconds


def stamped_test(work: str, name: str, config: str, options: Sequence[str],
                 extra_args: Sequence[str] = ()) -> dict:
    """Test the last checkpoint of ``WORK`` into ``WORK/NAME`` unless the same test ran after
    that training (stamp); returns the summary."""
    out = osp.join(work, name)
    stamp = dict(config=config, options=list(options), args=list(extra_args),
                 checkpoint=last_checkpoint(work),
                 trained=osp.getmtime(osp.join(work, 'run.json')))
    stamp_file = osp.join(out, 'test_stamp.json')
    if osp.isfile(stamp_file) and osp.isfile(osp.join(out, 'metrics.json')):
        with open(stamp_file) as f:
            if json.load(f) == stamp:
                return summary(osp.join(out, 'metrics.json'))
    cmd = [sys.executable, 'tools/test.py', config, stamp['checkpoint'], '--work-dir', out,
           *extra_args]
    if options:
        cmd += ['--cfg-options', *options]
    run(cmd, osp.join(work, f'{name}.log'), threads=1)
    with open(stamp_file + '.tmp', 'w') as f:
        json.dump(stamp, f)
    os.replace(stamp_file + '.tmp', stamp_file)
    return summary(osp.join(out, 'metrics.json'))


LEDGER_FORMAT = 'mmmaps-run-ledger/1'


def portable(value):
    """``value`` (a str, or lists/tuples/dicts of them) with this checkout's absolute path
    written relative to it, so that a run's description is the same in every clone."""
    if isinstance(value, str):
        return value.replace(ROOT + os.sep, '')
    if isinstance(value, (list, tuple)):
        return [portable(v) for v in value]
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    return value


def directory_digest(root: str, suffix: str = '') -> str:
    """sha256 over the relative paths and contents of the files under ``root`` (only those
    ending in ``suffix`` when given), leaving out ``manifest.json`` files (they hold the
    build's time), logs and ``__pycache__``: equal for two builds of the same memory bank or
    two clones of the same sources, whichever machine made them."""
    import hashlib
    if not osp.isdir(root):
        raise FileNotFoundError(f'directory_digest: {root} is not a directory')
    paths = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != '__pycache__']
        paths += [osp.relpath(osp.join(folder, name), root) for name in files
                  if name != 'manifest.json' and not name.endswith('.log')
                  and name.endswith(suffix)]
    digest = hashlib.sha256()
    for rel in sorted(paths):
        digest.update(rel.encode() + b'\0')
        with open(osp.join(root, rel), 'rb') as f:
            for block in iter(lambda: f.read(1 << 22), b''):
                digest.update(block)
        digest.update(b'\0')
    return digest.hexdigest()


class RunLedger:
    """The results of finished runs, in a JSON file committed under ``benchmarks/results/``.

    An experiment longer than one session runs in parts on machines that keep nothing
    between sessions (``work_dirs/`` goes with each fresh clone), so the stamps in the work
    dirs cannot carry it; the ledger does. Each record is keyed (e.g. ``iters2000/n50/
    oracle/seed3``) and holds ``what`` ran, a JSON description the caller builds *before*
    running (config, options with portable paths, the sha256 of every input file, the torch
    version), next to the result and what the caller adds (seconds, commit). ``lookup``
    returns the result only when the record's ``what`` equals the run about to start; a
    record of the same key with another ``what`` is not used, and is replaced when that run
    is redone. Safe for the benchmarks' parallel
    jobs and for two processes (a lock file beside it); written atomically (temp file, then
    rename)."""

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()

    def _runs(self) -> dict:
        if not osp.isfile(self.path):
            return {}
        with open(self.path) as f:
            data = json.load(f)
        if not isinstance(data, dict) or data.get('format') != LEDGER_FORMAT:
            raise ValueError(f'{self.path}: not a run ledger (expected "format": '
                             f'"{LEDGER_FORMAT}")')
        return data['runs']

    def lookup(self, key: str, what: dict) -> Optional[dict]:
        """The recorded result of ``key`` if it was recorded for the same ``what``."""
        with self._lock:
            record = self._runs().get(key)
        if record is None or record['what'] != json.loads(json.dumps(what)):
            return None
        return record['result']

    def info(self, key: str) -> dict:
        """What ``record`` kept beside ``key``'s result (seconds, commit, date); {} if none."""
        with self._lock:
            record = self._runs().get(key) or {}
        return {k: v for k, v in record.items() if k not in ('what', 'result')}

    def record(self, key: str, what: dict, result: dict, **info) -> None:
        """Keep ``result`` of the run ``what`` under ``key`` (with ``info``: its seconds,
        commit, date)."""
        import fcntl
        os.makedirs(osp.dirname(osp.abspath(self.path)), exist_ok=True)
        # two benchmark processes may record into one ledger: read-modify-write under a lock
        with self._lock, open(self.path + '.lock', 'w') as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            runs = self._runs()
            runs[key] = dict(what=what, result=result, **info)
            write_bytes(self.path, (json.dumps(dict(format=LEDGER_FORMAT,
                                                    runs=dict(sorted(runs.items()))),
                                               indent=1) + '\n').encode())


def write_subset(src: str, dst: str, num_images: int, seed: Optional[int] = None) -> List[int]:
    """A COCO panoptic file with ``num_images`` of ``src``'s images: the first ones, or a
    random sample drawn with ``seed``; written atomically. Returns the kept image ids."""
    with open(src) as f:
        data = json.load(f)
    images = data['images']
    if num_images > len(images):
        raise ValueError(f'{src} has {len(images)} images, asked for {num_images}')
    if seed is None:
        chosen = images[:num_images]
    else:
        order = np.random.default_rng([seed, num_images]).permutation(len(images))
        chosen = [images[i] for i in sorted(order[:num_images])]
    return write_images(data, chosen, dst)


def write_images(data: dict, images: List[dict], dst: str) -> List[int]:
    """Write the COCO panoptic ``data`` restricted to ``images`` (and their annotations) to
    ``dst`` atomically; returns the kept image ids."""
    keep = {im['id'] for im in images}
    subset = dict(data, images=images,
                  annotations=[a for a in data['annotations'] if a['image_id'] in keep])
    os.makedirs(osp.dirname(osp.abspath(dst)), exist_ok=True)
    with open(dst + '.tmp', 'w') as f:
        json.dump(subset, f)
    os.replace(dst + '.tmp', dst)
    return sorted(keep)


def interval95(diffs):
    """Mean and half-width of the 95 % t-interval of paired differences."""
    from scipy import stats
    mean = statistics.mean(diffs)
    if len(diffs) < 2:
        return mean, float('nan')
    return mean, stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / len(diffs)**.5


def publish(name: str, payload: dict, text: str) -> str:
    """Write ``benchmarks/results/NAME.{json,md}`` (the report of a ``--publish`` run)."""
    out = osp.join(ROOT, 'benchmarks', 'results', name)
    # each file whole or not at all: a report replaced by a killed run keeps its old version
    write_bytes(out + '.json', json.dumps(payload, indent=2).encode())
    write_bytes(out + '.md', (text + '\n').encode())
    return out
