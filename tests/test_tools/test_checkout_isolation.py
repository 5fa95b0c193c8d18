"""Each checkout runs its own code (issue 16, "Reliability").

The venv is shared by every checkout and its editable install points at the checkout that last
ran tools/setup_env.sh. These tests build throwaway environments that see the venv's packages
but install mmmaps editable from a folder of their choice (a ``.pth`` line plus pip's
``direct_url.json``, like an editable install), so nothing is reinstalled:

* every script under tools/, demo/ and benchmarks/ imports the checkout it lives in, even when
  another checkout is installed (a probe runs each script's ``--help`` with third-party imports
  stubbed, in well under a second per script);
* a copy of the checkout ("the clone") runs its own mmmaps, not the installed one;
* deleting the installed checkout breaks nothing here (the ModuleNotFoundError of the issue is
  reproduced first, so the environment really lacks mmmaps);
* a program of one checkout that would import another checkout's package fails, naming both.
"""
import glob
import os
import os.path as osp
import shutil
import subprocess
import sys
import sysconfig

import pytest

from mmmaps.utils.checkout import ALLOW_ENV, checkout_root, find_checkout_mismatch
from tests.conftest import REPO_ROOT

REPO = osp.realpath(REPO_ROOT)
SCRIPTS = sorted(
    osp.relpath(p, REPO) for pattern in ('tools/*.py', 'tools/*/*.py', 'demo/*.py',
                                         'benchmarks/*.py')
    for p in glob.glob(osp.join(REPO, pattern))
    if "__name__ == '__main__'" in open(p).read())

# sitecustomize of the child processes (PYTHONPATH): PROBE_MODE=stub stubs every third-party
# import and stops at the first `import mmmaps`, printing where it would come from (or, if the
# script never imports it, where it would come from at exit); PROBE_MODE=report prints the
# file of the mmmaps that was imported, at exit.
SITECUSTOMIZE = r'''
import atexit, importlib.abc, importlib.machinery, os, sys, types
from unittest import mock

MODE = os.environ.get('PROBE_MODE')
FIRST_PARTY = {'mmmaps', 'tools', 'benchmarks', 'demo', 'tests'}


class _Stub(types.ModuleType):
    __path__ = []

    def __getattr__(self, name):
        if name.startswith('__'):
            raise AttributeError(name)
        return mock.MagicMock(name=f'{self.__name__}.{name}')


class _Probe(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        top = name.partition('.')[0]
        if top == 'mmmaps':
            _report('import')
            os._exit(0)
        if top in FIRST_PARTY or top in sys.stdlib_module_names:
            return None
        return importlib.machinery.ModuleSpec(name, self, is_package=True)

    def create_module(self, spec):
        return _Stub(spec.name)

    def exec_module(self, module):
        pass


def _origin():
    for finder in sys.meta_path:
        if isinstance(finder, _Probe) or not hasattr(finder, 'find_spec'):
            continue
        spec = finder.find_spec('mmmaps', None)
        if spec is not None:
            return spec.origin
    return None


def _report(when):
    print(f'PROBE {when} {_origin()}', flush=True)


def _imported():
    module = sys.modules.get('mmmaps')
    print(f"MMMAPS_FILE {getattr(module, '__file__', None)}", flush=True)


if MODE == 'stub':
    sys.meta_path.insert(0, _Probe())
    atexit.register(_report, 'exit')
elif MODE == 'report':
    atexit.register(_imported)
'''


def _copy_checkout(dst):
    """The parts of this checkout a tool run needs: the package and the tools."""
    ignore = shutil.ignore_patterns('__pycache__', '*.pyc')
    for name in ('mmmaps', 'tools'):
        shutil.copytree(osp.join(REPO, name), osp.join(dst, name), ignore=ignore)
    shutil.copy(osp.join(REPO, 'setup.cfg'), dst)
    return osp.realpath(dst)


