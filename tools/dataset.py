"""Image folders -> typed records: the MVTec AD layout or a plain folder of good images.

MVTec AD layout::

    DATA/train/good/*.png            good images to learn from
    DATA/test/good/*.png             optional: good test images
    DATA/test/<defect>/*.png         optional: defective test images, one folder per defect type
    DATA/ground_truth/<defect>/<name>_mask.png   optional: defect masks (255 on defect pixels)

Anything else is a plain folder: every image under it (recursively) is a good training image.
Images may differ in size and be gray or color, 8 or 16 bit (the bit depth of 16-bit data is detected:
a 12-bit camera's 0..4095 is scaled as 12 bits); a file that cannot be decoded, or holds a pixel type
the daemon cannot run (float, 2 channels), is reported by name and skipped, so one bad file never stops
a run. Masks are strict instead: an empty, unreadable or wrongly sized mask is an error naming it,
since a mask taken as "no defect" silently corrupts the pixel metrics.

Images are shrunk to the model's input size as they are read (`model_sized`), so memory does not grow
with the camera's resolution.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edged.bundle import InputSpec
from edged.preprocess import prepare_uint8, to_uint8
from edged.sources import IMAGE_EXTENSIONS  # the one list, owned by the daemon

log = logging.getLogger(__name__)

GOOD = "good"


class DatasetError(ValueError):
    """A dataset that cannot be used (missing folder, no images); the message says what to fix."""


@dataclass(frozen=True)
class Record:
    """One image: where it is, what it shows ("good" or a defect type) and its mask when known."""

    path: Path
    label: str = GOOD
    mask: Path | None = None
    split: str = "train"  # "train" | "test"

    @property
    def is_good(self) -> bool:
        """A good part (label "good"); anything else is a defect type."""
        return self.label == GOOD


@dataclass
class Dataset:
    """What `load_dataset` found: good training records and, in the MVTec layout, the test split."""

    root: Path
    layout: str  # "mvtec" | "folder"
    train: list[Record] = field(default_factory=list)
    test: list[Record] = field(default_factory=list)

    @property
    def defect_types(self) -> list[str]:
        """The test split's defect labels, sorted (empty without defective test images)."""
        return sorted({r.label for r in self.test if not r.is_good})

    def describe(self) -> str:
        """One line for the log: root, layout and the image count of each split and label."""
        counts = {GOOD: sum(r.is_good for r in self.test)}
        for t in self.defect_types:
            counts[t] = sum(r.label == t for r in self.test)
        test = ", ".join(f"{k} {v}" for k, v in counts.items()) if self.test else "none"
        return f"{self.root} ({self.layout}): train/good {len(self.train)}, test: {test}"


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _images_in(folder: Path, recursive: bool) -> list[Path]:
    if not folder.is_dir():
        return []
    pattern = folder.rglob("*") if recursive else folder.iterdir()
    found = [p for p in pattern if _is_image(p) and not any(part.startswith(".") for part in
                                                             p.relative_to(folder).parts)]
    return sorted(found)


def _mask_for(root: Path, label: str, image: Path) -> Path | None:
    folder = root / "ground_truth" / label
    for name in (f"{image.stem}_mask.png", f"{image.stem}.png", f"{image.stem}_mask{image.suffix}"):
        if (folder / name).is_file():
            if (folder / name).stat().st_size == 0:
                raise DatasetError(f"{folder / name}: mask file is empty (0 bytes); fix or remove it")
            return folder / name
    return None


