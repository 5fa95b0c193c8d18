"""Frozen backbone towers for the memory encoders: loading, sharing and fingerprints.

A tower is built either from a local checkpoint file or, with ``pretrained=None``, from a
random initialisation that depends only on ``seed``: the memory bank is written by one
process and queried by another, so even random weights must agree between them. Towers
are shared through a process-wide cache keyed by their full spec, so several encoders with
the same spec hold one copy of the weights (identical by construction).
"""
import contextlib
import hashlib
import os
import pickle
import threading
import weakref
from typing import Iterator, Optional

import torch
from torch import nn

from ..storage import MemoryBankError

__all__ = [
    'CLIP_MEAN', 'CLIP_STD', 'IMAGENET_MEAN', 'IMAGENET_STD', 'CLIP_WEIGHTS_HINT',
    'DINO_WEIGHTS_HINT', 'resolve_checkpoint', 'file_sha256', 'weights_fingerprint',
    'seeded_init', 'default_quick_gelu', 'load_clip_visual', 'register_open_clip_configs',
    'load_timm_vit', 'clear_tower_cache', 'EncoderWeightsError', 'UntrustedEncoderWeightsError'
]

# RGB, on the 0-255 pixel scale
CLIP_MEAN = tuple(255 * v for v in (0.48145466, 0.4578275, 0.40821073))
CLIP_STD = tuple(255 * v for v in (0.26862954, 0.26130258, 0.27577711))
IMAGENET_MEAN = tuple(255 * v for v in (0.485, 0.456, 0.406))
IMAGENET_STD = tuple(255 * v for v in (0.229, 0.224, 0.225))

CLIP_WEIGHTS_HINT = (
    'The CLIP encoders expect the open_clip ViT-B-16 OpenAI checkpoint, e.g. '
    '`open_clip_pytorch_model.bin` (or `open_clip_model.safetensors`) from the Hugging Face hub '
    'repo `timm/vit_base_patch16_clip_224.openai`, or fetch it on a machine with internet with '
    '`python -c "import open_clip; open_clip.create_model(\'ViT-B-16\', pretrained=\'openai\', '
    'cache_dir=DIR)"` and use the file it stores under DIR')
DINO_WEIGHTS_HINT = (
    'The DINO encoders expect `dino_vitbase16_pretrain.pth` from '
    'https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth')



class EncoderWeightsError(MemoryBankError):
    """A memory encoder's weights file (``pretrained``) is not a checkpoint of its tower:
    unreadable, truncated, or the weights of another model. The message names the file and
    what was expected; :func:`~mmmaps.memory.encoders.build_memory_encoder` adds the config
    key that points at it (:meth:`at_key`)."""

    def __init__(self, path: str, problem: str, expected: str, key: str = ''):
        self.path, self.problem, self.expected, self.key = path, problem, expected, key
        where = f'{key} = ' if key else 'memory encoder weights '
        super().__init__(f'{where}{path}: {problem}; expected {expected}')

    def at_key(self, key: str) -> 'EncoderWeightsError':
        """The same error, naming the config key that points at the file."""
        return type(self)(self.path, self.problem, self.expected, key)


class UntrustedEncoderWeightsError(EncoderWeightsError, pickle.UnpicklingError):
    """The weights file holds pickled objects that are not tensors or plain data (a crafted
    file): torch's weights-only unpickler refused them, nothing of the file was run."""


def _first_line(exc: BaseException, limit: int = 240) -> str:
    text = ' '.join(str(exc).split())  # torch's load_state_dict errors span lines
    return f'{type(exc).__name__}: {text[:limit]}{"..." if len(text) > limit else ""}'


# where an error was raised while *reading* a weights file (rather than fitting it to a model)
_READERS = (os.sep + os.path.join('torch', 'serialization.py'),
            os.sep + os.path.join('torch', '_weights_only_unpickler.py'),
            os.sep + 'safetensors' + os.sep, os.sep + 'zipfile')


