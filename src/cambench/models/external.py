"""Models from outside cambench: torchvision classifiers, ``module:function`` architectures, local weights.

* ``resnet18``, ``resnet50``, ``vgg16``, ``vgg19``: torchvision's models, always built with
  ``weights=None`` (random initialisation; nothing is ever downloaded), wrapped as
  ``Sequential(normalize=Normalize(mean, std), net=<torchvision model>)`` so that they take pixel
  images in [0, 1] like every cambench model. Their layers are therefore named ``net.<name>``
  (``net.layer4``, ``net.features.29``). Default normalisation: ImageNet's mean and std. SyCAM
  (docs/papers.md §5) used ResNet-50, VGG-16 and VGG-19.
* ``module:function`` (:func:`resolve_architecture`): any importable function (or class) that
  returns an ``nn.Module``.
* :func:`load_weights`: weights from a local file, read with ``torch.load(weights_only=True)`` only.
"""
from __future__ import annotations

import importlib
import inspect
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ..registry import Entry
from .base import ARCHITECTURES, Normalize

log = logging.getLogger(__name__)

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# --------------------------------------------------------------------------------------------
# torchvision classifiers
# --------------------------------------------------------------------------------------------

# The last conv block's ReLU inside ``features`` (the layer before the last max-pool):
# vgg16 = 13 convs, each conv + ReLU, and 5 max-pools: features has 31 modules, 29 is the last ReLU;
# vgg19 = 16 convs and 5 max-pools: 37 modules, 35 is the last ReLU.
VGG_TARGET = {"vgg16": "net.features.29", "vgg19": "net.features.35"}


def _torchvision(arch: str, n_classes: int, in_channels: int, mean: list[float] | None,
                 std: list[float] | None) -> nn.Sequential:
    import torchvision
    if in_channels != 3:
        raise ValueError(f"architecture '{arch}' (torchvision) takes 3-channel RGB images, got in_channels="
                         f"{in_channels}; use small_cnn / a 'module:function' architecture for other inputs")
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
        raise ValueError(f"architecture '{arch}': n_classes must be an integer >= 2, got {n_classes!r}")
    mean, std = list(mean or IMAGENET_MEAN), list(std or IMAGENET_STD)
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"architecture '{arch}': mean and std need 3 values (RGB), got mean={mean}, std={std}")
    net = getattr(torchvision.models, arch)(weights=None, num_classes=n_classes)  # never downloads
    model = nn.Sequential(OrderedDict(normalize=Normalize(mean, std), net=net))
    if isinstance(net, torchvision.models.ResNet):
        # layer4 -> avgpool -> flatten -> fc: a GAP + linear head; the engine resolves dotted names.
        model.cam_fc_layer = "net.fc"
    return model


@ARCHITECTURES.register("resnet18", dims=2, imagenet_normalisation=True, default_target_layer="net.layer4",
                        summary="torchvision ResNet-18 (weights=None) behind Normalize; GAP + linear head net.fc")
def resnet18(n_classes: int, in_channels: int = 3, mean: list[float] | None = None,
             std: list[float] | None = None) -> nn.Module:
    return _torchvision("resnet18", n_classes, in_channels, mean, std)


@ARCHITECTURES.register("resnet50", dims=2, imagenet_normalisation=True, default_target_layer="net.layer4",
                        summary="torchvision ResNet-50 (weights=None) behind Normalize; GAP + linear head net.fc")
def resnet50(n_classes: int, in_channels: int = 3, mean: list[float] | None = None,
             std: list[float] | None = None) -> nn.Module:
    return _torchvision("resnet50", n_classes, in_channels, mean, std)


@ARCHITECTURES.register("vgg16", dims=2, imagenet_normalisation=True, default_target_layer=VGG_TARGET["vgg16"],
                        summary="torchvision VGG-16 (weights=None) behind Normalize; target: last conv ReLU")
