"""demo/web_demo.py: the page's answers, checked from outside the demo.

The app runs as a user starts it (a subprocess on a free loopback port) with an untrained
Mask2Former and an untrained MAPS (tools/misc/init_checkpoint.py) and the session's tiny
memory. It is driven through ``gradio_client`` (the ``/segment`` API) and through a real
headless Chromium (playwright). What it answers is compared with independent paths: the
PyTorch inference API (``mmmaps.apis.inference_panoptic``, the pan map's pixels counted
here), ``ExternalMemory.retrieve`` on the image as the model sees it, and the object bank's
own files.
"""
import os.path as osp
import shutil

import numpy as np
import pytest

from tests.conftest import (REPO_ROOT, TINY_M2F, init_checkpoints, load_config_with_root,
                            load_tool)
from tests.web_demo_utils import pan_segments, running_demo, segment, table_rows

gradio_client = pytest.importorskip(
    'gradio_client', reason='the web demo needs requirements/demo.txt '
    '(bash tools/setup_env.sh --tests installs it)')

TINY_MAPS = osp.join(REPO_ROOT, 'configs', 'maps', 'maps_r18_synthetic-panoptic.py')
MAX_PIXELS = 10_000  # the demo's limit in these tests: 64x64 val images pass, 120x100 not
REFUSED = '**Upload refused:**'
# an untrained model scores no query above mmdet's thresholds (0.8): keep every query, so
# that there are segments to compare (passed to the demo and to the reference alike)
KEEP_ALL = {'model.test_cfg.object_mask_thr': 0.0, 'model.test_cfg.iou_thr': 0.0}


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    return init_checkpoints(dict(mask2former=TINY_M2F, maps=TINY_MAPS),
                            tmp_path_factory.mktemp('web_demo_checkpoints'))


@pytest.fixture(scope='module')
def server(checkpoints, synthetic_root, synthetic_memory, tmp_path_factory):
    """The demo for Mask2Former and MAPS side by side."""
    args = [TINY_M2F, checkpoints['mask2former'], TINY_MAPS, checkpoints['maps'],
            '--memory', synthetic_memory, '--device', 'cpu',
            '--max-megapixels', str(MAX_PIXELS / 1e6), '--max-upload-mb', '0.5',
            '--cfg-options'] + [f'{k}={v}' for k, v in KEEP_ALL.items()]
    with running_demo(args, synthetic_root, tmp_path_factory.mktemp('web_demo')) as server:
        yield server


@pytest.fixture(scope='module')
def client(server):
    return gradio_client.Client(server['url'], verbose=False)


@pytest.fixture(scope='module')
def reference(checkpoints, synthetic_root, synthetic_memory, val_image):
    """The same image through the PyTorch inference API (not the demo's helpers)."""
    from mmmaps.apis import inference_panoptic, init_panoptic_model
    out = {}
    for name, config, memory in (('mask2former', TINY_M2F, None),
                                 ('maps', TINY_MAPS, synthetic_memory)):
        cfg = load_config_with_root(config, synthetic_root, KEEP_ALL)
        model = init_panoptic_model(cfg, checkpoints[name], device='cpu', memory_root=memory)
        sample = inference_panoptic(model, val_image)
        out[name] = dict(model=model, cfg=cfg, sample=sample,
                         segments=pan_segments(sample, model.dataset_meta['classes']))
    cfg = load_config_with_root(TINY_MAPS, synthetic_root, {
        **KEEP_ALL, 'model.panoptic_head.use_scene_memory': False,
        'model.panoptic_head.use_object_memory': False})
    off = init_panoptic_model(cfg, checkpoints['maps'], device='cpu')
    assert off.memory is None  # a memory-off model loads no index
    out['maps_off'] = dict(segments=pan_segments(inference_panoptic(off, val_image),
                                                 off.dataset_meta['classes']))
    return out


# ---------------------------------------------------------------------------- the API
def test_segments_match_the_inference_api(client, reference, val_image):
    status, models = segment(client, val_image)
    assert status == f'{osp.basename(val_image)}: 64x64'
    for name, outputs in zip(('mask2former', 'maps'), models):
        overlay, _, segments, _, _, timing = outputs
        rows = table_rows(segments)
        expected = reference[name]['segments']
        assert expected, f'{name}: the untrained model predicts no segment; the test is void'
        assert sorted((r[0], int(r[3])) for r in rows) == expected
        things = set(reference[name]['model'].dataset_meta['thing_classes'])
        assert all(r[1] == ('thing' if r[0] in things else 'stuff') for r in rows)
        assert all(r[4] == '' for r in rows if r[1] == 'stuff')
        assert osp.isfile(overlay)
        assert f'{len(rows)} segments in ' in timing and '(pytorch)' in timing