def _while_reading(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if any(part in tb.tb_frame.f_code.co_filename for part in _READERS):
            return True
        tb = tb.tb_next
    return False


class _ReadingWeights:
    """Turns a failure of loading ``path`` into its tower into one
    :class:`EncoderWeightsError` line naming the file (only the loading runs inside: the
    architecture was checked before)."""

    def __init__(self, path: str, arch: str, expected: str):
        self.path, self.arch, self.expected = path, arch, expected

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None or not isinstance(exc, Exception) or isinstance(exc, MemoryError):
            return False
        if isinstance(exc, pickle.UnpicklingError) and 'GLOBAL' in str(exc):
            raise UntrustedEncoderWeightsError(
                self.path, 'holds pickled objects that are not tensors (torch\'s weights-only '
                f'unpickler refused them; nothing of the file was run: {_first_line(exc)})',
                self.expected) from exc
        if _while_reading(exc) or isinstance(exc, (EOFError, pickle.UnpicklingError)):
            problem = ('cannot be read: it is truncated or not a PyTorch/safetensors checkpoint '
                       f'({_first_line(exc)})')
        else:
            problem = f'does not fit the {self.arch} tower ({_first_line(exc)})'
        raise EncoderWeightsError(self.path, problem, self.expected) from exc


_cache_lock = threading.Lock()
# Weak values: a tower lives as long as some encoder holds it, and is rebuilt (identically)
# once all of them are gone.
_tower_cache: 'weakref.WeakValueDictionary[tuple, nn.Module]' = weakref.WeakValueDictionary()
_sha_cache = {}


def resolve_checkpoint(pretrained: Optional[str], hint: str) -> Optional[str]:
    """Absolute path of a checkpoint file, ``None`` for random init.

    Raises:
        FileNotFoundError: the file does not exist; the message says how to obtain it.
    """
    if pretrained is None:
        return None
    path = os.path.abspath(os.path.expanduser(str(pretrained)))
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f'Memory encoder checkpoint not found: {path}. {hint}. Set the encoder config key '
            '`pretrained` to the path of the downloaded file, or to None for a deterministic '
            'random initialisation (controlled by `seed`).')
    return path


def file_sha256(path: str) -> str:
    """sha256 hex digest of a file, cached per (path, size, mtime)."""
    stat = os.stat(path)
    key = (path, stat.st_size, stat.st_mtime_ns)
    if key not in _sha_cache:
        digest = hashlib.sha256()
        with open(path, 'rb') as f:
            for chunk in iter(lambda: f.read(1 << 22), b''):
                digest.update(chunk)
        _sha_cache[key] = digest.hexdigest()
    return _sha_cache[key]


def weights_fingerprint(module: nn.Module, samples_per_tensor: int = 1024) -> str:
    """Cheap sha256 fingerprint of a module's weights.

    Hashes every state-dict entry's name, dtype and shape plus up to ``samples_per_tensor``
    values taken at a fixed stride. Exact bit patterns are hashed (no reductions), so the
    result does not depend on the device the weights live on.
    """
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(f'{name}|{tensor.dtype}|{tuple(tensor.shape)}'.encode())
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // samples_per_tensor)
        sample = flat[::step][:samples_per_tensor].to('cpu', torch.float64)
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Seed the CPU generator for model creation and restore the caller's RNG state after."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(int(seed))
        yield


def _freeze(module: nn.Module) -> nn.Module:
    module.eval()
    for param in module.parameters():
        param.requires_grad_(False)
    return module


def _cached(key: tuple, build) -> nn.Module:
    kind, arch, checkpoint, seed = key[:4]
    if checkpoint is not None:
        # every weight comes from the file, so the seed does not matter for sharing
        key = (kind, arch, checkpoint, None) + key[4:]
    with _cache_lock:
        tower = _tower_cache.get(key)
        if tower is None:
            tower = _freeze(build())
            _tower_cache[key] = tower
        return tower


