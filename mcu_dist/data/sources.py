"""The registered datasets: digits (bundled, offline default), CIFAR-10/100, Tiny-ImageNet, ImageNet-100."""

from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path

import numpy as np
import torch

from mcu_dist.config import ConfigError, DataConfig
from mcu_dist.data.registry import (
    DATASETS,
    DatasetBundle,
    DatasetSpec,
    ImageData,
    cache_path,
    default_root,
    finish,
    save_npy,
)
from mcu_dist.store import atomic, file_digest

CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _image_data(images: np.ndarray, labels: np.ndarray, index: np.ndarray | None = None) -> ImageData:
    idx = np.arange(len(labels)) if index is None else index
    return ImageData(
        torch.from_numpy(np.ascontiguousarray(images)),
        torch.as_tensor(labels, dtype=torch.int64),
        torch.as_tensor(idx, dtype=torch.int64),
    )


def load_digits(cfg: DataConfig, split_seed: int, cache_dir: str) -> DatasetBundle:
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    d = sk_digits()
    images = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[:, None]
    idx = np.arange(len(d.target))
    tr, te = train_test_split(idx, test_size=cfg.test_fraction, stratify=d.target, random_state=split_seed)
    tr, te = np.sort(tr), np.sort(te)
    train = _image_data(images[tr], d.target[tr], tr)
    test = _image_data(images[te], d.target[te], te)
    source = f"sklearn:test_fraction={cfg.test_fraction}:split_seed={split_seed}"
    return finish("digits", source, train, test, 10, (0.5,), (0.5,), False, cfg.subset, split_seed)


def _decode_parquet_cifar(path: Path, cache_dir: str) -> tuple[dict[str, np.ndarray], str]:
    """Decode the JPEG Parquet copy once; later calls memory-map the cached arrays."""
    digest = file_digest(path)[:16]
    out = {}
    files = {
        k: cache_path(cache_dir, f"cifar10_jpeg-{digest}-{k}.npy")
        for k in ("train_x", "train_y", "test_x", "test_y")
    }
    if not all(f.exists() for f in files.values()):
        import pyarrow.parquet as pq
        from PIL import Image

        table = pq.read_table(path, columns=["split", "label", "jpeg"])
        split = np.asarray(table.column("split").to_pylist())
        labels = table.column("label").to_numpy().astype(np.int64)
        jpegs = table.column("jpeg").to_pylist()
        images = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in jpegs]).transpose(
            0, 3, 1, 2
        )
        for part in ("train", "test"):
            m = split == part
            save_npy(files[f"{part}_y"], labels[m])
            save_npy(files[f"{part}_x"], np.ascontiguousarray(images[m]))
    for k, f in files.items():
        out[k] = np.load(f)
    return out, f"parquet:{digest}"


def _torchvision_cifar(cls_name: str, root: str, download: bool) -> tuple[dict[str, np.ndarray], str]:
    import torchvision

    cls = getattr(torchvision.datasets, cls_name)
    out = {}
    for part, train in (("train", True), ("test", False)):
        ds = cls(root=root, train=train, download=download)
        out[f"{part}_x"] = np.asarray(ds.data).transpose(0, 3, 1, 2)
        out[f"{part}_y"] = np.asarray(ds.targets, dtype=np.int64)
    return out, f"torchvision:{cls_name}"


def _load_cifar(
    name: str, cls_name: str, num_classes: int, stats, cfg: DataConfig, split_seed: int, cache_dir: str
) -> DatasetBundle:
    root = Path(cfg.data_root or default_root(name) or "")
    parquet = root if root.suffix == ".parquet" else root / "cifar10_jpeg.parquet"
    if name == "cifar10" and parquet.is_file():
        arrays, source = _decode_parquet_cifar(parquet, cache_dir)
    else:
        try:
            arrays, source = _torchvision_cifar(cls_name, str(root), cfg.download)
        except RuntimeError as e:
            raise ConfigError(
                f"data.data_root: {root} holds no {name} ({e}); allowed: a folder with torchvision's "
                f"{name} files" + (" or cifar10_jpeg.parquet" if name == "cifar10" else "")
            ) from None
    train = _image_data(arrays["train_x"], arrays["train_y"])
    test = _image_data(arrays["test_x"], arrays["test_y"])
    return finish(name, source, train, test, num_classes, *stats, True, cfg.subset, split_seed)


def load_cifar10(cfg: DataConfig, split_seed: int, cache_dir: str) -> DatasetBundle:
    return _load_cifar("cifar10", "CIFAR10", 10, CIFAR10_STATS, cfg, split_seed, cache_dir)


def load_cifar100(cfg: DataConfig, split_seed: int, cache_dir: str) -> DatasetBundle:
    return _load_cifar("cifar100", "CIFAR100", 100, CIFAR100_STATS, cfg, split_seed, cache_dir)


