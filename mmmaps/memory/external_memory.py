"""The MAPS memory of a run: one owner for the key encoder, caches, banks and retrieval.

:func:`build_external_memory` builds an :class:`ExternalMemory` from a config's ``memory``
section alone (``root``, ``key_encoder``, ``index`` search settings, ``retrieval``). MAPS
(through ``MemoryHook``), ``tools/test.py --memory``, the demo, the retrieval viewer and the
audit tool all get their memory from it, so no retrieval setting is written twice.

Leak policy, decided by image *content* (the sha256 of the image file), never by image id,
file name or annotation file:

- training: a query never retrieves a memory entry holding its own picture, whatever
  annotation file, subset, dataset wrapper or id numbering brought the picture there (the
  model never sees its own ground-truth objects, which it could not at test time);
- evaluation: nothing is excluded (val image 7 may retrieve train image 7), and
  :meth:`ExternalMemory.check_evaluation` refuses a dataset whose images are in the memory.

Query keys (``memory.retrieval.query_keys``):

- ``'model_input'`` (default, the paper: CLIP encodes the input "during the forward pass"):
  the key encoder runs on the image the model sees, the augmented crop in training. A query
  cache (keys of whole image files, by content) serves an image only at evaluation and only
  when the image is its file's whole picture, unflipped and only resized
  (``whole_pictures``), i.e. provably the same input up to resampling.
- ``'full_image_cache'``: the caches serve every image whose file they hold, in training
  too, so training keys (and Aug-CLS) describe the whole file rather than the crop the model
  sees; cheaper (no key encoder in the training step), not the paper's behaviour.

:class:`RetrievalResult` says which keys came from a cache.
"""
import os.path as osp
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from .config_schema import RETRIEVAL_KEYS, MemoryConfigError, check_memory_cfg
from .encoders import BaseMemoryEncoder, build_memory_encoder
from .image_identity import ImageIdentities
from .memory_root import ENCODER_IDENTITY, MemoryRoot
from .query_cache import QueryEmbeddingCache
from .retriever import MemoryRetriever, RetrievalResult
from .storage import MemoryBankError

__all__ = ['ExternalMemory', 'build_external_memory', 'shows_whole_picture', 'RETRIEVAL_KEYS',
           'QUERY_KEY_SOURCES']

QUERY_KEY_SOURCES = ('model_input', 'full_image_cache')


def shows_whole_picture(metainfo: dict) -> bool:
    """Whether a sample's image is its file's whole picture, unflipped and only resized,
    from mmdet's metainfo: no ``flip``, and ``img_shape`` equals ``ori_shape`` times
    ``scale_factor`` (w, h) to the pixel (a crop would be smaller), or equals ``ori_shape``
    when nothing resized it (no ``scale_factor``). False when a shape is missing: it cannot
    be shown."""
    if metainfo.get('flip'):
        return False
    ori, shape, scale = (metainfo.get(k) for k in ('ori_shape', 'img_shape', 'scale_factor'))
    if ori is None or shape is None:
        return False
    if scale is None:
        return tuple(shape[:2]) == tuple(ori[:2])
    expected = (ori[0] * scale[1], ori[1] * scale[0])
    return all(abs(int(a) - b) <= 1 for a, b in zip(shape[:2], expected))


