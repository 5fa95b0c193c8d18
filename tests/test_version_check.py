import subprocess
import sys

import pytest

from mmmaps.utils import check_version
from tests.conftest import REPO_ROOT


def test_check_version_bounds():
    check_version('mmcv', '2.1.0', '2.0.0', '2.2.0', 'pin')
    check_version('mmcv', '2.0.0rc4', '2.0.0', '2.2.0', 'pin')
    with pytest.raises(ImportError, match=r'mmcv>=2.0.0,<2.2.0.*mmcv==2.2.0.*`pin`'):
        check_version('mmcv', '2.2.0', '2.0.0', '2.2.0', 'pin')


def test_wrong_mmcv_gives_clear_error(tmp_path):
    fake = tmp_path / 'mmcv'
    fake.mkdir()
    (fake / '__init__.py').write_text("__version__ = '2.2.0'\n")
    proc = subprocess.run(
        [sys.executable, '-c', 'import mmmaps'], cwd=REPO_ROOT, capture_output=True, text=True,
        env={'PYTHONPATH': f'{tmp_path}:{REPO_ROOT}', 'PATH': '/usr/bin:/bin'}, timeout=300)
    assert proc.returncode != 0
    assert 'mmmaps requires mmcv>=2.0.0,<2.2.0 but found mmcv==2.2.0' in proc.stderr
    assert 'mmcv==2.1.0' in proc.stderr