def _make_env(root, installed):
    """A venv that sees this interpreter's packages (without their .pth files, so without its
    editable mmmaps) and has mmmaps installed editable from ``installed``. Returns its python."""
    venv = osp.join(root, 'venv')
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', venv], check=True,
                   capture_output=True, timeout=120)
    python = osp.join(venv, 'bin', 'python')
    site = subprocess.run([python, '-c', 'import sysconfig; print(sysconfig.get_path("purelib"))'],
                          check=True, capture_output=True, text=True).stdout.strip()
    deps = sorted({sysconfig.get_path('purelib'), sysconfig.get_path('platlib')})
    if osp.isdir(osp.join(deps[0], 'mmmaps')):
        pytest.skip('mmmaps is installed non-editable in this environment')
    with open(osp.join(site, 'zz-shared-venv.pth'), 'w') as f:
        f.write('\n'.join(deps) + '\n')
    with open(osp.join(site, '__editable__.mmmaps-0.1.0.pth'), 'w') as f:
        f.write(installed + '\n')
    info = osp.join(site, 'mmmaps-0.1.0.dist-info')
    os.makedirs(info)
    with open(osp.join(info, 'METADATA'), 'w') as f:
        f.write('Metadata-Version: 2.1\nName: mmmaps\nVersion: 0.1.0\n')
    with open(osp.join(info, 'direct_url.json'), 'w') as f:
        f.write('{"dir_info": {"editable": true}, "url": "file://%s"}' % installed)
    return python