def test_retrievals_match_external_memory_and_the_object_bank(client, reference, val_image,
                                                              synthetic_memory):
    from mmcv.transforms import Compose

    from mmmaps.apis import pipeline_without_annotations
    from mmmaps.memory.external_memory import shows_whole_picture

    _, (m2f, maps) = segment(client, val_image)
    assert table_rows(m2f[4]) == [] and m2f[3] == []  # Mask2Former retrieves nothing
    rows = table_rows(maps[4])

    # ExternalMemory.retrieve on the image as the model sees it (test pipeline, RGB 0-255)
    model, cfg = reference['maps']['model'], reference['maps']['cfg']
    data = Compose(pipeline_without_annotations(cfg))(dict(img_path=val_image, img_id=0))
    image = data['inputs'].flip(0).float()  # the loader's BGR -> RGB
    result = model.memory.retrieve([image], [val_image], training=False,
                                   whole_pictures=[shows_whole_picture(data['data_samples']
                                                                       .metainfo)])
    ids = [i for i in result.image_ids[0].tolist() if i >= 0]
    assert len(ids) == model.memory.k
    assert [int(r[1]) for r in rows] == ids
    assert [r[0] for r in rows] == list(range(1, len(ids) + 1))
    np.testing.assert_allclose([float(r[2]) for r in rows],
                               result.scores[0, :len(ids)].tolist(), atol=1e-3)
    # the inference API's retrieval is the same
    assert reference['maps']['sample'].metainfo['retrieval'].image_ids[0].tolist()[:len(ids)] \
        == ids

    # retrieved objects: the classes of the object bank's entries of each retrieved image,
    # read from the bank's files, in slot order, capped at max_objects
    bank = osp.join(synthetic_memory, 'object')
    offsets = np.load(osp.join(bank, 'offsets.npy'))
    image_ids = np.load(osp.join(bank, 'image_ids.npy')).tolist()
    categories = np.load(osp.join(bank, 'category_ids.npy'))
    classes = model.dataset_meta['classes']
    budget = model.memory.retriever.max_objects
    for row, image_id in zip(rows, ids):
        j = image_ids.index(image_id)
        names = [classes[c] for c in categories[offsets[j]:offsets[j + 1]]][:max(budget, 0)]
        budget -= len(names)
        assert row[3] == ', '.join(names)
    gallery = maps[3]
    assert [g['caption'].split()[2] for g in gallery] == [str(i) for i in ids]
    assert all(osp.isfile(g['image']) for g in gallery)


def test_memory_off_is_the_memory_off_config(client, reference, val_image):
    _, (m2f, maps) = segment(client, val_image, memory_off=True)
    assert m2f[1]['visible'] is False  # Mask2Former has no memory to switch off
    assert maps[1]['visible'] is True and osp.isfile(maps[1]['value'])
    expected = len(reference['maps_off']['segments'])
    assert f'memory off: {expected} segments in ' in maps[5]
    _, (_, maps) = segment(client, val_image, memory_off=False)
    assert maps[1]['visible'] is False and 'memory off' not in maps[5]


def _write_bad_uploads(folder):
    from PIL import Image
    rng = np.random.default_rng(0)
    files = {}
    files['notes.png'] = folder / 'notes.png'
    files['notes.png'].write_text('not an image')
    files['grey.png'] = folder / 'grey.png'
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(files['grey.png'])
    files['rgba.png'] = folder / 'rgba.png'
    Image.fromarray(rng.integers(0, 255, (64, 64, 4), dtype=np.uint8)).save(files['rgba.png'])
    files['wide.png'] = folder / 'wide.png'  # 12000 px > MAX_PIXELS
    Image.fromarray(rng.integers(0, 255, (100, 120, 3), dtype=np.uint8)).save(files['wide.png'])
    files['heavy.png'] = folder / 'heavy.png'  # 0.6 MB > --max-upload-mb 0.5
    files['heavy.png'].write_bytes(files['wide.png'].read_bytes() + bytes(600_000))
    return files


@pytest.mark.parametrize('name,message', [
    ('notes.png', 'notes.png is not an image this demo can read'),
    ('grey.png', 'grey.png has 1 channel (PIL mode L)'),
    ('rgba.png', 'rgba.png has 4 channels (PIL mode RGBA)'),
    ('wide.png', 'wide.png is 120x100 = 0.0 megapixels; this demo takes images up to 0.0'),
    ('heavy.png', 'heavy.png is 0.'),
])
def test_bad_uploads_get_a_message_and_the_server_goes_on(name, message, client, val_image,
                                                          tmp_path, reference):
    path = _write_bad_uploads(tmp_path)[name]
    status, models = segment(client, str(path))
    assert status.startswith(REFUSED) and message in status, status
    assert all(outputs[0] is None and table_rows(outputs[2]) == [] for outputs in models)
    status, models = segment(client, val_image)  # the next request is answered
    assert status.endswith('64x64')
    assert sorted((r[0], int(r[3])) for r in table_rows(models[0][2])) == \
        reference['mask2former']['segments']


def test_a_failing_model_is_reported_in_the_page(tmp_path, val_image):
    """segment_image turns a model's exception into page text (no server needed)."""
    pytest.importorskip('gradio')
    web_demo = load_tool('demo/web_demo.py')
    from mmmaps.apis.upload import UploadLimits

    class Broken:
        name, backend = 'broken', 'pytorch'

        def predict(self, *args, **kwargs):
            raise RuntimeError('out of memory')

    out = web_demo.segment_image([Broken()], UploadLimits(), val_image, False, 0.3)
    assert out[0] == '**Some models failed:** broken: RuntimeError: out of memory'
    assert out[1] is None and 'broken failed' in out[-1]


