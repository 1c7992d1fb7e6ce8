"""cambench: which Class Activation Map to trust, for your model and data.

Python API::

    cambench.explain(model, images, "gradcam", target_layer="layer4")   # (N, *spatial) in [0, 1]
    cambench.evaluate(model, images, heatmaps, "deletion_auc")          # (N,) per-image values
    cambench.perturb(images, "gaussian", 0.1, seed=0, keys=ids)         # deterministic per image
    cambench.methods(), cambench.metrics(), cambench.perturbations()
"""
from . import methods as _methods  # noqa: F401  (registers the CAM methods)
from .engine import CamError, explain, explain_many, methods
from .metrics import evaluate, metrics
from .perturbations import perturb, perturbations

__version__ = "0.1.0"
__all__ = ["explain", "explain_many", "evaluate", "perturb", "methods", "metrics", "perturbations",
           "CamError", "__version__"]
