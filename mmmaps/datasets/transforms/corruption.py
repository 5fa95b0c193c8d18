"""Deterministic common corruptions (``imagecorruptions``) as a data transform.

Used by ``tools/test_robustness.py`` for the Panoptic SegFormer robustness study
(paper section 4.4, Table 11: PQ on COCO-C).
"""
import contextlib
import hashlib
import inspect
import os.path as osp
import warnings
from typing import Iterator, Optional, Tuple

import numpy as np
from mmcv.transforms import BaseTransform

from mmdet.registry import TRANSFORMS

try:
    with warnings.catch_warnings():
        # imagecorruptions imports deprecated scipy/pkg_resources names
        warnings.simplefilter('ignore')
        import imagecorruptions
        import imagecorruptions.corruptions as _ic_corruptions
except ImportError:  # pragma: no cover - exercised only without the optional dependency
    imagecorruptions = None
    _ic_corruptions = None


def corruption_names() -> Tuple[str, ...]:
    """Every corruption ``imagecorruptions`` provides (``get_corruption_names('all')``)."""
    _require_imagecorruptions()
    return tuple(imagecorruptions.get_corruption_names('all'))


def _require_imagecorruptions() -> None:
    if imagecorruptions is None:
        raise ImportError('ImageCorruption needs the optional package imagecorruptions: '
                          'pip install imagecorruptions (see requirements/optional.txt)')


# --- compatibility with current scikit-image -------------------------------------------
# imagecorruptions 1.1.2 (the latest release) was written for scikit-image < 0.19:
#  * glass_blur and gaussian_blur call skimage.filters.gaussian(..., multichannel=True);
#    the keyword was removed in 0.19 (now channel_axis=-1), so both raise TypeError.
#  * impulse_noise calls skimage.util.random_noise, which since 0.19 draws from its own
#    fresh numpy Generator instead of numpy's global RNG, so seeding np.random does not
#    make it reproducible.
#  * fog's plasma_fractal allocates with np.float_, which numpy 2 removed (AttributeError).
# They are repaired only while ImageCorruption runs (patched and restored around the call):
# the corruption functions and their constants stay those of imagecorruptions.

def _accepts(func, name: str) -> bool:
    try:
        return name in inspect.signature(func).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False


def _make_gaussian_shim(gaussian):
    def gaussian_compat(image, *args, multichannel=None, **kwargs):
        if multichannel is not None and 'channel_axis' not in kwargs:
            kwargs['channel_axis'] = -1 if multichannel else None
        return gaussian(image, *args, **kwargs)
    return gaussian_compat


def _make_random_noise_shim(random_noise, rng_kw: str):
    def random_noise_from_global_rng(image, *args, **kwargs):
        if kwargs.get(rng_kw) is None:
            # draw the generator's seed from numpy's (seeded) global RNG
            kwargs[rng_kw] = int(np.random.randint(0, 2**31 - 1))
        return random_noise(image, *args, **kwargs)
    return random_noise_from_global_rng


class _NumpyWithFloat_:
    """numpy as imagecorruptions' module sees it, plus numpy 1's ``float_`` (= float64)."""
    float_ = np.float64

    def __getattr__(self, name):
        return getattr(np, name)


@contextlib.contextmanager
def _imagecorruptions_compat() -> Iterator[None]:
    import skimage.util
    patches = []
    gaussian = getattr(_ic_corruptions, 'gaussian', None)
    if gaussian is not None and not _accepts(gaussian, 'multichannel') \
            and _accepts(gaussian, 'channel_axis'):
        patches.append((_ic_corruptions, 'gaussian', _make_gaussian_shim(gaussian)))
    random_noise = skimage.util.random_noise
    for rng_kw in ('rng', 'seed'):  # 'rng' since 0.21, 'seed' in 0.19/0.20
        if _accepts(random_noise, rng_kw):
            patches.append((skimage.util, 'random_noise',
                            _make_random_noise_shim(random_noise, rng_kw)))
            break
    if not hasattr(np, 'float_') and getattr(_ic_corruptions, 'np', None) is np:
        patches.append((_ic_corruptions, 'np', _NumpyWithFloat_()))
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    try:
        for obj, name, value in patches:
            setattr(obj, name, value)
        yield
    finally:
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)


# --- the transform -----------------------------------------------------------------------