def load_dataset(root: str | Path) -> Dataset:
    """Index a dataset folder (no pixel is read here). Raises `DatasetError` when it holds no image."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"{root}: no such folder")
    if root.is_file():
        raise DatasetError(f"{root}: is a file, expected a folder of images")
    if (root / "train" / GOOD).is_dir() or (root / "test").is_dir():
        ds = Dataset(root, "mvtec")
        ds.train = [Record(p) for p in _images_in(root / "train" / GOOD, recursive=True)]
        test_root = root / "test"
        if test_root.is_dir():
            for folder in sorted(p for p in test_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
                label = folder.name
                for p in _images_in(folder, recursive=True):
                    mask = None if label == GOOD else _mask_for(root, label, p)
                    ds.test.append(Record(p, label, mask, "test"))
        if not ds.train and not ds.test:
            raise DatasetError(f"{root}: MVTec layout but no image in train/good or test/")
        missing = sum(1 for r in ds.test if not r.is_good and r.mask is None)
        if missing and (root / "ground_truth").is_dir():
            log.warning("%s: %d defective test image(s) have no mask in ground_truth/", root, missing)
        return ds
    ds = Dataset(root, "folder", train=[Record(p) for p in _images_in(root, recursive=True)])
    if not ds.train:
        raise DatasetError(f"{root}: no image found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return ds


def read_image(path: Path) -> np.ndarray | None:
    """Decode an image as stored (gray, BGR, BGRA, 8 or 16 bit); None when it cannot be decoded."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)  # not cv2.imread: it fails silently on some paths
    except OSError:
        return None
    if data.size == 0:
        return None
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        return None
    return image


def sample_images(records: Sequence[Record], sample: int, seed: int | Sequence[int]) -> Iterator[np.ndarray]:
    """The decoded images (as stored) of a seeded random sample of `records`, in file order, unreadable or empty
    ones skipped: what the fit's choices from the data (input size, light normalization) look at."""
    idx = np.random.default_rng(seed).permutation(len(records))[:sample]
    for i in sorted(idx.tolist()):
        image = read_image(records[i].path)
        if image is not None and image.size:
            yield image


def read_mask(path: Path | None, shape: tuple[int, int], image_shape: tuple[int, int] | None = None,
              ) -> np.ndarray:
    """Binary mask (bool HxW) resized to ``shape`` (rows, cols); all False when there is none.

    ``image_shape`` is the (rows, cols) of the mask's image as stored: a mask of another size belongs to
    another image (or was drawn at another scale), so it is a `DatasetError` naming both, as is a mask
    that cannot be read.
    """
    if path is None:
        return np.zeros(shape, bool)
    mask = read_image(path)
    if mask is None:
        raise DatasetError(f"{path}: mask cannot be read (empty or not an image)")
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    if image_shape is not None and mask.shape[:2] != tuple(image_shape):
        raise DatasetError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                           f"{image_shape[1]}x{image_shape[0]}")
    if mask.shape[:2] != shape:
        mask = cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return mask > 0


BIT_DEPTHS = (8, 10, 12, 14, 16)
DEEP_SUFFIXES = frozenset({".png", ".tif", ".tiff", ".pgm", ".ppm"})  # formats that can hold 16 bits


def detect_bit_depth(records: Sequence[Record], sample: int = 16) -> tuple[int, int | None]:
    """(bits, highest value) of the 16-bit images among an even sample of `records`; (16, None) if none.

    A 12-bit camera writes 0..4095 into 16-bit files; taking the top 8 of 16 bits leaves such images
    nearly black. The smallest standard depth (8, 10, 12, 14, 16) that holds the highest value seen is
    the one the manifest records, and the daemon scales its frames the same way.
    """
    deep = [r for r in records if r.path.suffix.lower() in DEEP_SUFFIXES]
    if not deep:
        return 16, None
    picks = [deep[int(i)] for i in np.unique(np.linspace(0, len(deep) - 1, min(sample, len(deep))).round())]
    highest: int | None = None
    for rec in picks:
        image = read_image(rec.path)
        if image is not None and image.dtype == np.uint16:
            highest = max(highest or 0, int(image.max()))
    if highest is None:
        return 16, None
    bits = next(b for b in BIT_DEPTHS if highest < 2 ** b)
    return bits, highest


def model_sized(spec: InputSpec) -> Callable[[np.ndarray], np.ndarray]:
    """Transform for `load_images`: the image the daemon's preprocessing would feed the model, made as
    it is read (memory bounded by the model size, not the camera's), in an order `Detector` takes again
    unchanged (BGR for an RGB model: `prepare_uint8` then swaps it exactly as it would the full frame)."""
    as_read = spec.model_copy(update={"color_order": "bgr" if spec.color_order == "rgb" else spec.color_order,
                                      "normalize": "none"})  # the Detector normalizes when it takes it again
    return lambda image: prepare_uint8(image, as_read)