class ExternalMemory:
    """Everything MAPS reads from its memory, and the only owner of how it is read.

    For a batch of images it returns a :class:`RetrievalResult`: scene values (B, k, C_s),
    object values (B, K_obj, C_o), their padding masks, the retrieved image ids and scores,
    the query keys (B, D) and which keys came from a cache.

    Args:
        root (MemoryRoot): The loaded banks (and the train split's query cache).
        key_encoder (BaseMemoryEncoder): The frozen key encoder (must be the banks'; or an
            exported one with the same ``describe()``, ``device`` and call).
        k (int): Images retrieved per query.
        max_objects (int, optional): Object slot cap (default ``16 * k``).
        random_sampling (int, optional): k' > k for sampling in training.
        pad_objects_to_max (bool): Fixed object slot count.
        allow_eval_overlap (bool): Let :meth:`check_evaluation` pass a leaking dataset.
        eval_caches (list[QueryEmbeddingCache]): Query caches of other splits
            (``tools/build_memory.py --split val --query-cache-only``).
        seed (int): Seed of the k' sampling; each rank draws from ``(seed, rank)``.
        rank (int): This process's rank.
        identities (ImageIdentities, optional): Content identities of image files.
        query_keys (str): Where query keys come from: ``'model_input'`` (default) or
            ``'full_image_cache'`` (module docstring).
        wrong_memory_prob (float): In training, the probability that an image is given
            another training image's retrieval: the search runs with the key of a random
            scene-bank entry that does not hold the image's picture (the image's own key
            stays its Aug-CLS). Teaches the queries to weigh the memory rather than copy it.
        wrong_memory_at_test (bool): Also at evaluation (the shuffled-memory control; each
            image's substitute is drawn from ``(seed, its content identity)``, so it does
            not depend on batch order).
    """

    def __init__(self, root: MemoryRoot, key_encoder: BaseMemoryEncoder, k: int = 5,
                 max_objects: Optional[int] = None, random_sampling: Optional[int] = None,
                 pad_objects_to_max: bool = False, allow_eval_overlap: bool = False,
                 eval_caches: Sequence[QueryEmbeddingCache] = (), seed: int = 0, rank: int = 0,
                 identities: Optional[ImageIdentities] = None,
                 query_keys: str = 'model_input', wrong_memory_prob: float = 0.0,
                 wrong_memory_at_test: bool = False):
        if not 0.0 <= wrong_memory_prob <= 1.0:
            raise MemoryConfigError('memory.retrieval.wrong_memory_prob must be in [0, 1], '
                                    f'got {wrong_memory_prob}')
        if query_keys not in QUERY_KEY_SOURCES:
            raise MemoryConfigError(f'memory.retrieval.query_keys must be one of '
                                    f'{QUERY_KEY_SOURCES}, got {query_keys!r}')
        if root.scene_bank is None:
            raise MemoryBankError(f'{root.root} holds only a query-embedding cache, no memory '
                                  'banks; build the banks with tools/build_memory.py CONFIG')
        if k < 1:
            raise ValueError(f'memory.retrieval.k must be >= 1, got {k}')
        if random_sampling is not None and random_sampling <= k:
            raise ValueError(f"memory.retrieval.random_sampling (k'={random_sampling}) must be "
                             f'larger than memory.retrieval.k={k}')
        self.root = root
        self.key_encoder = key_encoder
        self.k = int(k)
        self.random_sampling = random_sampling
        self.query_key_source = query_keys
        self.wrong_memory_prob = float(wrong_memory_prob)
        self.wrong_memory_at_test = bool(wrong_memory_at_test)
        self.allow_eval_overlap = allow_eval_overlap
        self.retriever = MemoryRetriever(root.scene_bank, root.object_bank,
                                         max_objects=16 * self.k if max_objects is None else
                                         int(max_objects), pad_objects_to_max=pad_objects_to_max)
        self.caches = [c for c in [root.query_cache, *eval_caches] if c is not None]
        self.seed, self.rank = int(seed), int(rank)
        self.rng = np.random.default_rng([self.seed, self.rank])
        self.identities = identities or ImageIdentities()
        self._check_encoders()

    # ------------------------------------------------------------------ checks
    def _check_encoders(self) -> None:
        """The key encoder and every cache must be the banks' key encoder."""
        built = self.key_encoder.describe()
        recorded = self.root.key_encoder
        problems = [f'{f}: memory {recorded.get(f)!r}, memory.key_encoder {built.get(f)!r}'
                    for f in ENCODER_IDENTITY if recorded.get(f) != built.get(f)]
        if problems:
            raise MemoryBankError(
                f'the memory at {self.root.root} was built with another key encoder than the '
                'config\'s memory.key_encoder (' + '; '.join(problems) + '). Rebuild it with '
                'tools/build_memory.py CONFIG, or use the config it was built with.')
        for cache in self.caches:
            encoder = cache.manifest.get('encoder') or {}
            if any(encoder.get(f) != built.get(f) for f in ENCODER_IDENTITY):
                raise MemoryBankError(f'the query cache {cache.path} holds keys of another '
                                      'encoder than memory.key_encoder; rebuild it')

    def check_fits(self, scene_dim: Optional[int], object_dim: Optional[int]) -> None:
        """Raise when the banks' value dims are not what a model reads."""
        problems = []
        scene = self.root.scene_bank
        if scene_dim is not None and scene_dim != scene.value_dim:
            problems.append(f'scene value dim: bank {scene.value_dim}, model {scene_dim}')
        if object_dim is not None:
            if self.root.object_bank is None:
                problems.append('the model reads object memory but the memory has no object '
                                'bank (memory.dense_encoder was None when it was built)')
            elif object_dim != self.root.object_bank.value_dim:
                problems.append(f'object value dim: bank {self.root.object_bank.value_dim}, '
                                f'model {object_dim}')
        if problems:
            raise MemoryBankError(
                f'the memory at {self.root.root} (manifest '
                f'{osp.join(self.root.root, "manifest.json")}) does not fit the model: '
                + '; '.join(problems) + '. Rebuild it with tools/build_memory.py using this '
                'config.')

    # ------------------------------------------------------------------ identities
    def identity_of(self, img_path: Optional[str]) -> Optional[bytes]:
        """Content identity of an image file (None for an image without a file)."""
        return None if img_path is None else self.identities.of(img_path).encode()

    def in_memory(self, img_paths: Sequence[str]) -> List[bool]:
        """Whether each image (by content) is in the memory's scene bank."""
        bank = self.root.scene_bank
        found = self.identities.of_many(img_paths)
        return [bool(bank.rows_of_identity(i.encode())) for i in found]

    def check_evaluation(self, img_paths: Sequence[str], what: str) -> None:
        """Refuse to evaluate on images that are in the memory (they would retrieve
        themselves), unless ``allow_eval_overlap``."""
        inside = [p for p, found in zip(img_paths, self.in_memory(img_paths)) if found]
        if inside and not self.allow_eval_overlap:
            raise MemoryBankError(
                f'{len(inside)} of the {len(img_paths)} images of {what} are in the memory '
                f'{self.root.root} (same file contents, e.g. {inside[:3]}): every one would '
                'retrieve itself. Build the memory from the training split only, or set '
                'memory.retrieval.allow_eval_overlap=True if this is intended.')

    # ------------------------------------------------------------------ retrieval
    def cache_may_serve(self, training: bool,
                        whole_pictures: Optional[Sequence[bool]], num: int) -> List[bool]:
        """Per image, whether a query cache may give its key (the module docstring's
        policy): always with ``'full_image_cache'``; with ``'model_input'`` only at
        evaluation, for an image that is its file's whole picture."""
        if self.query_key_source == 'full_image_cache':
            return [True] * num
        if training or whole_pictures is None:
            return [False] * num
        if len(whole_pictures) != num:
            raise ValueError(f'whole_pictures has {len(whole_pictures)} entries for {num} '
                             'images')
        return [bool(w) for w in whole_pictures]

    def query_keys(self, images: Sequence[Tensor], identities: Sequence[Optional[bytes]],
                   cacheable: Optional[Sequence[bool]] = None) -> Tuple[Tensor, Tensor]:
        """(B, D) keys and (B,) bool 'from a cache': cached where ``cacheable`` (default:
        every image) and a cache holds the image's content, encoded from ``images`` (RGB
        (3, h, w), 0-255) otherwise."""
        device = images[0].device if len(images) else torch.device('cpu')
        keys = torch.zeros(len(images), self.root.scene_bank.key_dim, device=device)
        found = torch.zeros(len(images), dtype=torch.bool)
        if cacheable is None:
            cacheable = [True] * len(images)
        for cache in self.caches:
            todo = [b for b in range(len(images)) if cacheable[b] and not found[b]]
            if not todo:
                break
            cached, hit = cache.lookup([identities[b] for b in todo], device=device)
            for j, b in enumerate(todo):
                if hit[j]:
                    keys[b] = cached[j]
                    found[b] = True
        missing = [b for b in range(len(images)) if not found[b]]
        if missing:
            if self.key_encoder.device != device:
                self.key_encoder.to(device)
            keys[missing] = self.key_encoder([images[b] for b in missing]).to(keys)
        return keys, found

    def wrong_memory_keys(self, keys: Tensor, identities: Sequence[Optional[bytes]],
                          training: bool) -> Tensor:
        """The search keys under ``wrong_memory_prob``: for each image drawn, the key of a
        random scene-bank entry that is not its picture; ``keys`` where none is drawn."""
        prob = self.wrong_memory_prob if (training or self.wrong_memory_at_test) else 0.0
        if prob <= 0:
            return keys
        bank = self.root.scene_bank
        out = keys.clone()
        for b, identity in enumerate(identities):
            rng = self.rng if training else np.random.default_rng(
                [self.seed, int.from_bytes((identity or b'\0')[:8], 'big')])
            if rng.random() >= prob:
                continue
            own = set(bank.rows_of_identity(identity)) if identity else set()
            if len(own) >= bank.num_entries:
                raise MemoryBankError(f'the memory {self.root.root} holds only this image; '
                                      'wrong_memory_prob needs other entries')
            row = int(rng.integers(bank.num_entries))
            while row in own:
                row = int(rng.integers(bank.num_entries))
            out[b] = torch.from_numpy(np.asarray(bank.keys[row], dtype=np.float32)).to(out)
        return out

    def retrieve(self, images: Sequence[Tensor], img_paths: Sequence[Optional[str]],
                 training: bool, with_objects: bool = True,
                 whole_pictures: Optional[Sequence[bool]] = None) -> RetrievalResult:
        """Retrieve the memory of a batch.

        Args:
            images: RGB images (3, h, w) on the 0-255 scale, as the model sees them.
            img_paths: Their files (content identity: cache look-up and leak guard); None
                for an image without a file (not allowed in training).
            training: Apply the training policy (exclude the query's own picture, k'
                sampling); at evaluation nothing is excluded.
            with_objects: Also gather the object memory.
            whole_pictures: Per image, whether it is its file's whole picture, unflipped
                and only resized (:func:`shows_whole_picture`); None: not known. Decides
                where an evaluation key may come from a query cache.
        """
        if training and any(p is None for p in img_paths):
            raise ValueError('a training image without img_path in its metainfo: the memory '
                             'cannot tell whether it holds that picture, so the leak guard '
                             'cannot run. Keep img_path in the pipeline\'s PackDetInputs '
                             'meta_keys.')
        identities = [self.identity_of(p) for p in img_paths]
        keys, from_cache = self.query_keys(
            images, identities, self.cache_may_serve(training, whole_pictures, len(images)))
        result = self.retriever.query(
            self.wrong_memory_keys(keys, identities, training), self.k,
            exclude=identities if training else None,
            sample_from=self.random_sampling if training else None, rng=self.rng,
            with_objects=with_objects)
        result.query_keys = keys
        result.keys_from_cache = from_cache.to(keys.device)
        return result

    def self_retrievals(self, result: RetrievalResult,
                        img_paths: Sequence[Optional[str]]) -> List[bool]:
        """Per query, whether it retrieved an entry holding its own picture."""
        bank = self.root.scene_bank
        out = []
        for rows, path in zip(result.rows.cpu().tolist(), img_paths):
            own = set(bank.rows_of_identity(self.identity_of(path))) if path else set()
            out.append(any(r in own for r in rows if r >= 0))
        return out

    # ------------------------------------------------------------------ reporting
    def signature(self) -> dict:
        """What a model trained with this memory depends on (checkpoint meta)."""
        return self.root.signature()

    def summary(self) -> str:
        caches = ', '.join(f'{osp.basename(c.path.rstrip("/"))} ({len(c)})' for c in self.caches)
        return (f'{self.root.summary()}\n  retrieval: k={self.k}, max_objects='
                f'{self.retriever.max_objects}, random_sampling={self.random_sampling} '
                f'(seed {self.seed}, rank {self.rank}); query keys: {self.query_key_source}; '
                f'wrong memory: p={self.wrong_memory_prob}'
                f'{" (also at test)" if self.wrong_memory_at_test else ""}; '
                f'query caches by content: {caches or "none"}; leak guard: training '
                'queries never retrieve their own '
                'picture (by file content), evaluation excludes nothing')