def clear_tower_cache() -> None:
    """Forget the shared towers (encoders that hold one keep it)."""
    with _cache_lock:
        _tower_cache.clear()


def default_quick_gelu(arch: str) -> bool:
    """Whether open_clip's OpenAI weights for ``arch`` were trained with QuickGELU.

    open_clip builds e.g. ``ViT-B-16`` with nn.GELU, while the OpenAI checkpoint was trained
    with QuickGELU; loading it from a file does not switch the activation by itself.
    """
    import open_clip
    return bool(open_clip.get_pretrained_cfg(arch, 'openai').get('quick_gelu', False))


MODEL_CONFIG_DIR = os.path.join(os.path.dirname(__file__), 'model_configs')


def register_open_clip_configs() -> None:
    """Make mmmaps' own open_clip architectures (``model_configs/*.json``, names starting
    with ``mmmaps-``) known to ``open_clip.create_model``. Idempotent."""
    import open_clip
    if 'mmmaps-ViT-Ti-16-112' not in open_clip.list_models():
        open_clip.add_model_config(MODEL_CONFIG_DIR)


def load_clip_visual(arch: str, checkpoint: Optional[str], seed: int,
                     quick_gelu: bool) -> nn.Module:
    """Frozen, shared ``open_clip`` visual tower (the text tower is dropped).

    Args:
        arch: open_clip model name, e.g. ``'ViT-B-16'``, or one of mmmaps' own
            (``mmmaps-ViT-Ti-16-112``: the CPU stand-in of ``tools/pretrain_encoder.py``).
        checkpoint: absolute path of an open_clip checkpoint, or None for random init.
        seed: seed of the random init (irrelevant when a checkpoint is loaded).
        quick_gelu: build the MLPs with QuickGELU.
    """
    import open_clip
    register_open_clip_configs()
    if open_clip.get_model_config(arch) is None:
        raise ValueError(f'arch={arch!r} is not an open_clip architecture (open_clip.'
                         'list_models() lists them; mmmaps adds mmmaps-ViT-Ti-16-112)')
    expected = (f'an open_clip state dict of {arch} (.bin/.pt/.pth or .safetensors; '
                'tools/pretrain_encoder.py writes one for mmmaps-ViT-Ti-16-112)')

    def build():
        with seeded_init(seed):
            if checkpoint is None:
                return open_clip.create_model(arch, force_quick_gelu=quick_gelu).visual
            with _ReadingWeights(checkpoint, arch, expected):
                model = open_clip.create_model(arch, pretrained=checkpoint,
                                               force_quick_gelu=quick_gelu)
        return model.visual

    return _cached(('open_clip', arch, checkpoint, int(seed), bool(quick_gelu)), build)


def load_timm_vit(arch: str, checkpoint: Optional[str], seed: int) -> nn.Module:
    """Frozen, shared ``timm`` ViT (no classifier head, any input size).

    Args:
        arch: timm model name, e.g. ``'vit_base_patch16_224.dino'``.
        checkpoint: absolute path of a state dict for that model (timm or original DINO
            naming), or None for random init.
        seed: seed of the random init.
    """
    import timm
    if not timm.is_model(arch):
        raise ValueError(f'arch={arch!r} is not a timm model name (e.g. '
                         '\'vit_base_patch16_224.dino\')')
    expected = (f'a state dict of the timm model {arch} (timm or original DINO naming, e.g. '
                'dino_vitbase16_pretrain.pth for vit_base_patch16_224.dino)')

    def build():
        kwargs = dict(num_classes=0, dynamic_img_size=True)
        with seeded_init(seed):
            if checkpoint is None:
                return timm.create_model(arch, pretrained=False, **kwargs)
            with _ReadingWeights(checkpoint, arch, expected):
                return timm.create_model(arch, pretrained=True,
                                         pretrained_cfg_overlay=dict(file=checkpoint), **kwargs)

    return _cached(('timm', arch, checkpoint, int(seed)), build)