def vgg16(n_classes: int, in_channels: int = 3, mean: list[float] | None = None,
          std: list[float] | None = None) -> nn.Module:
    return _torchvision("vgg16", n_classes, in_channels, mean, std)  # head is an MLP: no CAM


@ARCHITECTURES.register("vgg19", dims=2, imagenet_normalisation=True, default_target_layer=VGG_TARGET["vgg19"],
                        summary="torchvision VGG-19 (weights=None) behind Normalize; target: last conv ReLU")
def vgg19(n_classes: int, in_channels: int = 3, mean: list[float] | None = None,
          std: list[float] | None = None) -> nn.Module:
    return _torchvision("vgg19", n_classes, in_channels, mean, std)


# --------------------------------------------------------------------------------------------
# 'module:function' architectures
# --------------------------------------------------------------------------------------------

_STANDARD = ("in_channels", "mean", "std")       # what cambench passes besides n_classes
_REFUSED = ("weights", "pretrained")             # hub downloads; load a local file instead


@dataclass(frozen=True)
class ExternalEntry(Entry):
    """A registry-like entry for a ``module:function`` architecture.

    ``fn(n_classes, in_channels=3, mean=None, std=None, **params)`` calls ``target`` with the
    standard arguments its signature names (``n_classes`` -- or ``num_classes`` --, ``in_channels``,
    ``mean``, ``std``) plus ``params``. A target that does not name both ``mean`` and ``std`` is
    wrapped as ``Sequential(normalize=Normalize(mean, std), net=model)``; its layers are then
    ``net.<name>``.
    """
    target: Callable | None = None
    names: tuple[str, ...] = ()          # keyword parameters the target names explicitly
    defaults: dict = field(default_factory=dict)
    var_keyword: bool = False            # the target takes **kwargs: any parameter is passed on

    @property
    def wraps(self) -> bool:
        return not ("mean" in self.names and "std" in self.names)

    @property
    def class_argument(self) -> str:
        return "n_classes" if "n_classes" in self.names else "num_classes" if "num_classes" in self.names else ""

    def parameters(self) -> dict:
        params = {"in_channels": 3, "mean": None, "std": None}
        for name in self.names:
            if name != self.class_argument:
                params[name] = self.defaults[name]
        return params

    def check_params(self, params: dict, where: str = "") -> None:
        refused = [k for k in _REFUSED if params.get(k)]
        if refused:
            loc = f"{where}: " if where else ""
            raise ValueError(f"{loc}parameter(s) {refused} of architecture '{self.name}': cambench never "
                             f"downloads weights; give a local file as the model's 'weights' instead")
        if self.var_keyword:  # unknown names go to **kwargs; the named ones are still type-checked
            params = {k: v for k, v in params.items() if k in self.parameters()}
        super().check_params(params, where)