def build_external_memory(memory_cfg: dict, root: Optional[str] = None, device=None,
                          seed: int = 0, rank: int = 0, verify: bool = True,
                          use_gpu_index: bool = True, query_caches: bool = True,
                          key_encoder=None) -> ExternalMemory:
    """Build the memory a config's ``memory`` section describes.

    Args:
        memory_cfg (dict): The config's ``memory`` section (``root``, ``key_encoder``,
            ``index``, ``retrieval``).
        root (str, optional): Memory directory (default ``memory.root``).
        device: Device of the key encoder and of GPU indices (default: this rank's GPU if
            there is one, else CPU).
        seed (int): The run's seed (k' sampling draws from ``(seed, rank)``).
        rank (int): This process's rank.
        verify (bool): Check every memory file's sha256 on load.
        use_gpu_index (bool): Put Flat/IVF indices on ``device``'s GPU when faiss has GPU
            support.
        query_caches (bool): Serve query keys from the memory's caches (``False``: always
            run the key encoder, e.g. to measure it).
        key_encoder (optional): The key encoder to use instead of building
            ``memory.key_encoder`` (an exported model's ONNX key encoder,
            :class:`mmmaps.deployment.ONNXKeyEncoder`); it must describe itself as the
            banks' key encoder, which is checked as for a built one.
    """
    memory_cfg = dict(check_memory_cfg(memory_cfg))
    root = root or memory_cfg.get('root')
    if not root:
        raise MemoryConfigError('set memory.root in the config (the directory '
                                'tools/build_memory.py writes)')
    retrieval = dict(memory_cfg.get('retrieval') or {})
    if device is None:
        device = torch.device(f'cuda:{torch.cuda.current_device()}'
                              if torch.cuda.is_available() else 'cpu')
    device = torch.device(device)
    gpu_device = None
    if use_gpu_index and device.type == 'cuda':
        gpu_device = device.index if device.index is not None else torch.cuda.current_device()
    index = memory_cfg.get('index') or {}
    search = {k: index[k] for k in ('ef_search', 'nprobe') if k in index}
    memory_root = MemoryRoot(root, verify=verify, gpu_device=gpu_device, index_overrides=search)
    eval_caches = []
    for split in ('val', 'test') if query_caches else ():
        path = f'{memory_root.root}_{split}'
        if osp.isfile(osp.join(path, 'manifest.json')):
            cache = MemoryRoot(path, verify=verify, load_objects=False).query_cache
            if cache is not None:
                eval_caches.append(cache)
    if key_encoder is None:
        if not memory_cfg.get('key_encoder'):
            raise MemoryConfigError('memory.key_encoder is not set (the frozen encoder of the '
                                    'query keys)')
        key_encoder = build_memory_encoder(memory_cfg['key_encoder'],
                                           'memory.key_encoder').to(device)
    if not query_caches:
        memory_root.query_cache = None
    return ExternalMemory(memory_root, key_encoder, k=int(retrieval.get('k', 5)),
                          max_objects=retrieval.get('max_objects'),
                          random_sampling=retrieval.get('random_sampling'),
                          pad_objects_to_max=bool(retrieval.get('pad_objects_to_max', False)),
                          allow_eval_overlap=bool(retrieval.get('allow_eval_overlap', False)),
                          eval_caches=eval_caches, seed=seed, rank=rank,
                          query_keys=retrieval.get('query_keys', 'model_input'),
                          wrong_memory_prob=float(retrieval.get('wrong_memory_prob', 0.0)),
                          wrong_memory_at_test=bool(retrieval.get('wrong_memory_at_test',
                                                                  False)))