_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def _folder_listing(split_dir: Path, classes: list[str] | None) -> tuple[list[Path], list[int], list[str]]:
    """``split/<class>/**/image`` or Tiny-ImageNet's ``val/images`` + ``val_annotations.txt``."""
    annotations = split_dir / "val_annotations.txt"
    if annotations.is_file():
        assert classes is not None, "the train split names the classes"
        lookup = {c: i for i, c in enumerate(classes)}
        files, labels = [], []
        for line in annotations.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 2 and parts[1] in lookup:
                files.append(split_dir / "images" / parts[0])
                labels.append(lookup[parts[1]])
        return files, labels, classes
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    classes = classes or found
    files, labels = [], []
    for i, c in enumerate(classes):
        for f in sorted((split_dir / c).rglob("*")):
            if f.suffix.lower() in _IMAGE_SUFFIXES:
                files.append(f)
                labels.append(i)
    return files, labels, classes


def _decode_folder(
    name: str, root: Path, image_size: int, cache_dir: str
) -> tuple[dict[str, np.ndarray], list[str], str]:
    """Decode (once) to uint8 arrays; the cache key and the returned digest cover every file's path, size,
    mtime and label, so a changed tree is decoded again and named differently."""
    from PIL import Image

    train_files, train_labels, classes = _folder_listing(root / "train", None)
    val_dir = root / "val" if (root / "val").is_dir() else root / "test"
    test_files, test_labels, _ = _folder_listing(val_dir, classes)
    if not train_files or not test_files:
        raise ConfigError(
            f"data.data_root: {root} has no images under train/ and val/; allowed: an image-folder tree"
        )
    listing = hashlib.sha256()
    for f, y in zip(train_files + test_files, train_labels + test_labels, strict=True):
        st = f.stat()
        listing.update(f"{f.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}|{y}\n".encode())
    digest = listing.hexdigest()[:16]
    key = f"{name}-{image_size}-{digest}"
    out = {}
    for part, files, labels in (("train", train_files, train_labels), ("test", test_files, test_labels)):
        fx, fy = cache_path(cache_dir, f"{key}-{part}_x.npy"), cache_path(cache_dir, f"{key}-{part}_y.npy")
        if not (fx.exists() and fy.exists()):
            with atomic(fx) as tmp:
                arr = np.lib.format.open_memmap(
                    tmp, mode="w+", dtype=np.uint8, shape=(len(files), 3, image_size, image_size)
                )
                for i, f in enumerate(files):
                    img = Image.open(f).convert("RGB").resize((image_size, image_size), Image.BILINEAR)
                    arr[i] = np.asarray(img).transpose(2, 0, 1)
                arr.flush()
                del arr
            save_npy(fy, np.asarray(labels, dtype=np.int64))
        out[f"{part}_x"] = np.load(fx, mmap_mode="c")  # copy-on-write: paged in lazily
        out[f"{part}_y"] = np.load(fy)
    return out, classes, digest


def _load_folder(
    name: str, image_size: int, cfg: DataConfig, split_seed: int, cache_dir: str
) -> DatasetBundle:
    root = Path(cfg.data_root or default_root(name) or "")
    if not (root / "train").is_dir():
        raise ConfigError(
            f"data.data_root: {root} has no train/ folder; allowed: an image-folder tree with train/ and val/"
        )
    arrays, classes, digest = _decode_folder(name, root, image_size, cache_dir)
    train = _image_data(arrays["train_x"], arrays["train_y"])
    test = _image_data(arrays["test_x"], arrays["test_y"])
    return finish(
        name,
        f"folder:{len(classes)}:{image_size}:{digest}",
        train,
        test,
        len(classes),
        *IMAGENET_STATS,
        True,
        cfg.subset,
        split_seed,
    )


def load_tinyimagenet(cfg: DataConfig, split_seed: int, cache_dir: str) -> DatasetBundle:
    return _load_folder("tinyimagenet", 64, cfg, split_seed, cache_dir)


def load_imagenet100(cfg: DataConfig, split_seed: int, cache_dir: str) -> DatasetBundle:
    return _load_folder("imagenet100", 224, cfg, split_seed, cache_dir)


DATASETS.register("digits")(DatasetSpec(load_digits, needs_root=False))
DATASETS.register("cifar10")(DatasetSpec(load_cifar10, needs_root=True))
DATASETS.register("cifar100")(DatasetSpec(load_cifar100, needs_root=True))
DATASETS.register("tinyimagenet")(DatasetSpec(load_tinyimagenet, needs_root=True))
DATASETS.register("imagenet100")(DatasetSpec(load_imagenet100, needs_root=True))


def load_dataset(cfg: DataConfig, split_seed: int, cache_dir: str) -> DatasetBundle:
    try:
        bundle = DATASETS[cfg.dataset].load(cfg, split_seed, cache_dir)
    except ConfigError:
        raise
    except (OSError, ValueError, EOFError, KeyError, RuntimeError, pickle.UnpicklingError) as e:
        # a damaged file under data_root (garbage bytes, an image PIL cannot decode, a truncated array)
        first = (str(e).splitlines() or [""])[0][:160]
        raise ConfigError(
            f"data.data_root: cannot read {cfg.dataset} from {cfg.data_root or default_root(cfg.dataset)} "
            f"({type(e).__name__}: {first}); allowed: an intact copy of the dataset"
        ) from None
    if cfg.augment is not None:
        bundle.augment = cfg.augment
    return bundle
