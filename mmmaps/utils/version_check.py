"""Fail early, with the pin to install, when the OpenMMLab stack does not match."""
from importlib import import_module

# (package import name, pip name, minimum inclusive, maximum exclusive, tested pin)
REQUIRED = (
    ('mmengine', 'mmengine', '0.10.0', '0.11.0', 'mmengine==0.10.7'),
    ('mmcv', 'mmcv', '2.0.0', '2.2.0',
     'MMCV_WITH_OPS=1 pip install --no-build-isolation mmcv==2.1.0'),
    ('mmdet', 'mmdet', '3.3.0', '3.4.0', 'mmdet==3.3.0'),
    ('mmseg', 'mmsegmentation', '1.2.0', '1.3.0', 'mmsegmentation==1.2.2'),
)


def _version_tuple(version: str):
    """'2.1.0rc4' -> (2, 1, 0); pre-release tags are ignored on purpose."""
    parts = []
    for piece in version.split('+')[0].split('.')[:3]:
        digits = ''.join(ch for ch in piece if ch.isdigit()) if not piece.isdigit() else piece
        parts.append(int(digits or 0))
    return tuple(parts + [0] * (3 - len(parts)))


def check_version(name: str, found: str, minimum: str, maximum: str, install: str) -> None:
    """Raise ImportError unless ``minimum <= found < maximum``."""
    if not _version_tuple(minimum) <= _version_tuple(found) < _version_tuple(maximum):
        raise ImportError(
            f'mmmaps requires {name}>={minimum},<{maximum} but found {name}=={found}. '
            f'Install the tested pin: `{install}` (or run `bash tools/setup_env.sh`, '
            'which installs the whole pinned stack).')


def check_openmmlab_versions() -> None:
    """Check mmengine, mmcv, mmdet and mmseg in dependency order.

    mmcv is checked before mmdet is imported, because mmdet asserts on the mmcv
    version itself with a message that does not say what to install.
    """
    for module, pip_name, minimum, maximum, install in REQUIRED:
        try:
            mod = import_module(module)
        except ImportError as err:
            raise ImportError(f'mmmaps requires {pip_name} ({install}); importing '
                              f'{module} failed: {err}') from err
        check_version(pip_name, mod.__version__, minimum, maximum, install)
