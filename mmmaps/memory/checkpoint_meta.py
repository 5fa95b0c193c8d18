"""The memory a checkpoint was trained with (its meta) against the memory of this run."""
import warnings
from typing import List

from .external_memory import ExternalMemory
from .memory_root import ENCODER_IDENTITY
from .storage import MemoryBankError

__all__ = ['memory_identity_problems', 'check_checkpoint_memory']


def memory_identity_problems(saved: dict, current: dict) -> List[str]:
    """Encoder identities and dims recorded in a checkpoint that the memory contradicts
    (fields the checkpoint lacks, e.g. from older versions, are not compared)."""
    problems = []
    for field in ('key_encoder', 'dense_encoder'):
        a, b = saved.get(field), current.get(field)
        if a is None or b is None or a == b:
            continue
        fields = [f for f in ENCODER_IDENTITY if a.get(f) != b.get(f)]
        problems.append(f'{field.replace("_", " ")} ' + ', '.join(
            f'{f}: trained {a.get(f)!r}, memory {b.get(f)!r}' for f in fields))
    for field in ('key_dim', 'scene_dim', 'object_dim'):
        a, b = saved.get(field), current.get(field)
        if a is not None and b is not None and a != b:
            problems.append(f'{field.replace("_", " ")}: trained {a}, memory {b}')
    return problems


def _describe(sig: dict) -> str:
    return (f'{sig.get("root")} ({sig.get("num_images", "?")} images, manifest sha256 '
            f'{str(sig.get("manifest_sha256", ""))[:12]})')


def check_checkpoint_memory(memory: ExternalMemory, checkpoint: dict, memory_swap: bool,
                            logger, allow_incompatible_memory: bool = False) -> None:
    """Compare the memory a checkpoint was trained with (its meta) with ``memory``.

    Same memory: nothing to say. Another memory: a loud warning, unless ``memory_swap``
    (``tools/test.py --memory``): then an INFO line says which memory replaces which. Other
    encoders or dimensions than the checkpoint's are an error (training, resuming and
    testing alike), unless ``allow_incompatible_memory`` (``tools/test.py
    --allow-incompatible-memory``) turns it back into the loud warning (never with a swap).
    """
    saved = (checkpoint.get('meta') or {}).get('memory')
    current = memory.signature()
    if not saved:
        if memory_swap:
            logger.info(f'memory swap: evaluating with {_describe(current)}; the checkpoint '
                        'does not record the memory it was trained with')
        return
    if saved.get('manifest_sha256') == current['manifest_sha256']:
        if memory_swap:
            logger.info(f'memory swap: {_describe(current)} is the memory the checkpoint was '
                        'trained with (nothing swapped)')
        return
    problems = memory_identity_problems(saved, current)
    if memory_swap:
        if problems:
            raise MemoryBankError(
                f'memory swap refused: the checkpoint was trained with the memory '
                f'{_describe(saved)}, and {_describe(current)} differs in ' + '; '.join(problems)
                + '. The model cannot read vectors of other encoders; build the new memory '
                'with the memory section of the training config (tools/build_memory.py CONFIG '
                '[--append ...]).')
        checked = ('key/dense encoders and dimensions match' if 'key_encoder' in saved else
                   'the checkpoint records no encoders to compare (saved by an older mmmaps); '
                   'the memory was checked against the model only')
        logger.info(f'memory swap: the memory {_describe(current)} replaces the training memory '
                    f'{_describe(saved)} recorded in the checkpoint{_relation(memory, saved)}; '
                    + checked)
        return
    if problems and not allow_incompatible_memory:
        raise MemoryBankError(
            f'incompatible memory: the checkpoint was trained with the memory {_describe(saved)}, '
            f'this run uses {_describe(current)}, which differs in ' + '; '.join(problems)
            + '. The model cannot read vectors of other encoders or dimensions: use the memory '
            'it was trained with (memory.root), or build one with the memory section of the '
            'training config (tools/build_memory.py CONFIG). To run anyway, pass '
            'tools/test.py --allow-incompatible-memory (MemoryHook allow_incompatible_memory).')
    message = (
        '\n' + '!' * 78 + '\nMEMORY MISMATCH: the checkpoint was trained with the memory '
        f'{saved.get("root")} (manifest sha256 {saved.get("manifest_sha256", "")[:12]}), '
        f'this run uses {current["root"]} (sha256 {current["manifest_sha256"][:12]}). '
        'Resuming/testing with a different memory changes what the model retrieves'
        + (' and it is INCOMPATIBLE: ' + '; '.join(problems) if problems else '') +
        '. To evaluate with another memory on purpose use tools/test.py --memory DIR.\n'
        + '!' * 78)
    logger.warning(message)
    warnings.warn(message)


def _relation(memory: ExternalMemory, saved: dict) -> str:
    """How this memory descends from the checkpoint's (via appends), or ''."""
    lineage = memory.root.lineage
    for i, entry in enumerate(lineage):
        if entry.get('parent', {}).get('manifest_sha256') == saved.get('manifest_sha256'):
            added = [e.get('appended', {}) for e in lineage[i:]]
            return (' (it is that memory + ' + ' + '.join(
                f'{a.get("num_images")} images of {a.get("ann_file")}' for a in added) + ')')
    return ''
