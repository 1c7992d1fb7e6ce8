"""Models: architectures by name, checkpoints loaded safely, and a small trainer.

Every model takes pixel-space images in [0, 1] and normalises them itself (its first module), so
perturbations and metric substrates are defined in pixel space for every model alike.

Checkpoints are plain dicts of tensors and primitives, loaded with ``torch.load(weights_only=True)``
(no arbitrary unpickling).

The registry and shared parts live in :mod:`cambench.models.base`; the public API is re-exported
here, and importing this package registers every architecture module in it (found by pkgutil).
"""
import importlib
import pkgutil

from .base import ARCHITECTURES, Normalize, conv_block, small_cnn
from .checkpoints import build_model, load_checkpoint, save_checkpoint
from .external import default_target_layer, load_weights, resolve_architecture
from .training import accuracy, run_epochs, train_classifier

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["ARCHITECTURES", "Normalize", "accuracy", "build_model", "conv_block", "default_target_layer",
           "load_checkpoint", "load_weights", "resolve_architecture", "run_epochs", "save_checkpoint", "small_cnn",
           "train_classifier"]
