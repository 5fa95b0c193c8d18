"""Each checkout runs its own code.

The venv of ``tools/setup_env.sh`` is shared by every checkout on a machine, and its editable
install points at the checkout that last ran the set-up. Two things keep checkouts apart:

* every script under ``tools/``, ``demo/`` and ``benchmarks/`` starts with one line that puts
  its own checkout first on ``sys.path``, so ``python A/tools/x.py`` (also under torchrun, and
  through ``custom_imports=dict(imports=['mmmaps'])`` in a config) imports A's package whatever
  the venv has installed, even when the installed checkout was deleted;
* importing mmmaps (:func:`check_checkout`, run first by ``mmmaps.utils``) compares the package
  with the checkout of the running program: the checkout holding the ``__main__`` script, or,
  for ``python -c``, stdin and notebooks, the one holding the current directory. When they
  differ it raises :class:`CheckoutMismatchError` naming both and the fix. A program outside
  any checkout (pytest, your own scripts) uses whatever ``sys.path`` finds.

``MMMAPS_ALLOW_OTHER_CHECKOUT=1`` turns the check off, to run one checkout's program against
another checkout's package on purpose.
"""
import os
import os.path as osp
import sys
from typing import Mapping, Optional

ALLOW_ENV = 'MMMAPS_ALLOW_OTHER_CHECKOUT'
# the mmmaps package this module belongs to
PACKAGE_DIR = osp.dirname(osp.dirname(osp.realpath(__file__)))


class CheckoutMismatchError(RuntimeError):
    """The imported mmmaps is not the package of the running program's checkout."""


def checkout_root(path: str) -> Optional[str]:
    """The mmmaps checkout holding ``path`` (a folder with ``mmmaps/__init__.py`` and
    ``tools/setup_env.sh``), or None."""
    path = osp.realpath(path)
    if not osp.isdir(path):
        path = osp.dirname(path)
    while True:
        if (osp.isfile(osp.join(path, 'mmmaps', '__init__.py'))
                and osp.isfile(osp.join(path, 'tools', 'setup_env.sh'))):
            return path
        parent = osp.dirname(path)
        if parent == path:
            return None
        path = parent


def installed_checkout() -> Optional[str]:
    """The folder of the venv's editable install of mmmaps (pip's ``direct_url.json``), or
    None when mmmaps is not installed editable. The folder may no longer exist."""
    import json
    from importlib import metadata
    from urllib.parse import unquote, urlparse
    try:
        text = metadata.distribution('mmmaps').read_text('direct_url.json')
    except metadata.PackageNotFoundError:
        return None
    try:
        info = json.loads(text or '{}')
    except ValueError:
        return None
    url = urlparse(info.get('url', ''))
    if not info.get('dir_info', {}).get('editable') or url.scheme != 'file':
        return None
    return unquote(url.path)


def find_checkout_mismatch(package_dir: str = PACKAGE_DIR, main_file: Optional[str] = None,
                           cwd: Optional[str] = None,
                           environ: Mapping[str, str] = os.environ) -> Optional[str]:
    """The error message when the running program belongs to another checkout than the
    mmmaps package in ``package_dir``, else None.

    ``main_file`` is the ``__main__`` script (None for ``python -c``, stdin, notebooks: then
    ``cwd`` decides).
    """
    if environ.get(ALLOW_ENV, '') not in ('', '0'):
        return None
    if main_file:
        program = f'the script {osp.realpath(main_file)}'
        expected = checkout_root(main_file)
    else:
        cwd = cwd if cwd is not None else os.getcwd()
        program = f'this interpreter (current directory {osp.realpath(cwd)})'
        expected = checkout_root(cwd)
    package_dir = osp.realpath(package_dir)
    if expected is None or osp.join(expected, 'mmmaps') == package_dir:
        return None
    try:
        installed = installed_checkout()
    except Exception:  # the message must not fail on odd metadata
        installed = None
    if installed is None:
        where = 'mmmaps is not installed editable in this environment'
    else:
        state = '' if osp.isdir(installed) else ', which no longer exists'
        where = f"the environment's editable install of mmmaps is {installed}{state}"
    return (
        f'mmmaps: {program} belongs to the checkout {expected}, but `import mmmaps` found '
        f'another package: {package_dir} ({where}). Its code would run with the tools and '
        f'configs of {expected}.\n'
        f'Fix: put the checkout first, e.g. `PYTHONPATH={expected} python ...` (the scripts '
        f'under tools/, demo/ and benchmarks/ do this themselves with their first line), or '
        f'`cd {expected}` for python -c and notebooks; or install it in the environment: '
        f'`bash {expected}/tools/setup_env.sh`. To use {package_dir} anyway, set '
        f'{ALLOW_ENV}=1.')


def check_checkout() -> None:
    """Raise :class:`CheckoutMismatchError` when this mmmaps is not the running program's."""
    main = sys.modules.get('__main__')
    message = find_checkout_mismatch(main_file=getattr(main, '__file__', None))
    if message is not None:
        raise CheckoutMismatchError(message)