def _run(python, args, tmp_path, cwd, mode='report', extra_env=None, timeout=300):
    probe = tmp_path / 'probe_site'
    probe.mkdir(exist_ok=True)
    (probe / 'sitecustomize.py').write_text(SITECUSTOMIZE)
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', ALLOW_ENV)}
    env.update(PYTHONPATH=str(probe), PROBE_MODE=mode, OMP_NUM_THREADS='1',
               PYTHONDONTWRITEBYTECODE='1')
    env.update(extra_env or {})
    return subprocess.run([python] + args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _marker(line_prefix, proc):
    lines = [line for line in proc.stdout.splitlines() if line.startswith(line_prefix)]
    assert lines, f'no {line_prefix!r} line:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}'
    return lines[-1].split(' ', 2)[-1]


def test_every_script_imports_its_own_checkout(tmp_path):
    """With a decoy checkout installed (and first on PYTHONPATH), each script's mmmaps is
    still this checkout's. A script without its first line picks the decoy and fails here."""
    assert len(SCRIPTS) >= 20, SCRIPTS
    decoy = tmp_path / 'decoy'
    (decoy / 'mmmaps').mkdir(parents=True)
    (decoy / 'mmmaps' / '__init__.py').write_text('raise SystemExit("decoy imported")\n')
    wrong = []
    for script in SCRIPTS:
        proc = _run(sys.executable, [osp.join(REPO, script), '--help'], tmp_path, cwd=tmp_path,
                    mode='stub', extra_env={'PYTHONPATH': f'{tmp_path / "probe_site"}:{decoy}'},
                    timeout=60)
        origin = _marker('PROBE', proc)
        if origin != osp.join(REPO, 'mmmaps', '__init__.py'):
            wrong.append(f'{script}: {origin}\n{proc.stderr[-800:]}')
    assert not wrong, ('scripts that would not import their checkout (first line: '
                       "import os, sys; sys.path.insert(0, os.path.realpath(__file__ + '/../..'))"
                       '):\n' + '\n'.join(wrong))


def test_tool_of_a_clone_imports_the_clone(tmp_path):
    """This checkout is installed; the clone's tool, started from this checkout's folder or as
    `python -m` in the clone, imports the clone's mmmaps."""
    clone = _copy_checkout(tmp_path / 'clone')
    python = _make_env(str(tmp_path), installed=REPO)
    tool = osp.join('tools', 'dataset_converters', 'make_synthetic_panoptic.py')
    for args, cwd in (([osp.join(clone, tool), '--help'], REPO),
                      (['-m', tool[:-3].replace('/', '.'), '--help'], clone)):
        proc = _run(python, args, tmp_path, cwd=cwd, mode='stub')
        assert _marker('PROBE', proc) == osp.join(clone, 'mmmaps', '__init__.py'), args
    # the control: a program outside any checkout gets the installed one
    proc = _run(python, ['-c', 'import mmmaps'], tmp_path, cwd=tmp_path, mode='stub')
    assert _marker('PROBE', proc) == osp.join(REPO, 'mmmaps', '__init__.py')


def test_deleting_the_installed_checkout_breaks_nothing_here(tmp_path):
    """The installed checkout is deleted: a bare `import mmmaps` fails as in the issue, this
    checkout's tool still runs, with this checkout's package."""
    other = _copy_checkout(tmp_path / 'other')
    python = _make_env(str(tmp_path), installed=other)
    shutil.rmtree(other)
    bare = _run(python, ['-c', 'import mmmaps'], tmp_path, cwd=tmp_path)
    assert bare.returncode == 1
    assert "ModuleNotFoundError: No module named 'mmmaps'" in bare.stderr, bare.stderr
    out = tmp_path / 'synthetic'
    proc = _run(python, [osp.join(REPO, 'tools', 'dataset_converters',
                                  'make_synthetic_panoptic.py'), '--out', str(out),
                         '--num-train', '2', '--num-val', '1', '--size', '32', '32'],
                tmp_path, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _marker('MMMAPS_FILE', proc) == osp.join(REPO, 'mmmaps', '__init__.py')


def test_foreign_package_is_reported_with_both_paths(tmp_path):
    """A program of the clone that does not put the clone first would import this checkout's
    package: it fails before any model code runs, naming both checkouts and the fixes; in a
    clone's subfolder `python -c` is checked by the current directory."""
    clone = _copy_checkout(tmp_path / 'clone')
    os.makedirs(osp.join(clone, 'work_dirs'))
    script = osp.join(clone, 'work_dirs', 'my_script.py')
    with open(script, 'w') as f:
        f.write('import mmmaps\nprint("MMMAPS_FILE", mmmaps.__file__)\n')
    python = _make_env(str(tmp_path), installed=REPO)
    proc = _run(python, [script], tmp_path, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    err = proc.stderr
    assert 'mmmaps.utils.checkout.CheckoutMismatchError' in err, err
    assert f'the script {script} belongs to the checkout {clone}' in err, err
    assert f'another package: {REPO}/mmmaps' in err, err
    assert f"the environment's editable install of mmmaps is {REPO})" in err, err
    assert f'PYTHONPATH={clone} python' in err and f'bash {clone}/tools/setup_env.sh' in err
    assert f'{ALLOW_ENV}=1' in err, err

    console = _run(python, ['-c', 'import mmmaps'], tmp_path, cwd=osp.join(clone, 'work_dirs'))
    assert console.returncode == 1
    assert (f'this interpreter (current directory {clone}/work_dirs) belongs to the checkout '
            f'{clone}, but `import mmmaps` found another package: {REPO}/mmmaps'
            in console.stderr), console.stderr


def test_mismatch_rules(tmp_path, monkeypatch):
    """Which program counts as which checkout, the installed checkout that no longer exists,
    and the override."""
    def checkout(name):
        root = tmp_path / name
        (root / 'mmmaps').mkdir(parents=True)
        (root / 'mmmaps' / '__init__.py').write_text('')
        (root / 'tools').mkdir()
        (root / 'tools' / 'setup_env.sh').write_text('')
        return osp.realpath(root)

    a, b = checkout('a'), checkout('b')
    pkg_b = osp.join(b, 'mmmaps')
    assert checkout_root(osp.join(a, 'tools', 'deep', 'x.py')) == a
    assert checkout_root(str(tmp_path)) is None
    # the same checkout, a program outside any checkout, the override: no complaint
    assert find_checkout_mismatch(pkg_b, main_file=osp.join(b, 'tools', 'x.py'), environ={}) is None
    assert find_checkout_mismatch(pkg_b, main_file=str(tmp_path / 'x.py'), environ={}) is None
    assert find_checkout_mismatch(pkg_b, cwd=str(tmp_path), environ={}) is None
    assert find_checkout_mismatch(pkg_b, main_file=osp.join(a, 'x.py'),
                                  environ={ALLOW_ENV: '1'}) is None
    # a script of a, or python -c in a, with b's package
    message = find_checkout_mismatch(pkg_b, main_file=osp.join(a, 'tools', 'x.py'), environ={})
    assert f'belongs to the checkout {a}' in message and f'another package: {pkg_b}' in message
    assert find_checkout_mismatch(pkg_b, main_file=osp.join(a, 'tools', 'x.py'),
                                  environ={ALLOW_ENV: '0'}) == message
    message = find_checkout_mismatch(pkg_b, cwd=osp.join(a, 'tools'), environ={})
    assert f'current directory {a}/tools) belongs to the checkout {a}' in message
    # the environment's installed checkout, named, and said to be gone when it is
    monkeypatch.setattr('mmmaps.utils.checkout.installed_checkout', lambda: str(tmp_path / 'gone'))
    message = find_checkout_mismatch(pkg_b, main_file=osp.join(a, 'x.py'), environ={})
    assert f"editable install of mmmaps is {tmp_path / 'gone'}, which no longer exists" in message
