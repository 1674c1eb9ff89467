"""Configuration, training loop, evaluation and prediction, checkpoints, logging and plots.

Called, this package trains: ``dsmpnn.train(config, data_dir, out_dir, overrides=...)`` is
:func:`dsmpnn.train.api.train` (the Python API; ``dsmpnn.train`` cannot be both a function and this package, so
the package is callable). :func:`train` below is the training loop it runs.
"""

from typing import TYPE_CHECKING

from dsmpnn._lazy import LazyPackage, lazy_package

if TYPE_CHECKING:
    from dsmpnn.train.config import Config, load_config
    from dsmpnn.train.evaluate import evaluate_run, predict_file
    from dsmpnn.train.rundir import load_run
    from dsmpnn.train.trainer import train

__all__ = ["Config", "evaluate_run", "load_config", "load_run", "predict_file", "train"]

_LAZY = {"Config": "config", "load_config": "config", "evaluate_run": "evaluate", "predict_file": "evaluate",
         "load_run": "rundir", "train": "trainer"}


class _CallablePackage(LazyPackage):
    def __call__(self, *args, **kwargs):
        """``dsmpnn.train(config, data_dir, out_dir, overrides=(), *, resume=False, ...)``: see
        :func:`dsmpnn.train.api.train`."""
        from dsmpnn.train.api import train as train_api  # noqa: PLC0415 - the API module imports this package

        return train_api(*args, **kwargs)


lazy_package(__name__, _CallablePackage)
