"""CIFAR-10, python version (the official pickled batches), and a stand-in written in that format.

Layout read (the extracted ``cifar-10-python.tar.gz``; a root that holds the folder
``cifar-10-batches-py/`` works as well)::

    <root>/data_batch_1 … data_batch_5     training batches
    <root>/test_batch                      the test batch
    <root>/batches.meta                    b"label_names" (10 names), b"num_cases_per_batch", b"num_vis"

Each batch is a Python-2 pickle (protocol 2) of a dict with bytes keys: b"batch_label", b"labels"
(list of int), b"data" (uint8 array (n, 3072): 1024 R, then 1024 G, then 1024 B values, each a
row-major 32×32 plane) and b"filenames" (list of bytes). The files are read with a restricted
unpickler that resolves only numpy's array reconstruction (``_reconstruct``, ``ndarray``,
``dtype``); any other global is refused before it can run, with a :class:`DataError` naming the
file. Image ids are ``"<split>/<class>/<batch file>-<row:05d>"``.

The stand-in (:func:`generate_cifar10_standin`) writes the same files, byte-compatible with the
real ones (protocol-2 pickles whose byte strings are Python-2 ``str`` opcodes), with one object
per image whose shape and colour family give the class, plus its object mask by image id.
"""
from __future__ import annotations

import colorsys
import io
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from .formats import DataError, Prepared, ReadContext, register_format, require, sha256_file
from .synthetic import render

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SIDE = 32
ROW = 3 * SIDE * SIDE
N_TRAIN_BATCHES = 5
BATCH_FOLDER = "cifar-10-batches-py"
META_FILE = "batches.meta"
TEST_FILE = "test_batch"
LAYOUT = ("<root>/data_batch_1 … data_batch_5, test_batch, batches.meta "
          "(CIFAR-10 python version; or <root>/cifar-10-batches-py/ holding them)")

# The only globals a CIFAR-10 batch needs: numpy's array reconstruction (numpy 1.x wrote
# numpy.core.multiarray, numpy 2.x writes numpy._core.multiarray).
def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """Python 3 pickles bytes at protocol <= 2 as _codecs.encode(text, 'latin1'); admit exactly that."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


_ALLOWED_GLOBALS = {
    ("_codecs", "encode"): _latin1_bytes,  # a CIFAR batch re-pickled by Python 3 at protocol 2
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


# ------------------------------------------------------------------------------------------------
# Reading: a restricted unpickler and structure checks
# ------------------------------------------------------------------------------------------------

class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the numpy globals in ``_ALLOWED_GLOBALS``; every other global is refused."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"{module}.{name}") from None

    def persistent_load(self, pid):
        raise _RefusedGlobal(f"persistent id {pid!r}")


def load_pickle(path: str | Path):
    """Unpickle one CIFAR-10 python file (``encoding="bytes"``) without executing its contents.

    Raises :class:`DataError` naming the file for a refused global or an unreadable pickle.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f, encoding="bytes").load()
    except _RefusedGlobal as err:
        raise DataError(f"{path}: refused to unpickle the global '{err}': a CIFAR-10 batch needs only "
                        f"numpy's array reconstruction (numpy _reconstruct, ndarray, dtype); "
                        f"the file was not loaded") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err}) (expected layout {LAYOUT})") from None
    except Exception as err:  # truncated or corrupt pickles raise many kinds of error
        raise DataError(f"{path}: not a readable CIFAR-10 python pickle ({type(err).__name__}: {err})") from None


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _field(obj: dict, key: str, path: Path):
    """``obj[b"key"]`` (the real files) or ``obj["key"]`` (a file re-pickled with str keys)."""
    for k in (key.encode(), key):
        if k in obj:
            return obj[k]
    present = sorted(_text(k) for k in obj)
    raise DataError(f"{path}: key '{key}' missing; present: {present} (expected a CIFAR-10 python file)")