@TRANSFORMS.register_module()
class ImageCorruption(BaseTransform):
    """Apply one ``imagecorruptions`` corruption at one severity, reproducibly.

    Insert it right after ``LoadImageFromFile`` in a test pipeline (this is what
    ``tools/test_robustness.py`` does) to evaluate on a corrupted copy of the test set,
    e.g. COCO-C as in Panoptic SegFormer Table 11.

    Required keys:

    - img (np.ndarray): HxWx3 BGR (as loaded by mmcv), HxWx1 or HxW grayscale; uint8,
      or float with values in [0, 255] (``to_float32=True``). Height and width must be
      at least 32 pixels (an ``imagecorruptions`` limit).
    - img_path (str, optional): used to seed the corruption of this image.

    Modified keys:

    - img: the corrupted image, same shape and dtype as the input (uint8 in, uint8 out).
      Colour images are converted BGR -> RGB for ``imagecorruptions`` (which expects
      RGB; e.g. frost overlays and saturate depend on the channel order) and back.

    Added keys:

    - corruption (dict): ``dict(name=..., severity=..., seed=...)`` of what was applied.

    Determinism: ``imagecorruptions`` draws from numpy's global RNG. The transform seeds
    it from a stable hash (sha256) of ``(seed, corruption, severity, file name of
    img_path)`` - or of the image bytes when there is no ``img_path`` - inside a saved and
    restored RNG state: the same image always gets the same corruption (whatever the
    process, worker, order or data-root location), and the RNG state seen by the rest
    of the pipeline is unchanged. The file name rather than the full path is hashed so
    that moving the dataset does not change the corrupted images.

    Args:
        corruption (str): one of ``imagecorruptions.get_corruption_names('all')``.
        severity (int): 1 (mild) to 5 (strong).
        seed (int): changes every image's corruption noise. Defaults to 0.
    """

    def __init__(self, corruption: str, severity: int, seed: int = 0) -> None:
        _require_imagecorruptions()
        names = corruption_names()
        if not isinstance(corruption, str) or corruption not in names:
            raise ValueError(f'unknown corruption {corruption!r}; imagecorruptions provides: '
                             f'{", ".join(names)}')
        if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) \
                or not 1 <= int(severity) <= 5:
            raise ValueError(f'corruption severity must be an integer in 1..5, got '
                             f'{severity!r}')
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f'seed must be an integer, got {seed!r}')
        self.corruption = corruption
        self.severity = int(severity)
        self.seed = int(seed)

    def _image_seed(self, img: np.ndarray, img_path: Optional[str]) -> int:
        if img_path:
            key = osp.basename(str(img_path)).encode('utf-8')
        else:
            key = hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest().encode()
        head = f'{self.seed}\0{self.corruption}\0{self.severity}\0'.encode('utf-8')
        return int.from_bytes(hashlib.sha256(head + key).digest()[:4], 'little')

    def transform(self, results: dict) -> dict:
        img = results.get('img')
        if not isinstance(img, np.ndarray):
            raise KeyError('ImageCorruption needs results["img"] (a numpy image): put it '
                           'after LoadImageFromFile')
        shape, dtype = img.shape, img.dtype
        if img.ndim not in (2, 3) or (img.ndim == 3 and shape[2] not in (1, 3)):
            raise ValueError(f'ImageCorruption expects an HxW, HxWx1 or HxWx3 image, got '
                             f'shape {shape}')
        if min(shape[:2]) < 32:
            raise ValueError(f'imagecorruptions needs images of at least 32x32 pixels, got '
                             f'{shape[1]}x{shape[0]} ({results.get("img_path")})')
        if dtype == np.uint8:
            src = img
        elif np.issubdtype(dtype, np.floating):
            src = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        else:
            raise ValueError(f'ImageCorruption expects a uint8 or float image, got {dtype}')
        gray = src.ndim == 2 or src.shape[2] == 1
        rgb = np.repeat(src.reshape(shape[:2] + (1,)), 3, axis=2) if gray \
            else np.ascontiguousarray(src[..., ::-1])

        state = np.random.get_state()
        try:
            np.random.seed(self._image_seed(src, results.get('img_path')))
            with warnings.catch_warnings(), _imagecorruptions_compat():
                warnings.simplefilter('ignore')
                out = imagecorruptions.corrupt(rgb, severity=self.severity,
                                               corruption_name=self.corruption)
        finally:
            np.random.set_state(state)

        out = np.asarray(out)
        if out.shape != rgb.shape:  # pragma: no cover - imagecorruptions keeps the shape
            raise RuntimeError(f'{self.corruption} changed the image shape from {rgb.shape} '
                               f'to {out.shape}')
        if gray:
            # the three channels are equal unless the corruption coloured them (frost, ...)
            out = np.rint(out.astype(np.float32) @ np.array([0.299, 0.587, 0.114],
                                                            np.float32))
            out = np.clip(out, 0, 255).astype(np.uint8).reshape(shape)
        else:
            out = np.ascontiguousarray(out.astype(np.uint8, copy=False)[..., ::-1])
        results['img'] = out if dtype == np.uint8 else out.astype(dtype)
        results['corruption'] = dict(name=self.corruption, severity=self.severity,
                                     seed=self.seed)
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(corruption={self.corruption!r}, '
                f'severity={self.severity}, seed={self.seed})')
