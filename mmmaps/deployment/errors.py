"""Errors of the ONNX export and runtime, and the check for the optional packages."""
import importlib

# the checkpoint's weights are not those of the config's model: one error for every loader
from ..utils.checkpoint_fit import CheckpointMismatchError  # noqa: F401

DEPLOY_REQUIREMENTS = 'requirements/deploy.txt'


class DeploymentError(ValueError):
    """An export or an exported model cannot be used as asked (the message says why)."""




def require_onnx(what: str, modules=('onnx', 'onnxruntime')) -> None:
    """Raise ImportError naming the install command when one of ``modules`` is missing."""
    missing = []
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ImportError(
            f'{what} needs {" and ".join(missing)}, which {"are" if len(missing) > 1 else "is"} '
            f'not installed: pip install -r {DEPLOY_REQUIREMENTS} (or pip install -e ".[deploy]"; '
            'tools/setup_env.sh --deploy)')