def _import_target(name: str) -> Callable:
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise ValueError(f"architecture '{name}': expected 'module:function' (e.g. 'mypackage.nets:make_net')")
    try:
        obj = importlib.import_module(module_name)
    except Exception as err:  # ModuleNotFoundError, or the module failed while importing
        raise ValueError(f"architecture '{name}': cannot import module '{module_name}': "
                         f"{type(err).__name__}: {err}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"architecture '{name}': module '{module_name}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"architecture '{name}': '{attr}' is a {type(obj).__name__}, not a function")
    return obj


def _external_entry(name: str) -> ExternalEntry:
    target = _import_target(name)
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError) as err:
        raise ValueError(f"architecture '{name}': cannot read the signature of '{name}': {err}") from None
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    named = [p for p in sig.parameters.values() if p.kind in kinds]
    if ("mean" in sig.parameters) != ("std" in sig.parameters):
        raise ValueError(f"architecture '{name}': the function takes only one of 'mean' and 'std'; take both "
                         f"(the model normalises itself) or neither (cambench adds a Normalize in front)")
    entry_holder: list[ExternalEntry] = []

    def build(n_classes: int, in_channels: int = 3, mean: list[float] | None = None,
              std: list[float] | None = None, **params) -> nn.Module:
        entry = entry_holder[0]
        entry.check_params({"in_channels": in_channels, "mean": mean, "std": std, **params})
        standard = {"n_classes": n_classes, "num_classes": n_classes, "in_channels": in_channels,
                    "mean": mean, "std": std}
        kwargs = {k: v for k, v in standard.items() if k in entry.names and
                  (k not in ("n_classes", "num_classes") or k == entry.class_argument)}
        kwargs.update(params)
        if not entry.class_argument:
            log.warning("architecture '%s' takes neither n_classes nor num_classes: it must produce %d "
                        "logits by itself", name, n_classes)
        try:
            sig.bind(**kwargs)
        except TypeError as err:
            raise ValueError(f"architecture '{name}': cannot call it with {sorted(kwargs)}: {err}") from None
        model = target(**kwargs)
        if not isinstance(model, nn.Module):
            raise ValueError(f"architecture '{name}' returned a {type(model).__name__}, expected a torch.nn.Module")
        if entry.wraps:
            wrapped = nn.Sequential(OrderedDict(
                normalize=Normalize(mean or [0.5] * in_channels, std or [0.25] * in_channels), net=model))
            if getattr(model, "cam_fc_layer", ""):
                wrapped.cam_fc_layer = f"net.{model.cam_fc_layer}"
            model = wrapped
        return model

    doc = (inspect.getdoc(target) or "").strip().splitlines()
    summary = f"external architecture {name}" + (f": {doc[0]}" if doc else "")
    entry = ExternalEntry(name, build, {"kind": "architecture", "default_target_layer": "", "summary": summary,
                                        "external": True},
                          target=target, names=tuple(p.name for p in named),
                          defaults={p.name: p.default for p in named},
                          var_keyword=any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()))
    entry_holder.append(entry)
    return entry


def resolve_architecture(name: str) -> Entry:
    """The registry entry of a registered architecture, or an :class:`ExternalEntry` for ``module:function``.

    Unknown names without ':' raise the registry's ``UnknownNameError`` (a ``KeyError``); a
    ``module:function`` that cannot be imported, or is not callable, raises ``ValueError`` naming it.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"architecture must be a non-empty string, got {name!r}")
    if name in ARCHITECTURES or ":" not in name:
        return ARCHITECTURES.get(name)
    return _external_entry(name)


def default_target_layer(architecture: str) -> str:
    """The layer an architecture's maps are computed at unless the config names one ('' for a
    'module:function' model, which must name it)."""
    return resolve_architecture(architecture).meta.get("default_target_layer", "")


# --------------------------------------------------------------------------------------------
# Local weights
# --------------------------------------------------------------------------------------------

def _matches(key: str, prefixes: list[str]) -> bool:
    """``key`` is a prefix itself or lies below one at a dot boundary ('fc' matches 'fc.weight', not 'fc2.weight')."""
    return any(key == p or key.startswith(p if p.endswith(".") else p + ".") for p in prefixes)


def _state_dict_of(payload, path: Path) -> tuple[dict, str]:
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: expected a state dict (a dict of tensors), got {type(payload).__name__}")
    if payload.get("format") == "cambench-checkpoint-1":
        state, source = payload.get("state_dict"), "cambench checkpoint"
    elif isinstance(payload.get("state_dict"), dict):
        state, source = payload["state_dict"], "'state_dict' entry"
    elif isinstance(payload.get("model"), dict):
        state, source = payload["model"], "'model' entry"
    else:
        state, source = payload, "state dict"
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path}: the {source} holds no tensors")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise ValueError(f"{path}: the {source} is not a state dict: entries {bad[:5]} are not named tensors")
    return state, source


def _candidates(key: str) -> list[str]:
    """Names a file key may have in the model: as is, with or without the wrapper's ``net.``, and
    without DataParallel's ``module.``."""
    names = [key]
    if key.startswith("module."):
        names.append(key[len("module."):])
    names += ["net." + n for n in list(names)] + [n[len("net."):] for n in names if n.startswith("net.")]
    return names


