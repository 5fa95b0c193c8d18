"""Checks of an image a person uploads to the web demo (``demo/web_demo.py``), before any
model sees it: the file must be a readable image, within the demo's size limits, with
three 8-bit colour channels. Each refusal is an :class:`UploadError` whose message says
what was found and what the demo takes; the page shows it as it is."""
import os
import os.path as osp
from dataclasses import dataclass
from typing import Tuple

from .demo import DemoError

# PIL modes that decode to 3 channels of 8 bits without inventing or dropping anything
# (JPEG's YCbCr converts exactly as every image viewer converts it)
COLOUR_MODES = ('RGB', 'YCbCr')
_CHANNELS = {'1': 1, 'L': 1, 'P': 1, 'I': 1, 'F': 1, 'I;16': 1, 'I;16B': 1, 'I;16L': 1,
             'LA': 2, 'La': 2, 'PA': 2, 'RGB': 3, 'YCbCr': 3, 'LAB': 3, 'HSV': 3,
             'RGBA': 4, 'RGBa': 4, 'RGBX': 4, 'CMYK': 4}


class UploadError(DemoError):
    """An upload the demo does not take; the message is meant for the page."""


@dataclass(frozen=True)
class UploadLimits:
    """What the demo accepts: file size in bytes and image size in pixels (width x height)."""
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 25_000_000

    def __post_init__(self):
        if self.max_bytes < 1 or self.max_pixels < 1:
            raise ValueError(f'upload limits must be positive, got {self}')


def _megabytes(n: int) -> str:
    return f'{n / 1024 / 1024:.1f} MB'


def check_upload(path: str, limits: UploadLimits = UploadLimits(), name: str = None
                 ) -> Tuple[int, int]:
    """Check the uploaded file ``path``; its (width, height).

    ``name`` is the file name the person chose (the server keeps uploads under temporary
    names); messages use it. The size in pixels is read from the header before the image
    is decoded, so a huge image is refused without decoding it. The image is then decoded
    once, so that truncated data is refused here; the models read the file themselves (as
    ``tools/test.py`` reads it: a MAPS memory knows an image by its file's content).

    Raises:
        UploadError: no file, empty, over ``limits``, not an image, or not 3 x 8-bit
            colour channels (grey, with alpha, palette, CMYK, 16-bit).
    """
    from PIL import Image, UnidentifiedImageError

    shown = name or (osp.basename(path) if path else 'the upload')
    if not path or not osp.isfile(path):
        raise UploadError('no image was uploaded: choose an image file (PNG, JPEG, ...) or '
                          'click an example')
    size = os.path.getsize(path)
    if size == 0:
        raise UploadError(f'{shown} is empty (0 bytes)')
    if size > limits.max_bytes:
        raise UploadError(f'{shown} is {_megabytes(size)}; this demo takes files up to '
                          f'{_megabytes(limits.max_bytes)} (web_demo.py --max-upload-mb)')
    try:
        with Image.open(path) as image:
            width, height, mode = image.width, image.height, image.mode
            if width * height > limits.max_pixels:
                raise UploadError(
                    f'{shown} is {width}x{height} = {width * height / 1e6:.1f} megapixels; this '
                    f'demo takes images up to {limits.max_pixels / 1e6:.1f} megapixels '
                    '(web_demo.py --max-megapixels)')
            if mode not in COLOUR_MODES:
                channels = _CHANNELS.get(mode)
                what = (f'{channels} channel{"s" if channels != 1 else ""}'
                        if channels else 'an unusual layout')
                raise UploadError(
                    f'{shown} has {what} (PIL mode {mode}); the models take colour images '
                    'with 3 channels of 8 bits (RGB): save it as an RGB PNG or JPEG')
            image.load()
    except UploadError:
        raise
    except UnidentifiedImageError:
        raise UploadError(f'{shown} is not an image this demo can read: upload a PNG or '
                          'JPEG') from None
    except Image.DecompressionBombError as exc:
        raise UploadError(f'{shown} is refused as a decompression bomb: {exc}') from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise UploadError(f'{shown} could not be decoded: {exc}') from None
    return width, height
