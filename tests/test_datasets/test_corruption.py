import glob
import os.path as osp

import numpy as np
import pytest

from imagecorruptions import corrupt, get_corruption_names  # noqa: E402
from mmcv.transforms import LoadImageFromFile  # noqa: E402

from mmdet.registry import TRANSFORMS  # noqa: E402
from mmmaps.datasets.transforms import ImageCorruption  # noqa: E402

ALL = get_corruption_names('all')


@pytest.fixture(scope='module')
def loaded(synthetic_root):
    """A val image of the synthetic dataset as mmcv loads it (uint8 BGR, 64x64)."""
    path = sorted(glob.glob(osp.join(synthetic_root, 'val', '*.jpg')))[0]
    return LoadImageFromFile()(dict(img_path=path))


def _apply(results, corruption, severity=3, seed=0, **extra):
    results = dict(results, img=results['img'].copy(), **extra)
    return ImageCorruption(corruption, severity, seed)(results)['img']


def _sharpness(img):
    """Mean absolute difference of horizontally neighbouring pixels."""
    img = img.astype(np.float64)
    return np.abs(np.diff(img, axis=1)).mean()


def test_registered_in_mmdet_transforms():
    import mmmaps  # noqa: F401
    t = TRANSFORMS.build(dict(type='ImageCorruption', corruption='fog', severity=2, seed=3))
    assert isinstance(t, ImageCorruption)
    assert repr(t) == "ImageCorruption(corruption='fog', severity=2, seed=3)"


@pytest.mark.parametrize('corruption', ALL)
def test_every_corruption_keeps_shape_dtype_is_deterministic_and_changes_pixels(
        loaded, corruption):
    img = loaded['img']
    assert img.dtype == np.uint8 and img.ndim == 3
    out = _apply(loaded, corruption)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert not np.array_equal(out, img)
    # same image, same settings, a fresh instance -> identical
    assert np.array_equal(out, _apply(loaded, corruption))
    # another severity -> a different image
    assert not np.array_equal(out, _apply(loaded, corruption, severity=5))


@pytest.mark.parametrize('corruption', ['gaussian_noise', 'shot_noise', 'impulse_noise',
                                        'speckle_noise', 'glass_blur', 'snow', 'spatter',
                                        'frost', 'elastic_transform'])
def test_random_corruptions_depend_on_seed_and_image_name_only(loaded, corruption):
    out = _apply(loaded, corruption)
    assert not np.array_equal(out, _apply(loaded, corruption, seed=1))
    assert not np.array_equal(out, _apply(loaded, corruption, img_path='/x/other.jpg'))
    # the file name, not the directory, seeds the corruption: moving the data is harmless
    moved = '/elsewhere/val/' + osp.basename(loaded['img_path'])
    assert np.array_equal(out, _apply(loaded, corruption, img_path=moved))


def test_pixel_statistics_move_the_expected_way(loaded):
    img = loaded['img']
    mean, std, sharp = img.mean(), img.astype(float).std(), _sharpness(img)
    noisy = [_apply(loaded, 'gaussian_noise', s) for s in (1, 5)]
    assert sharp < _sharpness(noisy[0]) < _sharpness(noisy[1])
    blurred = [_apply(loaded, 'defocus_blur', s) for s in (1, 5)]
    assert sharp > _sharpness(blurred[0]) > _sharpness(blurred[1])
    assert _apply(loaded, 'brightness', 5).mean() > mean + 20
    assert _apply(loaded, 'contrast', 5).astype(float).std() < 0.5 * std
    impulse = _apply(loaded, 'impulse_noise', 5)
    # salt and pepper: many pixels set to 0 or 255 in some channel
    assert ((impulse == 0) | (impulse == 255)).mean() > ((img == 0) | (img == 255)).mean() + 0.1


def test_colour_order_is_converted(loaded):
    """imagecorruptions expects RGB: saturate (deterministic) must act on RGB."""
    img = loaded['img']
    expected = corrupt(np.ascontiguousarray(img[..., ::-1]), severity=4,
                       corruption_name='saturate')[..., ::-1]
    out = _apply(loaded, 'saturate', 4)
    assert np.array_equal(out, expected)
    wrong = corrupt(img, severity=4, corruption_name='saturate')
    assert not np.array_equal(out, wrong)


def test_numpy_rng_state_is_restored(loaded):
    np.random.seed(1234)
    state = np.random.get_state()
    expected = np.random.random_sample(5)
    np.random.set_state(state)
    for corruption in ('gaussian_noise', 'impulse_noise', 'glass_blur', 'frost'):
        _apply(loaded, corruption)
    after = np.random.get_state()
    assert after[0] == state[0] and np.array_equal(after[1], state[1]) and after[2] == state[2]
    np.testing.assert_array_equal(np.random.random_sample(5), expected)


def test_grayscale_and_float_inputs_keep_shape_and_dtype(loaded):
    gray = dict(loaded, img=loaded['img'][..., 1].copy())
    out = _apply(gray, 'gaussian_noise')
    assert out.shape == gray['img'].shape and out.dtype == np.uint8
    gray1 = dict(loaded, img=loaded['img'][..., 1:2].copy())
    assert _apply(gray1, 'fog').shape == gray1['img'].shape
    as_float = dict(loaded, img=loaded['img'].astype(np.float32))
    out = _apply(as_float, 'gaussian_noise')
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, _apply(loaded, 'gaussian_noise'))


def test_records_what_was_applied(loaded):
    results = ImageCorruption('snow', 2, seed=7)(dict(loaded, img=loaded['img'].copy()))
    assert results['corruption'] == dict(name='snow', severity=2, seed=7)


@pytest.mark.parametrize('name', ['gaussian', 'Gaussian_noise', '', None, 'zoom'])
def test_bad_corruption_name(name):
    with pytest.raises(ValueError, match='unknown corruption') as err:
        ImageCorruption(name, 1)
    assert 'gaussian_noise' in str(err.value)  # lists what is available


@pytest.mark.parametrize('severity', [0, 6, -1, 2.5, '3', True, None])
def test_bad_severity(severity):
    with pytest.raises(ValueError, match='severity must be an integer in 1..5'):
        ImageCorruption('fog', severity)


def test_bad_inputs():
    t = ImageCorruption('fog', 1)
    with pytest.raises(ValueError, match='at least 32x32'):
        t(dict(img=np.zeros((16, 64, 3), np.uint8), img_path='a.jpg'))
    with pytest.raises(ValueError, match='HxWx3'):
        t(dict(img=np.zeros((64, 64, 4), np.uint8)))
    with pytest.raises(KeyError, match='LoadImageFromFile'):
        t(dict(img_path='a.jpg'))
