"""A web page that segments the images people upload (Gradio), for one or several models.

    python demo/web_demo.py CONFIG CHECKPOINT [CONFIG CHECKPOINT ...] [--memory ROOT] \
        [--device cpu] [--port 7860] [--host 127.0.0.1] [--cfg-options k=v ...]
    python demo/web_demo.py EXPORT_DIR [EXPORT_DIR ...] --backend onnxruntime [--threads N]

Needs ``pip install -r requirements/demo.txt`` (or ``bash tools/setup_env.sh --demo``).

The page takes an image (upload, or one of the examples: the first images of the first
model's test set) and shows, for every model side by side: the panoptic prediction drawn
on the image, a table of its segments (class, thing/stuff, area, score) and how long the
model took. A MAPS model also shows the k training scenes it retrieved for this image
with their similarity and the classes of the objects retrieved with them (the paper's
Fig. 3/4), and, with "memory off" ticked, the prediction of the same checkpoint with both
memories switched off (the paper's Table 7 as a picture; PyTorch backend only).

Each model is what ``tools/test.py`` evaluates: the config's test pipeline, the checks of
``mmmaps.apis.init_panoptic_model`` (class counts, checkpoint fits, the memory the
checkpoint was trained with), the memory of ``memory.root`` or ``--memory ROOT`` (a
deliberate swap, for every MAPS model given). A bad upload (not an image, too large,
not 3 x 8-bit colour channels) is answered with a message in the page; an error inside a
model is shown in the page and logged here, and the server goes on answering.

The same function is served as the API ``/segment`` (``gradio_client``): inputs the image
file, ``memory_off`` and the box score threshold; outputs the status text, then per
model the overlay, the memory-off overlay, the segment table, the retrieval gallery, the
retrieval table and the timing text.
"""
import os, sys; sys.path.insert(0, os.path.realpath(__file__ + '/../..'))  # noqa (this checkout first)

import argparse
import os.path as osp
import traceback
from typing import List, Sequence

from mmengine.config import DictAction

from mmmaps.apis.demo import DemoError
from mmmaps.apis.upload import UploadError, UploadLimits, check_upload

os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')  # no network calls home