def _as_dict(obj, path: Path) -> dict:
    if not isinstance(obj, dict):
        raise DataError(f"{path}: holds a {type(obj).__name__}, expected the dict of a CIFAR-10 python file")
    return obj


def read_meta(path: str | Path) -> list[str]:
    """The class names of ``batches.meta`` (decoded)."""
    path = Path(path)
    names = _field(_as_dict(load_pickle(path), path), "label_names", path)
    if not isinstance(names, (list, tuple)) or len(names) < 2 \
            or not all(isinstance(n, (bytes, str)) for n in names):
        raise DataError(f"{path}: 'label_names' must be a list of at least two names, got {type(names).__name__}")
    names = [_text(n) for n in names]
    if len(set(names)) != len(names) or any(not n or "/" in n for n in names):
        raise DataError(f"{path}: 'label_names' must be unique, non-empty and without '/': {names}")
    return names


def read_batch(path: str | Path, n_classes: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(data uint8 (n, 3072), labels int64 (n,), file names) of one batch file, checked."""
    path = Path(path)
    obj = _as_dict(load_pickle(path), path)
    data = _field(obj, "data", path)
    labels = _field(obj, "labels", path)
    names = _field(obj, "filenames", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != ROW:
        got = f"{data.dtype} array {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (n, {ROW}) (32×32 RGB planes), got {got}")
    n = len(data)
    if not isinstance(labels, (list, tuple, np.ndarray)):
        raise DataError(f"{path}: 'labels' must be a list of int, got {type(labels).__name__}")
    labels_arr = np.asarray(labels)
    if labels_arr.shape != (n,) or (n and labels_arr.dtype.kind not in "iu"):
        raise DataError(f"{path}: 'labels' must be {n} integers (one per row of 'data'), "
                        f"got {labels_arr.dtype} of shape {labels_arr.shape}")
    labels_arr = labels_arr.astype(np.int64)
    bad = np.flatnonzero((labels_arr < 0) | (labels_arr >= n_classes))
    if bad.size:
        raise DataError(f"{path}: label {int(labels_arr[bad[0]])} at row {int(bad[0])} is out of range "
                        f"0..{n_classes - 1} ({n_classes} classes in {META_FILE})")
    if not isinstance(names, (list, tuple)) or len(names) != n \
            or not all(isinstance(x, (bytes, str)) for x in names):
        raise DataError(f"{path}: 'filenames' must be {n} names (one per row of 'data')")
    return data, labels_arr, [_text(x) for x in names]


# ------------------------------------------------------------------------------------------------
# The format
# ------------------------------------------------------------------------------------------------

def batch_folder(root: str | Path) -> Path:
    """The folder holding the batch files: ``root`` itself or ``root/cifar-10-batches-py``."""
    root = Path(root)
    if not (root / META_FILE).exists() and (root / BATCH_FOLDER).is_dir():
        return root / BATCH_FOLDER
    return root


def _options(batches, limit_per_class) -> tuple[list[int], int]:
    where = "format 'cifar10' option"
    if not isinstance(batches, (list, tuple)) or not batches:
        raise DataError(f"{where} 'batches': a non-empty list of training batch numbers 1..5, got {batches!r}")
    for b in batches:
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= N_TRAIN_BATCHES:
            raise DataError(f"{where} 'batches': {b!r} is not a training batch number 1..5")
    if len(set(batches)) != len(batches):
        raise DataError(f"{where} 'batches': repeated batch numbers in {list(batches)}")
    if isinstance(limit_per_class, bool) or not isinstance(limit_per_class, (int, float)) \
            or limit_per_class != int(limit_per_class) or limit_per_class < 0:
        raise DataError(f"{where} 'limit_per_class': a whole number >= 0 (0 = all), got {limit_per_class!r}")
    return [int(b) for b in batches], int(limit_per_class)


def _files(batches: list[int]) -> list[tuple[str, str]]:
    return [(f"data_batch_{b}", "train") for b in batches] + [(TEST_FILE, "test")]


def check_cifar10(root: Path, batches: list = (1, 2, 3, 4, 5), limit_per_class: int = 0) -> None:
    """Cheap: the options and the existence of every file the reader opens (nothing is unpickled)."""
    batches, _ = _options(batches, limit_per_class)
    root = Path(root)
    require(root, LAYOUT, "CIFAR-10 folder not found")
    folder = batch_folder(root)
    for name in [META_FILE] + [f for f, _ in _files(batches)]:
        require(folder / name, LAYOUT, "CIFAR-10 file missing")


def _gray(images: np.ndarray) -> np.ndarray:
    """(n, 3, H, W) RGB -> (n, 1, H, W) with PIL's "L" conversion (ITU-R 601-2 luma)."""
    n, _, h, w = images.shape
    out = np.empty((n, 1, h, w), np.uint8)
    step = 2048  # images per PIL call, stacked into one tall image
    for i in range(0, n, step):
        tall = np.ascontiguousarray(images[i:i + step].transpose(0, 2, 3, 1).reshape(-1, w, 3))
        out[i:i + step, 0] = np.asarray(Image.fromarray(tall, "RGB").convert("L")).reshape(-1, h, w)
    return out


def generate_cifar10_standin(out: Path, *, counts: dict, seed: int, scale: list = (0.2, 0.32), clutter: int = 6,
                             noise: float = 0.03) -> None:
    """See :func:`write_standin` (``counts`` = images per class: {"train": n, "test": m})."""
    write_standin(Path(out) / "data", Path(out) / "masks", counts=counts, seed=seed, scale=scale,
                  clutter=clutter, noise=noise)


@register_format("cifar10", layout=LAYOUT, check=check_cifar10, standin=generate_cifar10_standin,
                 splits="native", dims=2,
                 summary="CIFAR-10 python version (pickled batches, read with a restricted unpickler)")
def read_cifar10(ctx: ReadContext, *, batches: list = [1, 2, 3, 4, 5], limit_per_class: int = 0) -> Prepared:  # noqa: B006
    """The training batches ``batches`` (split "train") and ``test_batch`` (split "test").

    ``limit_per_class`` > 0 keeps the first n images of each class per split (batches in the
    order given, rows in file order); 0 keeps all.
    """
    if ctx.channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {ctx.channels}")
    batches, limit = _options(batches, limit_per_class)
    folder = batch_folder(ctx.root)
    classes = read_meta(folder / META_FILE)
    blocks, labels, ids, split, source, sums, filenames = [], [], [], [], [], [], []
    taken = {s: np.zeros(len(classes), np.int64) for s in ("train", "test")}  # images kept per class
    for name, split_name in _files(batches):
        path = folder / name
        data, y, names = read_batch(path, len(classes))
        digest = sha256_file(path)
        if limit:
            count, keep = taken[split_name], []
            for row, lab in enumerate(y.tolist()):
                if count[lab] < limit:
                    count[lab] += 1
                    keep.append(row)
            rows = np.array(keep, dtype=np.int64)
        else:
            rows = np.arange(len(y))
        rel = str(path.relative_to(ctx.root))
        blocks.append(data[rows])
        for row in rows.tolist():
            labels.append(int(y[row]))
            ids.append(f"{split_name}/{classes[y[row]]}/{name}-{row:05d}")
            filenames.append(names[row])
        split += [split_name] * len(rows)
        source += [rel] * len(rows)
        sums += [digest] * len(rows)
    images = np.concatenate(blocks).reshape(-1, 3, SIDE, SIDE)
    if ctx.channels == 1:
        images = _gray(images)
    return Prepared(images=np.ascontiguousarray(images), labels=np.array(labels, dtype=np.int64),
                    class_names=classes, ids=ids, split=split, source=source, sha256=sums,
                    meta={"filename": np.array(filenames, dtype=object)},
                    attrs={"batches": batches, "limit_per_class": limit,
                           "batch_folder": str(folder.relative_to(ctx.root))})


# ------------------------------------------------------------------------------------------------
# Writing the real format: protocol-2 pickles as Python 2 wrote them
# ------------------------------------------------------------------------------------------------

class _Py2Pickler(pickle._Pickler):
    """Protocol 2 the way Python 2's cPickle wrote the CIFAR-10 files.

    ``bytes`` become Python-2 ``str`` opcodes (SHORT_BINSTRING / BINSTRING; they load as bytes with
    ``encoding="bytes"``), and uint8 arrays are reduced as numpy does, naming numpy 1.x's
    ``numpy.core.multiarray._reconstruct`` as the real files do.
    """
    dispatch = dict(pickle._Pickler.dispatch)

    def _save_str2(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    def _save_ndarray(self, arr: np.ndarray) -> None:
        if arr.dtype != np.uint8:
            raise TypeError(f"only uint8 arrays are written, got {arr.dtype}")
        # _reconstruct(ndarray, (0,), 'b'), then __setstate__((1, shape, dtype, fortran, raw bytes))
        self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
        self.write(pickle.GLOBAL + b"numpy\nndarray\n")
        self.save((0,))
        self.save(b"b")
        self.write(pickle.TUPLE3 + pickle.REDUCE)
        self.save((1, tuple(int(s) for s in arr.shape), arr.dtype, False, np.ascontiguousarray(arr).tobytes()))
        self.write(pickle.BUILD)

    def _save_dtype(self, dtype: np.dtype) -> None:
        # dtype('u1', 0, 1), then __setstate__((3, '|', None, None, None, -1, -1, 0))
        self.write(pickle.GLOBAL + b"numpy\ndtype\n")
        self.save((b"u1", 0, 1))
        self.write(pickle.REDUCE)
        self.save((3, b"|", None, None, None, -1, -1, 0))
        self.write(pickle.BUILD)

    dispatch[bytes] = _save_str2
    dispatch[np.ndarray] = _save_ndarray
    dispatch[type(np.dtype(np.uint8))] = _save_dtype


def dumps_py2(obj) -> bytes:
    """Pickle ``obj`` (dicts, lists, ints, bytes, uint8 arrays) as a Python-2 protocol-2 file.

    Text must be given as ``bytes`` to load as bytes with ``encoding="bytes"`` (as the real files).
    """
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def _bytes(text) -> bytes:
    return text if isinstance(text, bytes) else str(text).encode()


def write_batch(path: str | Path, images: np.ndarray, labels, filenames, batch_label: str = "") -> None:
    """One batch file in the real format; ``images`` uint8 (n, 3, 32, 32) or (n, 3072)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[1:] not in ((3, SIDE, SIDE), (ROW,)):
        raise ValueError(f"images must be uint8 (n, 3, 32, 32) or (n, 3072), got {images.dtype} {images.shape}")
    n = len(images)
    labels, filenames = [int(v) for v in labels], [_bytes(f) for f in filenames]
    if len(labels) != n or len(filenames) != n:
        raise ValueError(f"{n} images but {len(labels)} labels and {len(filenames)} file names")
    obj = {b"batch_label": _bytes(batch_label), b"labels": labels,
           b"data": np.ascontiguousarray(images.reshape(n, ROW)), b"filenames": filenames}
    Path(path).write_bytes(dumps_py2(obj))


def write_meta(path: str | Path, label_names=CLASSES, num_cases_per_batch: int = 10000) -> None:
    """``batches.meta`` in the real format."""
    obj = {b"num_cases_per_batch": int(num_cases_per_batch), b"label_names": [_bytes(n) for n in label_names],
           b"num_vis": ROW}
    Path(path).write_bytes(dumps_py2(obj))


# ------------------------------------------------------------------------------------------------
# The stand-in
# ------------------------------------------------------------------------------------------------

# Class i of CLASSES: shape STANDIN_SHAPES[i % 5] in colour family i // 5 (warm or cool hues).
STANDIN_SHAPES = ("disk", "square", "triangle", "cross", "ring")
_HUES = ((-0.06, 0.10), (0.50, 0.68))  # warm: red .. orange-yellow; cool: cyan .. blue


def standin_class(label: int) -> tuple[str, str]:
    """(shape, colour family) of the stand-in's class ``label``."""
    return STANDIN_SHAPES[label % 5], ("warm", "cool")[label // 5]


def render_standin(label: int, rng: np.random.Generator, scale=(0.2, 0.32), clutter: int = 6,
                   noise: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
    """One 32×32 stand-in image (H, W, 3) uint8 of class ``label`` and its object mask."""
    shape, family = standin_class(label)
    image, mask = render(shape, rng, SIDE, tuple(scale), clutter, noise)
    lo, hi = _HUES[label // 5]
    colour = np.array(colorsys.hsv_to_rgb(rng.uniform(lo, hi) % 1.0, rng.uniform(0.7, 1.0), rng.uniform(0.7, 1.0)))
    pixels = colour[None] + rng.normal(0, noise, (int(mask.sum()), 3))
    image = image.copy()
    image[mask] = (np.clip(pixels, 0, 1) * 255 + 0.5).astype(np.uint8)
    return image, mask


def write_standin(data_root: Path, masks_root: Path, *, counts: dict, seed: int, scale=(0.2, 0.32),
                  clutter: int = 6, noise: float = 0.03) -> dict[str, int]:
    """The CIFAR-10 files (``data_root``) and object masks by image id (``masks_root``).

    ``counts = {"train": n, "test": m}``: images per class; class c's training image i goes to
    ``data_batch_{i % 5 + 1}``, and each batch's rows are shuffled (as in the real files). Every image
    is drawn from its own seed (seed, split, class, index), so the count of one split never changes
    the images of another. Returns the number of images per batch file.
    """
    unknown = sorted(set(counts) - {"train", "test"})
    if unknown:
        raise ValueError(f"cifar10 stand-in: counts has split(s) {unknown}; CIFAR-10 has 'train' "
                         f"(data_batch_1..5) and 'test' (test_batch) only")
    data_root, masks_root = Path(data_root), Path(masks_root)
    data_root.mkdir(parents=True, exist_ok=True)
    files = {f"data_batch_{b}": ("train", f"training batch {b} of 5") for b in range(1, 6)}
    files[TEST_FILE] = ("test", "testing batch 1 of 1")
    content: dict[str, list[tuple[int, int]]] = {name: [] for name in files}  # (label, index)
    for split in ("train", "test"):
        for label in range(len(CLASSES)):
            for index in range(int(counts.get(split, 0))):
                name = f"data_batch_{index % 5 + 1}" if split == "train" else TEST_FILE
                content[name].append((label, index))
    sizes = {}
    for name, (split, batch_label) in files.items():
        items = content[name]
        order = np.random.default_rng([seed, zlib.crc32(name.encode())]).permutation(len(items))
        items = [items[i] for i in order]
        images = np.zeros((len(items), 3, SIDE, SIDE), np.uint8)
        filenames = []
        for row, (label, index) in enumerate(items):
            rng = np.random.default_rng([seed, zlib.crc32(split.encode()), label, index])
            image, mask = render_standin(label, rng, scale, clutter, noise)
            images[row] = image.transpose(2, 0, 1)
            filenames.append(f"standin_{CLASSES[label]}_{split}_{index:05d}.png")
            folder = masks_root / split / CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask.astype(np.uint8) * 255, "L").save(folder / f"{name}-{row:05d}.png")
        write_batch(data_root / name, images, [lab for lab, _ in items], filenames, batch_label)
        sizes[name] = len(items)
    write_meta(data_root / META_FILE, CLASSES, max(sizes["data_batch_1"], 1))
    return sizes