def _first(keys: list[str], n: int = 5) -> str:
    return f"{keys[:n]}" + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def load_weights(model: nn.Module, path: str | Path, exclude: Iterable[str] = ()) -> dict:
    """Load weights from a local file into ``model``; returns ``{"loaded", "excluded", "initialised", ...}``.

    The file is read with ``torch.load(map_location="cpu", weights_only=True)`` only (a pickle that
    needs anything else is refused, never executed). It may hold a plain state dict, a dict with a
    ``"state_dict"`` or ``"model"`` entry, or a cambench checkpoint. Keys match the model's with
    or without the ``net.`` prefix of cambench's wrapped models (so a plain torchvision state dict
    loads into ``resnet18``) and without DataParallel's ``module.``.

    ``exclude``: name prefixes (file or model names, at dot boundaries: ``"fc"`` / ``"net.fc"``)
    neither loaded nor required; those model tensors keep their initial values (e.g. a new head
    for another number of classes). The model's ``Normalize`` buffers are optional: a file without
    them keeps the model's mean/std; a file with them (a cambench checkpoint) sets them, since the
    weights were trained with that normalisation (exclude ``normalize`` to keep the model's).
    Anything else is strict: a missing or unexpected key or a shape mismatch is a ValueError.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt file, or a pickle that needs unsafe globals
        lines = [ln for ln in str(err).splitlines() if ln.strip()]
        reason = next((ln for ln in lines if "Unsupported global" in ln or "WeightsUnpickler" in ln),
                      lines[0] if lines else type(err).__name__)
        raise ValueError(f"{path}: cannot load weights with weights_only=True: {reason.strip()}") from None
    state, source = _state_dict_of(payload, path)
    if isinstance(exclude, str):
        exclude = [exclude]
    prefixes = [str(p) for p in exclude if str(p)]
    target = model.state_dict()
    optional = {f"{name}.{buf}" if name else buf for name, m in model.named_modules()
                if isinstance(m, Normalize) for buf in ("mean", "std")}

    mapped: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    excluded, unexpected = [], []
    def is_excluded(key: str) -> bool:
        return any(_matches(n, prefixes) for n in _candidates(key))

    for key, value in state.items():
        names = _candidates(key)
        name = next((n for n in names if n in target), key)
        if is_excluded(key):
            excluded.append(key)
            continue
        if name not in target:
            unexpected.append(key)
            continue
        if name in mapped:
            raise ValueError(f"{path}: keys '{origin[name]}' and '{key}' both name the model's '{name}'")
        mapped[name], origin[name] = value, key
    missing = [k for k in target if k not in mapped and k not in optional and not is_excluded(k)]
    mismatched = [(k, tuple(v.shape), tuple(target[k].shape)) for k, v in mapped.items()
                  if v.shape != target[k].shape]
    if missing or unexpected or mismatched:
        problems = []
        if mismatched:
            problems.append("shape mismatch " + ", ".join(f"'{k}' file {f} vs model {m}"
                                                          for k, f, m in mismatched[:5]))
        if missing:
            problems.append(f"missing in the file {_first(missing)}")
        if unexpected:
            problems.append(f"not in the model {_first(unexpected)}")
        hint = sorted({k.rsplit(".", 1)[0] for k, _, _ in mismatched} | {k.rsplit(".", 1)[0] for k in missing[:3]})
        raise ValueError(f"{path}: weights ({source}) do not fit the model: {'; '.join(problems)}. "
                         f"Use weights_exclude to skip parameters (e.g. {hint or ['net.fc']}) "
                         f"and keep their initial values")
    model.load_state_dict(mapped, strict=False)
    initialised = [k for k in target if k not in mapped and is_excluded(k)]
    return {"path": str(path), "source": source, "loaded": len(mapped), "excluded": len(excluded),
            "initialised": len(initialised), "kept_normalisation": sorted(optional - set(mapped))}
