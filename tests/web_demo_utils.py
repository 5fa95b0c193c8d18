"""Running ``demo/web_demo.py`` in a test: start it as a user would and ask it through
``gradio_client`` (shared by tests/test_tools/test_web_demo.py and the ONNX demo tests)."""
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from tests.conftest import REPO_ROOT

STARTUP_SECONDS = 240
OUTPUTS_PER_MODEL = 6  # overlay, memory-off overlay, segments, gallery, retrievals, timing


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_demo(args, synthetic_root, folder):
    """``python demo/web_demo.py ARGS --port P`` started as a user would; yields
    ``dict(url, log)`` once it answers, stops it afterwards."""
    port = _free_port()
    log = folder / 'server.log'
    env = dict(os.environ, MMMAPS_SYNTHETIC_ROOT=synthetic_root, OMP_NUM_THREADS='1',
               GRADIO_TEMP_DIR=str(folder / 'gradio'),
               PYTHONPATH=os.pathsep.join(filter(None, [REPO_ROOT,
                                                        os.environ.get('PYTHONPATH')])))
    with open(log, 'w') as out:
        proc = subprocess.Popen([sys.executable, 'demo/web_demo.py'] + list(args) +
                                ['--port', str(port)], cwd=REPO_ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    url = f'http://127.0.0.1:{port}/'
    deadline = time.time() + STARTUP_SECONDS
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f'web_demo.py exited with {proc.returncode}:\n'
                            f'{log.read_text()[-4000:]}')
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f'web_demo.py did not answer within {STARTUP_SECONDS} s:\n'
                            f'{log.read_text()[-4000:]}')
            time.sleep(1)
        yield dict(url=url, log=log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def segment(client, path, memory_off=False, num_models=2):
    import gradio_client
    out = client.predict(gradio_client.handle_file(path), memory_off, 0.3, api_name='/segment')
    status, per_model = out[0], out[1:]
    assert len(per_model) == num_models * OUTPUTS_PER_MODEL
    return status, [per_model[i:i + OUTPUTS_PER_MODEL]
                    for i in range(0, len(per_model), OUTPUTS_PER_MODEL)]


def pan_segments(sample, classes):
    """(class name, area) of every non-void segment, counted from the pan map's pixels."""
    from mmdet.evaluation.functional import INSTANCE_OFFSET
    pan = sample.pred_panoptic_seg.sem_seg[0].cpu().numpy()
    return sorted((classes[i % INSTANCE_OFFSET], int((pan == i).sum()))
                  for i in np.unique(pan).tolist() if i % INSTANCE_OFFSET < len(classes))




def table_rows(table):
    """The rows of a Dataframe output as gradio_client returns it."""
    return table['data'] if isinstance(table, dict) else table
