"""The Runner of ``tools/train.py`` and ``tools/test.py``: mmengine's, with checkpoint checks."""
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from ..utils.checkpoint_fit import (CheckpointMismatchError, ResumeStateError,
                                    checkpoint_fit_check)


@RUNNERS.register_module()
class MMMapsRunner(Runner):
    """mmengine's Runner whose checkpoint loads are checked (the tools build it when the
    config sets no ``runner_type``).

    - :meth:`load_checkpoint` (``load_from``, ``tools/test.py``, and the weights of
      ``--resume``): the checkpoint's tensors must fit the model
      (:func:`~mmmaps.utils.checkpoint_fit.checkpoint_fit_check`, the model's documented
      allowances aside); a mismatch is a :class:`CheckpointMismatchError` naming the file
      and the tensors, where mmengine would load what fits and log the rest.
    - :meth:`resume`: a checkpoint whose training state (``meta``, optimizer, parameter
      schedulers) does not fit this config is a :class:`ResumeStateError` naming the file,
      where mmengine fails deep in the optimizer (e.g. a param-group size ``ValueError``).
    """

    def load_checkpoint(self, filename: str, *args, **kwargs):
        """mmengine's ``load_checkpoint`` with the fit check (see the class docstring)."""
        with checkpoint_fit_check(self.model, str(filename)):
            checkpoint = super().load_checkpoint(filename, *args, **kwargs)
        self._weights_loaded_from = filename
        return checkpoint

    def resume(self, filename: str, *args, **kwargs) -> None:
        """mmengine's ``resume``; training state that does not fit is named, not a bare
        optimizer error."""
        self._weights_loaded_from = None
        try:
            super().resume(filename, *args, **kwargs)
        except (AssertionError, KeyError, ValueError, IndexError, TypeError) as err:
            if self._weights_loaded_from is None or isinstance(err, CheckpointMismatchError):
                raise  # not about the training state (the weights did not load)
            raise ResumeStateError(
                f'{filename}: --resume cannot continue this run from the checkpoint: its '
                f'training state does not fit this config ({type(err).__name__}: '
                f'{str(err).splitlines()[0] if str(err) else "?"}; e.g. another optimizer, '
                'parameter groups or schedulers, or a checkpoint not written by training). To '
                'start a new run from its weights only, use --cfg-options load_from=FILE '
                'without --resume.') from None