# ---------------------------------------------------------------------------- upload checks
def test_check_upload_accepts_colour_and_names_every_refusal(tmp_path):
    from PIL import Image

    from mmmaps.apis.upload import UploadError, UploadLimits, check_upload
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / 'ok.png')
    Image.fromarray(rgb).save(tmp_path / 'ok.jpg', quality=90)
    assert check_upload(str(tmp_path / 'ok.png')) == (40, 30)
    assert check_upload(str(tmp_path / 'ok.jpg')) == (40, 30)

    Image.fromarray(rgb).convert('CMYK').save(tmp_path / 'cmyk.jpg')
    Image.fromarray((rng.integers(0, 65535, (30, 40))).astype(np.uint16)).save(
        tmp_path / 'deep.png')
    Image.fromarray(rgb).convert('P').save(tmp_path / 'palette.png')
    (tmp_path / 'empty.png').write_bytes(b'')
    data = (tmp_path / 'ok.png').read_bytes()
    (tmp_path / 'cut.png').write_bytes(data[:len(data) // 2])
    cases = {
        'cmyk.jpg': 'cmyk.jpg has 4 channels (PIL mode CMYK)',
        'deep.png': 'deep.png has 1 channel (PIL mode I;16)',
        'palette.png': 'palette.png has 1 channel (PIL mode P)',
        'empty.png': 'empty.png is empty (0 bytes)',
        'cut.png': 'cut.png could not be decoded',
        'missing.png': 'no image was uploaded',
    }
    for name, message in cases.items():
        with pytest.raises(UploadError) as info:
            check_upload(str(tmp_path / name))
        assert message in str(info.value), (name, str(info.value))
    with pytest.raises(UploadError, match=r'ok.png is 40x30 = 0.0 megapixels; this demo takes '
                                          r'images up to 0.0 megapixels'):
        check_upload(str(tmp_path / 'ok.png'), UploadLimits(max_pixels=1199))
    assert check_upload(str(tmp_path / 'ok.png'), UploadLimits(max_pixels=1200)) == (40, 30)
    size = osp.getsize(tmp_path / 'ok.png')
    with pytest.raises(UploadError, match='ok.png is 0.0 MB; this demo takes files up to'):
        check_upload(str(tmp_path / 'ok.png'), UploadLimits(max_bytes=size - 1))


# ---------------------------------------------------------------------------- a real browser
def _chromium():
    return shutil.which('chromium') or shutil.which('chromium-browser')


def test_a_browser_uploads_an_image_and_sees_the_overlay(server, val_image, tmp_path):
    if _chromium() is None:
        pytest.skip('no chromium on this machine: tools/setup_env.sh --tests installs Debian\'s '
                    'chromium where it runs as root with apt-get (step "headless browser")')
    playwright = pytest.importorskip('playwright.sync_api', reason='playwright is in '
                                     'requirements/tests.txt')
    import cv2
    grey = tmp_path / 'grey.png'
    cv2.imwrite(str(grey), np.full((64, 64), 128, np.uint8))
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=['--no-sandbox'])
        try:
            page = browser.new_page(viewport={'width': 1400, 'height': 1000})
            page.goto(server['url'], wait_until='domcontentloaded', timeout=60_000)
            # a bad upload: the message appears in the page
            page.locator('#upload input[type=file]').set_input_files(str(grey))
            page.locator('#run').click()
            page.locator('#status').get_by_text('Upload refused').wait_for(timeout=60_000)
            assert 'grey.png has 1 channel' in page.locator('#status').inner_text()
            # a val image: both overlays appear, MAPS's retrievals with them
            page.locator('#upload button[aria-label="Clear"]').first.click()
            page.locator('#upload input[type=file]').set_input_files(val_image)
            page.locator('#run').click()
            page.locator('#status').get_by_text('64x64').wait_for(timeout=120_000)
            image = cv2.imread(val_image)
            for i in (0, 1):
                overlay = page.locator(f'#overlay-{i} img')
                overlay.wait_for(state='visible', timeout=60_000)
                # the picture the page shows, as the browser fetched it
                body = page.request.get(overlay.get_attribute('src')).body()
                shown = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
                assert shown is not None and shown.shape[0] % 64 == 0
                factor = shown.shape[0] // 64
                assert factor > 1 and shown.shape == (64 * factor, 64 * factor, 3)
                assert page.evaluate('(img) => img.naturalWidth', overlay.element_handle()) \
                    == 64 * factor
                assert float(shown.std()) > 10, f'overlay {i} looks blank'
                plain = image.repeat(factor, 0).repeat(factor, 1)
                assert np.abs(shown.astype(int) - plain).mean() > 1, \
                    f'overlay {i} is the input image: no prediction drawn'
            assert page.locator('#gallery-1 img').count() == 5
            page.screenshot(path=str(tmp_path / 'page.png'), full_page=True)
        finally:
            browser.close()
    assert 'Traceback' not in server['log'].read_text()