def as_delivered(records: Sequence[Record], spec: InputSpec, change: Callable[[np.ndarray, int], np.ndarray],
                 progress: bool = False, desc: str = "reading images") -> list[np.ndarray]:
    """Each record's image (index i) as a camera that changes it by `change(image, i)` would deliver it, at the
    model's size like `model_sized`: the change is made at the size stored, the camera's, before the resize. A
    JPEG block, sensor noise or a clipped highlight belongs to the camera's pixels: made on the small model-sized
    image, JPEG 75 and noise of 8 grey levels were several times harsher than any camera makes them. The records
    must be readable (kept by an earlier `load_images`); 16-bit images are brought to 8 bits first, as the
    daemon's preprocessing does before anything else."""
    to_model = model_sized(spec)
    iterable: Iterable[tuple[int, Record]] = enumerate(records)
    if progress:
        from tqdm import tqdm

        iterable = tqdm(iterable, total=len(records), desc=desc, unit="img", leave=False)
    out: list[np.ndarray] = []
    for i, rec in iterable:
        image = read_image(rec.path)
        if image is None:
            raise DatasetError(f"{rec.path}: no longer a readable image (it was read moments ago)")
        out.append(to_model(change(to_uint8(image, spec.bit_depth), i)))
    return out


def load_images(records: Sequence[Record], progress: bool = False, desc: str = "reading images",
                transform: Callable[[np.ndarray], np.ndarray] | None = None,
                shapes: list[tuple[int, int]] | None = None) -> tuple[list[np.ndarray], list[Record]]:
    """Decode the records' images (and `transform` each, e.g. to the model's size, as it is read, so a
    large dataset is never held at full resolution); unreadable or unusable files are logged by name
    and left out of both lists. `shapes`, when given, receives each kept image's (rows, cols) as stored."""
    images: list[np.ndarray] = []
    kept: list[Record] = []
    iterable: Iterable[Record] = records
    if progress:
        from tqdm import tqdm

        iterable = tqdm(records, desc=desc, unit="img", leave=False)
    for rec in iterable:
        image = read_image(rec.path)
        if image is None:
            log.warning("skipping %s: not a readable image", rec.path)
            continue
        stored = (int(image.shape[0]), int(image.shape[1]))
        if transform is not None:
            try:
                image = transform(image)
            except (ValueError, cv2.error) as exc:  # edged.preprocess.FrameError: e.g. a 2-channel or float image
                log.warning("skipping %s: %s", rec.path, str(exc).strip().splitlines()[-1])
                continue
        images.append(image)
        kept.append(rec)
        if shapes is not None:
            shapes.append(stored)
    return images, kept


def holdout_split(records: Sequence[Record], fraction: float = 0.15, seed: int = 0,
                  ) -> tuple[list[Record], list[Record]]:
    """Seeded split of good training images into (train, holdout); the holdout is never trained on.

    At least one image is held out when ``fraction > 0`` and at least one is kept for training.
    """
    if not 0 <= fraction < 1:
        raise DatasetError(f"hold-out fraction must be in [0, 1), not {fraction}")
    n = len(records)
    n_hold = 0 if fraction == 0 else max(1, round(n * fraction))
    if n - n_hold < 1:
        raise DatasetError(f"{n} good image(s) are too few to train on and hold some out for calibration")
    order = np.random.default_rng(seed).permutation(n)
    hold = set(order[:n_hold].tolist())
    train = [r for i, r in enumerate(records) if i not in hold]
    held = [r for i, r in enumerate(records) if i in hold]
    return train, held


def file_list_sha256(records: Iterable[Record], root: Path) -> str:
    """sha256 of the sorted relative paths: which files a model was trained on, without their pixels."""
    names = sorted(_relative(r.path, root) for r in records)
    return hashlib.sha256("\n".join(names).encode("utf-8")).hexdigest()


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()