SEGMENT_HEADERS = ['class', 'kind', 'instance', 'area (px)', 'score']
RETRIEVAL_HEADERS = ['rank', 'image id', 'similarity', 'retrieved objects']
OUTPUTS_PER_MODEL = 6  # overlay, memory-off overlay, segments, gallery, retrievals, timing
NUM_EXAMPLES = 6
IMAGE_HEIGHT = 320  # pixels on the page: small test images are shown enlarged


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('models', nargs='+', metavar='MODEL',
                        help='pytorch: CONFIG CHECKPOINT pairs; onnxruntime: export folders '
                        '(tools/deployment/export_onnx.py)')
    parser.add_argument('--backend', choices=['pytorch', 'onnxruntime'], default='pytorch')
    parser.add_argument('--memory', default=None, metavar='ROOT',
                        help='MAPS: memory directory of every MAPS model (default: memory.root '
                        'of its config)')
    parser.add_argument('--device', default=None,
                        help='pytorch: device, e.g. cpu or cuda:0 (default: cuda:0 when '
                        'available)')
    parser.add_argument('--threads', type=int, default=None, metavar='N',
                        help='onnxruntime: intra-op threads (default: all cores)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='pytorch: override settings of every config, xxx=yyy format')
    parser.add_argument('--examples', default=None, metavar='DIR',
                        help='folder of example images (default: the first model\'s test '
                        'images)')
    parser.add_argument('--host', default='127.0.0.1',
                        help='address to listen on (0.0.0.0: reachable from other machines)')
    parser.add_argument('--port', type=int, default=7860)
    parser.add_argument('--max-upload-mb', type=float, default=20.0,
                        help='largest upload accepted, in megabytes')
    parser.add_argument('--max-megapixels', type=float, default=25.0,
                        help='largest image accepted, in megapixels (width x height)')
    return parser.parse_args(argv)


def model_specs(args) -> List[tuple]:
    """``[(config, checkpoint)]`` (pytorch) or ``[(export_dir,)]`` (onnxruntime)."""
    if args.backend == 'onnxruntime':
        if args.cfg_options:
            raise DemoError('--cfg-options: an export is run as exported (see '
                            'tools/deployment/onnx_demo.py for post-processing overrides)')
        return [(path,) for path in args.models]
    if len(args.models) % 2:
        raise DemoError(f'the pytorch backend takes CONFIG CHECKPOINT pairs; got '
                        f'{len(args.models)} paths: {" ".join(args.models)}')
    pairs = list(zip(args.models[::2], args.models[1::2]))
    for config, checkpoint in pairs:
        if not config.endswith('.py'):
            raise DemoError(f'{config} is not a config (.py); the pytorch backend takes '
                            'CONFIG CHECKPOINT pairs (an export folder needs --backend '
                            'onnxruntime)')
    return pairs


def load_models(args) -> list:
    from mmmaps.apis.demo_models import DemoModel
    if args.threads is not None and args.threads < 1:
        raise DemoError(f'--threads {args.threads}: must be at least 1')
    specs = model_specs(args)
    models = []
    if args.backend == 'onnxruntime':
        for (export_dir,) in specs:
            models.append(DemoModel.from_export(export_dir, memory_root=args.memory,
                                                num_threads=args.threads))
    else:
        import torch
        device = args.device or ('cuda:0' if torch.cuda.is_available() else 'cpu')
        for config, checkpoint in specs:
            models.append(DemoModel.from_checkpoint(config, checkpoint, device=device,
                                                    cfg_options=args.cfg_options,
                                                    memory_root=_memory_for(config, args)))
    names = [m.name for m in models]
    for i, model in enumerate(models):  # two runs of one config stay apart on the page
        if names.count(model.name) > 1:
            model.name = f'{model.name} ({i + 1})'
    return models


def _memory_for(config: str, args):
    """``--memory`` goes to the MAPS configs of the list (refused when there is none)."""
    if args.memory is None:
        return None
    from mmengine.config import Config

    from mmmaps.apis import uses_memory
    pairs = model_specs(args)
    if not any(uses_memory(Config.fromfile(c)) for c, _ in pairs):
        raise DemoError(f'--memory {args.memory}: none of the configs reads a memory')
    return args.memory if uses_memory(Config.fromfile(config)) else None


def example_images(models, folder=None, num=NUM_EXAMPLES) -> List[str]:
    """The first ``num`` images of ``folder`` or of the first model's test set."""
    if folder is None:
        dataset = models[0].cfg.test_dataloader.dataset
        folder = osp.join(dataset.get('data_root') or '',
                          (dataset.get('data_prefix') or {}).get('img', ''))
        if not osp.isdir(folder):
            return []
    elif not osp.isdir(folder):
        raise FileNotFoundError(f'--examples {folder} is not a folder')
    names = sorted(n for n in os.listdir(folder)
                   if n.lower().endswith(('.png', '.jpg', '.jpeg', '.bmp', '.webp')))
    return [osp.join(folder, n) for n in names[:num]]


# ---------------------------------------------------------------------- one request
def _empty_outputs(models) -> list:
    import gradio as gr
    out = []
    for _ in models:
        out += [None, gr.Image(value=None, visible=False), [], [], [], '']
    return out


def for_display(image):
    """A small image enlarged by a whole factor (nearest neighbour) so that it fills about
    :data:`IMAGE_HEIGHT` pixels; the browser does not enlarge images."""
    if image is None:
        return None
    factor = IMAGE_HEIGHT // max(image.shape[:2])
    return image.repeat(factor, 0).repeat(factor, 1) if factor > 1 else image


def _format_score(score):
    return '' if score is None else round(score, 3)


def segment_image(models, limits: UploadLimits, upload, memory_off: bool,
                  score_thr: float) -> list:
    """The page's answer to one image: status text, then per model the outputs named in
    the module docstring. Never raises: a bad upload or a model's error becomes text."""
    import gradio as gr
    path = upload if isinstance(upload, str) or upload is None else getattr(upload, 'name', None)
    try:
        width, height = check_upload(path, limits)
    except UploadError as exc:
        return [f'**Upload refused:** {exc}'] + _empty_outputs(models)
    outputs, errors = [], []
    for model in models:
        try:
            prediction = model.predict(path, memory_off=memory_off, score_thr=score_thr)
        except Exception as exc:  # noqa: the page reports it; the server keeps answering
            traceback.print_exc()
            errors.append(f'{model.name}: {type(exc).__name__}: {exc}')
            outputs += [None, gr.Image(value=None, visible=False), [], [], [],
                        f'**{model.name} failed** on this image: {type(exc).__name__}: {exc}']
            continue
        timing = f'**{model.name}** ({model.backend}): {len(prediction.segments)} segments ' \
                 f'in {prediction.seconds:.2f} s'
        off = prediction.memory_off
        if off is not None:
            timing += f'; memory off: {len(off.segments)} segments in {off.seconds:.2f} s'
        elif memory_off and model.memory_off_unavailable:
            timing += f'; {model.memory_off_unavailable}'
        outputs += [
            for_display(prediction.overlay),
            gr.Image(value=None if off is None else for_display(off.overlay),
                     visible=off is not None),
            [[s['class'], s['kind'], s['instance'], s['area'], _format_score(s['score'])]
             for s in prediction.segments],
            [(r['image'], f'#{r["rank"]} id {r["image_id"]} sim {r["similarity"]:.3f}')
             for r in prediction.retrievals if r['image'] is not None],
            [[r['rank'], r['image_id'], round(r['similarity'], 4), ', '.join(r['objects'])]
             for r in prediction.retrievals],
            timing]
    status = (f'{osp.basename(path)}: {width}x{height}' if not errors else
              '**Some models failed:** ' + '; '.join(errors))
    return [status] + outputs


# ---------------------------------------------------------------------- the page
def build_app(models: Sequence, examples: Sequence[str], limits: UploadLimits):
    """The Gradio Blocks of the page (not launched)."""
    import functools

    import gradio as gr
    any_memory = any(m.reads_memory for m in models)
    with gr.Blocks(title='mmmaps panoptic segmentation') as app:
        gr.Markdown('## mmmaps: panoptic segmentation\n' + ', '.join(
            f'**{m.name}** ({m.backend}{", reads a memory" if m.reads_memory else ""})'
            for m in models))
        with gr.Row():
            upload = gr.File(label='Image (PNG or JPEG, RGB)', file_types=['image'],
                             type='filepath', elem_id='upload')
            with gr.Column():
                memory_off = gr.Checkbox(
                    value=False, visible=any_memory, elem_id='memory-off',
                    label='MAPS: also predict with the memory switched off (Table 7)')
                score_thr = gr.Slider(0.0, 1.0, value=0.3, step=0.05,
                                      label='draw the boxes of things scoring above')
                run = gr.Button('Segment', variant='primary', elem_id='run')
        status = gr.Markdown(elem_id='status')
        if examples:
            gr.Examples(examples=[[p] for p in examples], inputs=[upload],
                        label='Examples (test images)')
        outputs = [status]
        with gr.Row():
            for i, model in enumerate(models):
                with gr.Column():
                    gr.Markdown(f'### {model.name}')
                    outputs += [
                        gr.Image(label='panoptic prediction', type='numpy', format='png',
                                 interactive=False, height=IMAGE_HEIGHT,
                                 elem_id=f'overlay-{i}'),
                        gr.Image(label='memory off', type='numpy', format='png',
                                 interactive=False, visible=False, height=IMAGE_HEIGHT,
                                 elem_id=f'memory-off-{i}'),
                        gr.Dataframe(headers=SEGMENT_HEADERS, label='segments',
                                     interactive=False, elem_id=f'segments-{i}'),
                        gr.Gallery(label='retrieved training scenes', columns=5,
                                   height=IMAGE_HEIGHT // 2, object_fit='contain',
                                   visible=model.reads_memory, elem_id=f'gallery-{i}'),
                        gr.Dataframe(headers=RETRIEVAL_HEADERS, label='retrieved from memory',
                                     interactive=False, visible=model.reads_memory,
                                     elem_id=f'retrievals-{i}'),
                        gr.Markdown(elem_id=f'timing-{i}')]
        run.click(functools.partial(segment_image, models, limits),
                  inputs=[upload, memory_off, score_thr], outputs=outputs, api_name='segment')
    return app


def main(argv=None):
    args = parse_args(argv)
    try:
        import gradio as gr
    except ImportError:
        raise ImportError('the web demo needs Gradio: pip install -r requirements/demo.txt '
                          '(or bash tools/setup_env.sh --demo)') from None
    if args.max_upload_mb <= 0 or args.max_megapixels <= 0:
        raise DemoError('--max-upload-mb and --max-megapixels must be positive')
    limits = UploadLimits(max_bytes=int(args.max_upload_mb * 1024 * 1024),
                          max_pixels=int(args.max_megapixels * 1e6))
    models = load_models(args)
    app = build_app(models, example_images(models, args.examples), limits)
    app.queue(default_concurrency_limit=1)
    # Gradio refuses larger files itself (with its own message); ours names the limit
    app.launch(server_name=args.host, server_port=args.port, show_error=True,
               max_file_size=4 * limits.max_bytes,
               theme=gr.themes.Default(font=['sans-serif'], font_mono=['monospace']))


if __name__ == '__main__':
    from mmmaps.deployment.errors import DeploymentError
    from mmmaps.utils.tool_utils import tool_errors
    try:
        main()
    except (DemoError, DeploymentError, ImportError) + tool_errors() as exc:
        sys.exit(f'web_demo.py: error: {exc}')
