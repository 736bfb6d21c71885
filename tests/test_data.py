"""Data layer: datasets and their loaders, subsets, forget sets and manifests, class-wise splits,
data-parallel batching and configuration errors.

Every data tree is written under pytest's ``tmp_path``; nothing is downloaded. The shared offline
CIFAR-10 Parquet is only read (decoded once, into a temporary cache) and its tests skip where it is absent.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torch import nn

from mcu_dist.config import (
    ConfigError,
    DataConfig,
    ExperimentConfig,
    ForgetConfig,
    load_yaml,
    with_overrides,
)
from mcu_dist.data import Normalizer, check_data, iterate, load_dataset, make_splits, write_manifest
from mcu_dist.data.forget import manifest_hash
from mcu_dist.data.loader import batch_spans
from mcu_dist.evaluate.metrics import predict
from mcu_dist.evaluate.point import evaluate_model
from mcu_dist.lab import Lab
from mcu_dist.validation import validate
from tests.conftest import CIFAR_PARQUET

N_DIGITS = 1797


# --------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("data_cache"))


@pytest.fixture(scope="module")
def digits(cache_dir):
    return load_dataset(DataConfig(dataset="digits"), 0, cache_dir)


def _sk_digits():
    from sklearn.datasets import load_digits

    return load_digits()


def _jpeg_bytes(img_hwc: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img_hwc).save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def _smooth_images(n: int, size: int, seed: int) -> np.ndarray:
    """(n, size, size, 3) uint8 images with smooth, per-image different content (JPEG-friendly)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        for c in range(3):
            a, b, base = rng.uniform(-90, 90), rng.uniform(-90, 90), rng.uniform(60, 195)
            out[i, :, :, c] = np.clip(base + a * (yy - 0.5) + b * (xx - 0.5), 0, 255).round()
    return out


def _class_colour(c: int) -> tuple[int, int, int]:
    return (30 + 40 * c, 200 - 30 * c, (90 + 70 * c) % 256)


def _write_solid(path: Path, colour: tuple[int, int, int], size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path, format="JPEG", quality=95, subsampling=0)


def _assert_solid_colour(images: torch.Tensor, labels: torch.Tensor, tol: float = 4.0) -> None:
    """Each image is (close to) the solid colour of its label: labels and pixels travelled together."""
    for img, y in zip(images, labels, strict=True):
        want = torch.tensor(_class_colour(int(y)), dtype=torch.float32).view(3, 1, 1)
        assert (img.float() - want).abs().max() <= tol, f"image of label {int(y)} has the wrong colour"


def _lab(tmp_path: Path, spec: str, **overrides) -> Lab:
    base = {
        "cache_dir": str(tmp_path / "cache"),
        "out": str(tmp_path / "runs"),
        "forget.spec": spec,
        "eval.mia_cap": 200,
    }
    return Lab.build(with_overrides(ExperimentConfig(), {**base, **overrides}))


# --------------------------------------------------------------------------------------------- 1. digits


def test_digits_split_seeded_stratified_disjoint_covering(cache_dir):
    sk = _sk_digits()
    a = load_dataset(DataConfig(dataset="digits"), 0, cache_dir)
    b = load_dataset(DataConfig(dataset="digits"), 0, cache_dir)
    c = load_dataset(DataConfig(dataset="digits"), 1, cache_dir)

    assert torch.equal(a.train.index, b.train.index) and torch.equal(a.test.index, b.test.index)
    assert a.dataset_id == b.dataset_id
    assert not torch.equal(a.train.index, c.train.index), "another split seed should give another split"
    assert a.dataset_id != c.dataset_id

    for bundle in (a, c):
        tr, te = set(bundle.train.index.tolist()), set(bundle.test.index.tolist())
        assert not tr & te
        assert tr | te == set(range(N_DIGITS))
        assert len(bundle.train) + len(bundle.test) == N_DIGITS
        assert abs(len(bundle.test) - 0.25 * N_DIGITS) <= 1
        # stratified: every class in both splits, in roughly the dataset's proportions
        full = np.bincount(sk.target, minlength=10)
        for part in (bundle.train, bundle.test):
            counts = torch.bincount(part.labels, minlength=10).numpy()
            assert (counts > 0).all()
            np.testing.assert_allclose(counts / counts.sum(), full / full.sum(), atol=0.01)
        # labels follow the index back to sklearn's targets
        assert torch.equal(bundle.train.labels, torch.as_tensor(sk.target[bundle.train.index.numpy()]))
        assert torch.equal(bundle.test.labels, torch.as_tensor(sk.target[bundle.test.index.numpy()]))


def test_digits_images_uint8(digits):
    sk = _sk_digits()
    for part in (digits.train, digits.test):
        assert part.images.dtype == torch.uint8
        assert part.images.shape == (len(part), 1, 8, 8)
        assert part.labels.dtype == torch.int64
        want = np.clip(np.rint(sk.images[part.index.numpy()] * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        assert np.array_equal(part.images[:, 0].numpy(), want)
    assert int(digits.train.images.max()) == 255 and int(digits.train.images.min()) == 0
    assert digits.num_classes == 10 and digits.in_channels == 1 and digits.image_size == 8


# --------------------------------------------------------------------------------------------- 2. manifests


def test_manifest_hash_seeded(digits):
    cfg = ForgetConfig("random:0.1")
    s0, s0b, s1 = make_splits(digits, cfg, 0), make_splits(digits, cfg, 0), make_splits(digits, cfg, 1)
    assert torch.equal(s0.forget, s0b.forget) and s0.manifest_hash == s0b.manifest_hash
    assert s0.manifest_hash != s1.manifest_hash
    assert not torch.equal(s0.forget, s1.forget)
    n = len(digits.train)
    assert len(s0.forget) == round(0.1 * n)
    assert sorted(torch.cat([s0.forget, s0.retain]).tolist()) == list(range(n))
    assert len(s0.test_forgotten) == 0 and torch.equal(s0.test_eval, torch.arange(len(digits.test)))
    assert not s0.classwise
    assert len(s0.manifest_hash) == 64 and int(s0.manifest_hash, 16) >= 0


def test_write_manifest_parquet(digits, tmp_path):
    splits = make_splits(digits, ForgetConfig("random:0.1"), 0)
    path = tmp_path / "manifest.parquet"
    returned = write_manifest(digits, splits, path)
    assert returned == splits.manifest_hash
    assert not list(tmp_path.glob("*.tmp"))

    table = pq.read_table(path)
    assert table.column_names == ["index", "label", "split"]
    meta = table.schema.metadata
    assert meta[b"sha256"].decode() == splits.manifest_hash
    assert meta[b"dataset_id"].decode() == digits.dataset_id

    idx = table.column("index").to_numpy()
    want = np.sort(digits.train.index[splits.forget].numpy())
    assert np.array_equal(idx, want)
    lookup = dict(zip(digits.train.index.tolist(), digits.train.labels.tolist(), strict=True))
    assert table.column("label").to_pylist() == [lookup[i] for i in idx.tolist()]
    assert set(table.column("split").to_pylist()) == {"train"}
    # the hash is over the dataset id and the sorted indices: recomputable from the file alone
    assert manifest_hash(meta[b"dataset_id"].decode(), torch.from_numpy(idx.copy())) == splits.manifest_hash


def test_manifest_hash_independent_of_file_format(digits, tmp_path):
    reference = make_splits(digits, ForgetConfig("random:0.1"), 3)
    wanted = digits.train.index[reference.forget].numpy()
    shuffled = np.random.default_rng(0).permutation(wanted)  # order in the file must not matter

    txt = tmp_path / "forget.txt"
    txt.write_text("\n".join(map(str, shuffled.tolist())) + "\n")
    npy = tmp_path / "forget.npy"
    np.save(npy, shuffled.astype(np.int32))
    parquet = tmp_path / "forget.parquet"
    pq.write_table(pa.table({"index": pa.array(shuffled, pa.int64())}), parquet)
    manifest = tmp_path / "manifest.parquet"
    write_manifest(digits, reference, manifest)  # the manifest itself is a valid file: forget set

    hashes = set()
    for f in (txt, npy, parquet, manifest):
        s = make_splits(digits, ForgetConfig(f"file:{f}"), 0)
        assert torch.equal(s.forget, torch.sort(reference.forget).values), f.suffix
        hashes.add(s.manifest_hash)
    assert hashes == {reference.manifest_hash}


# --------------------------------------------------------------------------------------------- 3. class-wise


def test_class_spec_forgets_exactly_those_classes(digits):
    s = make_splits(digits, ForgetConfig("class:3,5"), 0)
    labels = digits.train.labels
    assert s.classwise and s.forget_classes == [3, 5]
    want = torch.nonzero((labels == 3) | (labels == 5)).flatten()
    assert torch.equal(s.forget, want)
    assert torch.equal(s.retain, torch.nonzero((labels != 3) & (labels != 5)).flatten())
    test_labels = digits.test.labels
    assert not torch.isin(test_labels[s.test_eval], torch.tensor([3, 5])).any()
    assert torch.isin(test_labels[s.test_forgotten], torch.tensor([3, 5])).all()
    assert torch.equal(s.test_forgotten, torch.nonzero((test_labels == 3) | (test_labels == 5)).flatten())
    assert sorted(torch.cat([s.test_eval, s.test_forgotten]).tolist()) == list(range(len(digits.test)))


def test_classes_spec_draws_seeded_classes(digits):
    seen = set()
    for seed in range(6):
        a = make_splits(digits, ForgetConfig("classes:2"), seed)
        b = make_splits(digits, ForgetConfig("classes:2"), seed)
        assert a.forget_classes == b.forget_classes and a.manifest_hash == b.manifest_hash
        assert len(a.forget_classes) == 2 and len(set(a.forget_classes)) == 2
        assert all(0 <= c < 10 for c in a.forget_classes)
        gone = torch.tensor(a.forget_classes)
        assert torch.equal(a.forget, torch.nonzero(torch.isin(digits.train.labels, gone)).flatten())
        assert not torch.isin(digits.test.labels[a.test_eval], gone).any()
        assert torch.isin(digits.test.labels[a.test_forgotten], gone).all()
        seen.add(tuple(a.forget_classes))
    assert len(seen) > 1, "the split seed should change which classes are drawn"


class _ConstantClass(nn.Module):
    """Predicts class ``c`` for every input."""

    def __init__(self, c: int, num_classes: int = 10):
        super().__init__()
        self.register_buffer("logits", torch.nn.functional.one_hot(torch.tensor(c), num_classes).float() * 10)

    def forward(self, x):
        return self.logits.expand(len(x), -1)


def test_ta_excludes_forgotten_classes(tmp_path):
    lab = _lab(tmp_path, "class:3,5")
    b, s = lab.bundle, lab.splits

    # a model that always says "3": 0% on the remaining classes, share of 3s on the forgotten ones
    row = evaluate_model(_ConstantClass(3), lab)
    t_gone = b.test.labels[s.test_forgotten]
    tr_gone = b.train.labels[s.forget]
    assert row["TA"] == 0.0
    assert row["RA"] == 0.0
    assert row["TA_forgotten"] == pytest.approx(100.0 * (t_gone == 3).float().mean().item())
    assert row["FA"] == pytest.approx(100.0 * (tr_gone == 3).float().mean().item())
    assert row["UA"] == pytest.approx(100.0 - row["FA"])

    # a fixed linear layer: TA is its accuracy over test_eval only
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    row = evaluate_model(model, lab)
    with torch.no_grad():
        x = (b.test.images[s.test_eval].float() - 127.5) / 127.5  # digits: mean = std = 0.5
        want = 100.0 * (model(x).argmax(1) == b.test.labels[s.test_eval]).float().mean().item()
        xf = (b.test.images[s.test_forgotten].float() - 127.5) / 127.5
        want_f = 100.0 * (model(xf).argmax(1) == b.test.labels[s.test_forgotten]).float().mean().item()
    assert row["TA"] == pytest.approx(want, abs=1e-4)
    assert row["TA_forgotten"] == pytest.approx(want_f, abs=1e-4)
    assert row["TA"] == pytest.approx(predict(model, b.test, s.test_eval, lab.normalize).accuracy, abs=1e-4)
    everything = predict(model, b.test, torch.arange(len(b.test)), lab.normalize).accuracy
    n_eval, n_gone = len(s.test_eval), len(s.test_forgotten)
    assert everything == pytest.approx((want * n_eval + want_f * n_gone) / (n_eval + n_gone), abs=1e-3)


def test_random_forgetting_has_no_forgotten_test_set(tmp_path):
    lab = _lab(tmp_path, "random:0.1")
    row = evaluate_model(_ConstantClass(3), lab)
    assert "TA_forgotten" not in row
    assert row["TA"] == pytest.approx(100.0 * (lab.bundle.test.labels == 3).float().mean().item())


# --------------------------------------------------------------------------------------------- 4. subset


def test_subset_per_class_seeded_test_whole(cache_dir, digits):
    a = load_dataset(DataConfig(dataset="digits", subset=5), 0, cache_dir)
    b = load_dataset(DataConfig(dataset="digits", subset=5), 0, cache_dir)
    assert len(a.train) == 50
    assert torch.bincount(a.train.labels, minlength=10).tolist() == [5] * 10
    assert torch.equal(a.train.index, b.train.index) and a.dataset_id == b.dataset_id
    assert "subset=5" in a.dataset_id and a.dataset_id != digits.dataset_id
    # a subset of the (same-seed) full training split, with the samples' original indices kept
    assert set(a.train.index.tolist()) <= set(digits.train.index.tolist())
    full = dict(zip(digits.train.index.tolist(), range(len(digits.train)), strict=True))
    pos = torch.tensor([full[i] for i in a.train.index.tolist()])
    assert torch.equal(a.train.images, digits.train.images[pos])
    assert torch.equal(a.train.labels, digits.train.labels[pos])
    # the test set is whole
    assert torch.equal(a.test.index, digits.test.index) and torch.equal(a.test.images, digits.test.images)

    # the subset draw itself is seeded: same split, another subset seed -> another subset
    from mcu_dist.data.registry import seeded_subset

    p0, p0b, p1 = (seeded_subset(digits.train.labels, 5, s) for s in (0, 0, 1))
    assert torch.equal(p0, p0b) and not torch.equal(p0, p1)

    # more than a class holds: every sample of it
    big = load_dataset(DataConfig(dataset="digits", subset=10_000), 0, cache_dir)
    assert torch.equal(big.train.index, digits.train.index)


# ----------------------------------------------------------------------------------- 5a. torchvision CIFAR-10


def _write_torchvision_cifar(root: Path, per_batch: int, n_test: int, seed: int = 0):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    train_x, train_y = [], []
    for i in range(1, 6):
        x = rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8)
        y = rng.integers(0, 10, per_batch).tolist()
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({"batch_label": f"training batch {i} of 5", "data": x, "labels": y}, f)
        train_x.append(x)
        train_y += y
    test_x = rng.integers(0, 256, (n_test, 3 * 32 * 32), dtype=np.uint8)
    test_y = rng.integers(0, 10, n_test).tolist()
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"batch_label": "testing batch 1 of 1", "data": test_x, "labels": test_y}, f)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072}, f)
    return (
        np.concatenate(train_x).reshape(-1, 3, 32, 32),
        np.array(train_y),
        test_x.reshape(-1, 3, 32, 32),
        np.array(test_y),
    )


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _trust_tiny_cifar(monkeypatch, root: Path) -> None:
    """Point torchvision's own md5 integrity check at the md5s of the files this test wrote."""
    import torchvision

    cls = torchvision.datasets.CIFAR10
    folder = root / cls.base_folder
    monkeypatch.setattr(cls, "train_list", [[n, _md5(folder / n)] for n, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[n, _md5(folder / n)] for n, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": _md5(folder / cls.meta["filename"])})


def test_torchvision_cifar10_folder_round_trip(tmp_path, monkeypatch):
    root = tmp_path / "cifar"
    train_x, train_y, test_x, test_y = _write_torchvision_cifar(root, per_batch=4, n_test=6)
    _trust_tiny_cifar(monkeypatch, root)

    cfg = DataConfig(dataset="cifar10", data_root=str(root))
    check_data(cfg)
    bundle = load_dataset(cfg, 0, str(tmp_path / "cache"))
    assert bundle.num_classes == 10 and bundle.augment is True
    assert "torchvision" in bundle.dataset_id
    assert bundle.train.images.dtype == torch.uint8
    assert bundle.train.images.shape == (20, 3, 32, 32) and bundle.test.images.shape == (6, 3, 32, 32)
    assert np.array_equal(bundle.train.images.numpy(), train_x)
    assert np.array_equal(bundle.test.images.numpy(), test_x)
    assert bundle.train.labels.tolist() == train_y.tolist()
    assert bundle.test.labels.tolist() == test_y.tolist()
    assert bundle.train.index.tolist() == list(range(20)) and bundle.test.index.tolist() == list(range(6))

    # augment override from the config
    off = load_dataset(
        DataConfig(dataset="cifar10", data_root=str(root), augment=False), 0, str(tmp_path / "c2")
    )
    assert off.augment is False


def test_torchvision_cifar10_corrupt_files_are_a_config_error(tmp_path):
    # the md5s of these files are not CIFAR-10's: torchvision's integrity check fails
    root = tmp_path / "cifar"
    _write_torchvision_cifar(root, per_batch=2, n_test=2)
    with pytest.raises(ConfigError, match=r"^data\.data_root"):
        load_dataset(DataConfig(dataset="cifar10", data_root=str(root)), 0, str(tmp_path / "cache"))


# --------------------------------------------------------------------------------------- 5b. CIFAR-10 Parquet


CIFAR_CLASSES = "airplane,automobile,bird,cat,deer,dog,frog,horse,ship,truck"


def _write_cifar_parquet(path: Path, per_class_train: int, per_class_test: int, seed: int = 0):
    n_train, n_test = 10 * per_class_train, 10 * per_class_test
    images = _smooth_images(n_train + n_test, 32, seed)
    rows = {"split": [], "label": [], "index_in_class": [], "jpeg": []}
    originals = {"train": ([], []), "test": ([], [])}
    k = 0
    for split, per_class in (("train", per_class_train), ("test", per_class_test)):
        for label in range(10):
            for j in range(per_class):
                img = images[k]
                k += 1
                rows["split"].append(split)
                rows["label"].append(label)
                rows["index_in_class"].append(j)
                rows["jpeg"].append(_jpeg_bytes(img))
                originals[split][0].append(img.transpose(2, 0, 1))
                originals[split][1].append(label)
    schema = pa.schema(
        [
            ("split", pa.dictionary(pa.int8(), pa.string())),
            ("label", pa.int8()),
            ("index_in_class", pa.int32()),
            ("jpeg", pa.binary()),
        ],
        metadata={"classes": CIFAR_CLASSES, "source": "test_data.py"},
    )
    table = pa.table(
        {
            "split": pa.array(rows["split"]).dictionary_encode().cast(schema.field("split").type),
            "label": pa.array(rows["label"], pa.int8()),
            "index_in_class": pa.array(rows["index_in_class"], pa.int32()),
            "jpeg": pa.array(rows["jpeg"], pa.binary()),
        },
        schema=schema,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd")
    return {s: (np.stack(x), np.array(y)) for s, (x, y) in originals.items()}


def test_cifar10_parquet_decode_and_cache(tmp_path, monkeypatch):
    parquet = tmp_path / "offline" / "cifar10_jpeg.parquet"
    originals = _write_cifar_parquet(parquet, per_class_train=3, per_class_test=2)
    os.chmod(parquet, 0o444)  # like the shared copy: read-only
    cache = tmp_path / "cache"

    for root in (parquet.parent, parquet):  # the folder holding it, or the file itself
        cfg = DataConfig(dataset="cifar10", data_root=str(root))
        check_data(cfg)
        bundle = load_dataset(cfg, 0, str(cache))
        assert bundle.dataset_id.startswith("cifar10:parquet:")
        for split, part in (("train", bundle.train), ("test", bundle.test)):
            x, y = originals[split]
            assert part.images.dtype == torch.uint8 and part.images.shape == x.shape
            assert part.labels.tolist() == y.tolist()
            diff = np.abs(part.images.numpy().astype(np.int16) - x.astype(np.int16))
            assert diff.mean() < 2.0 and diff.max() <= 24, (diff.mean(), diff.max())
            # each decoded image is nearest to its own original (no shuffling of rows)
            dist = np.abs(
                part.images.numpy().reshape(len(x), 1, -1).astype(np.int16)
                - x.reshape(1, len(x), -1).astype(np.int16)
            ).mean(-1)
            assert (dist.argmin(1) == np.arange(len(x))).all()

    # the decoded arrays live in the cache dir, never next to the Parquet file
    cached = sorted((cache / "datasets").glob("cifar10_jpeg-*.npy"))
    assert {p.name.rsplit("-", 1)[1] for p in cached} == {
        "train_x.npy",
        "train_y.npy",
        "test_x.npy",
        "test_y.npy",
    }
    assert sorted(p.name for p in parquet.parent.iterdir()) == ["cifar10_jpeg.parquet"]
    mtimes = {p: p.stat().st_mtime_ns for p in cached}

    # a second load reuses them: no JPEG is decoded, no cache file is rewritten
    def no_decoding(*a, **k):
        raise AssertionError("the second load decoded JPEGs instead of using the cache")

    monkeypatch.setattr(Image, "open", no_decoding)
    again = load_dataset(DataConfig(dataset="cifar10", data_root=str(parquet.parent)), 0, str(cache))
    assert {p: p.stat().st_mtime_ns for p in cached} == mtimes
    assert sorted((cache / "datasets").glob("cifar10_jpeg-*.npy")) == cached
    assert torch.equal(again.train.images, bundle.train.images)
    assert torch.equal(again.test.labels, bundle.test.labels)


def test_cifar10_parquet_rebuilt_file_gets_fresh_cache(tmp_path):
    parquet = tmp_path / "a" / "cifar10_jpeg.parquet"
    cache = str(tmp_path / "cache")
    _write_cifar_parquet(parquet, 1, 1, seed=0)
    first = load_dataset(DataConfig(dataset="cifar10", data_root=str(parquet)), 0, cache)
    parquet.unlink()
    second_originals = _write_cifar_parquet(parquet, 2, 1, seed=1)
    second = load_dataset(DataConfig(dataset="cifar10", data_root=str(parquet)), 0, cache)
    assert first.dataset_id != second.dataset_id
    assert len(first.train) == 10 and len(second.train) == 20
    diff = np.abs(
        second.train.images.numpy().astype(np.int16) - second_originals["train"][0].astype(np.int16)
    )
    assert diff.mean() < 2.0


# ---------------------------------------------------------------------------------------- 5c/d. image folders


TINY_WNIDS = ["n09999999", "n01443537", "n02124075"]  # written out of order: labels follow sorted order


def _write_tinyimagenet(root: Path, per_class_train: int = 3, per_class_val: int = 2) -> dict[str, int]:
    label_of = {w: i for i, w in enumerate(sorted(TINY_WNIDS))}
    for w in TINY_WNIDS:
        for j in range(per_class_train):
            _write_solid(root / "train" / w / "images" / f"{w}_{j}.JPEG", _class_colour(label_of[w]))
        (root / "train" / w / f"{w}_boxes.txt").write_text("")
    lines, k = [], 0
    for _ in range(per_class_val):
        for w in reversed(TINY_WNIDS):
            name = f"val_{k}.JPEG"
            _write_solid(root / "val" / "images" / name, _class_colour(label_of[w]))
            lines.append(f"{name}\t{w}\t0\t0\t7\t7")
            k += 1
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (root / "wnids.txt").write_text("\n".join(TINY_WNIDS) + "\n")
    return label_of


def test_tinyimagenet_layout(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    label_of = _write_tinyimagenet(root)
    cfg = DataConfig(dataset="tinyimagenet", data_root=str(root))
    check_data(cfg)
    cache = tmp_path / "cache"
    bundle = load_dataset(cfg, 0, str(cache))
    assert bundle.num_classes == 3
    assert bundle.train.images.shape == (9, 3, 64, 64) and bundle.test.images.shape == (6, 3, 64, 64)
    assert bundle.train.images.dtype == torch.uint8
    assert torch.bincount(bundle.train.labels).tolist() == [3, 3, 3]
    assert torch.bincount(bundle.test.labels).tolist() == [2, 2, 2]
    # val labels come from val_annotations.txt, in its line order
    want = [
        label_of[line.split("\t")[1]]
        for line in (root / "val" / "val_annotations.txt").read_text().splitlines()
    ]
    assert bundle.test.labels.tolist() == want
    _assert_solid_colour(bundle.train.images, bundle.train.labels)
    _assert_solid_colour(bundle.test.images, bundle.test.labels)

    # a second load reads the decode cache
    cached = sorted((cache / "datasets").glob("tinyimagenet-64-*.npy"))
    assert len(cached) == 4
    mtimes = [p.stat().st_mtime_ns for p in cached]
    again = load_dataset(cfg, 0, str(cache))
    assert [p.stat().st_mtime_ns for p in cached] == mtimes
    assert torch.equal(again.test.images, bundle.test.images)


def test_imagenet100_layout(tmp_path):
    root = tmp_path / "imagenet100"
    classes = ["n01558993", "n01692333", "n01729322", "n01735189"]
    for c, name in enumerate(classes):
        for j in range(2):
            _write_solid(root / "train" / name / f"{name}_{j}.JPEG", _class_colour(c))
        _write_solid(root / "val" / name / f"ILSVRC2012_val_{c}.JPEG", _class_colour(c))
    (root / "train" / classes[0] / "notes.txt").write_text("not an image")
    bundle = load_dataset(DataConfig(dataset="imagenet100", data_root=str(root)), 0, str(tmp_path / "cache"))
    assert bundle.num_classes == 4
    assert bundle.train.images.shape == (8, 3, 224, 224) and bundle.test.images.shape == (4, 3, 224, 224)
    assert bundle.train.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert bundle.test.labels.tolist() == [0, 1, 2, 3]
    _assert_solid_colour(bundle.train.images, bundle.train.labels)
    _assert_solid_colour(bundle.test.images, bundle.test.labels)
    assert bundle.image_size == 224 and bundle.in_channels == 3


def _write_imagenet_tree(root: Path, per_class: int, colour_shift: int = 0) -> None:
    for c, name in enumerate(["n01558993", "n01692333"]):
        r, g, b = _class_colour(c)
        for split in ("train", "val"):
            for j in range(per_class):
                _write_solid(root / split / name / f"{j}.JPEG", ((r + colour_shift) % 256, g, b))


def test_folder_dataset_id_names_the_data(tmp_path):
    small, large = tmp_path / "small", tmp_path / "large"
    _write_imagenet_tree(small, per_class=1)
    _write_imagenet_tree(large, per_class=3)
    cache = str(tmp_path / "cache")
    a = load_dataset(DataConfig(dataset="imagenet100", data_root=str(small)), 0, cache)
    b = load_dataset(DataConfig(dataset="imagenet100", data_root=str(large)), 0, cache)
    assert len(a.train) == 2 and len(b.train) == 6  # different data ...
    assert a.dataset_id != b.dataset_id  # ... must not share an id


def test_folder_cache_notices_changed_images(tmp_path):
    root, cache = tmp_path / "tree", str(tmp_path / "cache")
    _write_imagenet_tree(root, per_class=2)
    first = load_dataset(DataConfig(dataset="imagenet100", data_root=str(root)), 0, cache)
    _assert_solid_colour(first.train.images, first.train.labels)
    _write_imagenet_tree(root, per_class=2, colour_shift=100)  # same names, same counts, new pixels
    second = load_dataset(DataConfig(dataset="imagenet100", data_root=str(root)), 0, cache)
    assert (second.train.images.float() - first.train.images.float()).abs().max() > 50


def test_image_folder_without_images_is_a_config_error(tmp_path):
    root = tmp_path / "empty"
    (root / "train" / "a").mkdir(parents=True)
    (root / "val" / "a").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"^data\.data_root"):
        load_dataset(DataConfig(dataset="imagenet100", data_root=str(root)), 0, str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match=r"^data\.data_root"):
        load_dataset(
            DataConfig(dataset="tinyimagenet", data_root=str(tmp_path / "nothing")),
            0,
            str(tmp_path / "cache"),
        )


# ------------------------------------------------------------------------------------------- 6. real CIFAR-10


@pytest.fixture(scope="module")
def real_cifar_subset(tmp_path_factory):
    if not CIFAR_PARQUET.is_file():
        pytest.skip(f"offline CIFAR-10 copy absent ({CIFAR_PARQUET})")
    cache = tmp_path_factory.mktemp("cifar_cache")
    cfg = DataConfig(dataset="cifar10", data_root=str(CIFAR_PARQUET.parent), subset=20)
    check_data(cfg)
    return load_dataset(cfg, 0, str(cache)), cache


@pytest.mark.cifar
def test_real_cifar10_subset(real_cifar_subset):
    bundle, cache = real_cifar_subset
    assert len(bundle.train) == 200
    assert torch.bincount(bundle.train.labels, minlength=10).tolist() == [20] * 10
    assert len(bundle.test) == 10_000
    assert torch.bincount(bundle.test.labels, minlength=10).tolist() == [1000] * 10
    assert bundle.train.images.shape == (200, 3, 32, 32) and bundle.test.images.shape == (10_000, 3, 32, 32)
    assert bundle.train.images.dtype == torch.uint8
    assert "subset=20" in bundle.dataset_id and bundle.dataset_id.startswith("cifar10:parquet:")
    assert bundle.train.index.max() < 50_000 and len(set(bundle.train.index.tolist())) == 200
    # rows are sorted by split, label: the full training split's index blocks are per class
    assert torch.equal(bundle.train.labels, bundle.train.index // 5000)
    assert 80 < bundle.train.images.float().mean() < 160  # real images, not blank
    # decoded once, into the tmp cache
    assert len(list((cache / "datasets").glob("cifar10_jpeg-*.npy"))) == 4


# --------------------------------------------------------------------------------------------- 7. sharding


@pytest.mark.parametrize("augment", [False, True])
@pytest.mark.parametrize("world_size", [2, 3])
def test_sharded_batches_union_equals_single_rank(digits, world_size, augment):
    normalize = Normalizer(digits.mean, digits.std)
    positions = torch.arange(3, 3 + 97) * 3  # 97 positions, not in order; 97 = 6 * 16 + 1: a 1-image tail
    kw = {"shuffle": True, "seed": 5, "epoch": 2, "augment": augment}
    single = list(iterate(digits.train, positions, 16, normalize, **kw))
    ranks = [
        list(iterate(digits.train, positions, 16, normalize, rank=r, world_size=world_size, **kw))
        for r in range(world_size)
    ]
    assert [len(b.positions) for b in single] == [16] * 5 + [17], "the 1-image tail joins the batch before it"
    assert all(len(r) == len(single) for r in ranks), "every rank must take the same number of steps"
    for step, one in enumerate(single):
        parts = [r[step] for r in ranks]
        assert max(len(p.positions) for p in parts) - min(len(p.positions) for p in parts) <= 1
        assert torch.equal(torch.cat([p.positions for p in parts]), one.positions)
        assert torch.equal(torch.cat([p.y for p in parts]), one.y)
        assert torch.equal(torch.cat([p.x for p in parts]), one.x)
        assert torch.equal(one.y, digits.train.labels[one.positions])
    assert sorted(torch.cat([b.positions for b in single]).tolist()) == sorted(positions.tolist())
    if not augment:  # normalised, not augmented: x is exactly (image - mean) / std
        one = single[0]
        want = (digits.train.images[one.positions].float() / 255.0 - 0.5) / 0.5
        torch.testing.assert_close(one.x, want)
    else:
        plain = next(iterate(digits.train, positions, 16, normalize, **{**kw, "augment": False}))
        assert torch.equal(plain.positions, single[0].positions)
        assert not torch.equal(plain.x, single[0].x), "augmentation should change some pixels"


@pytest.mark.parametrize(
    ("n", "batch_size", "sizes"),
    [
        (900, 128, [128] * 6 + [132]),  # the 100/class CIFAR retain set: a 4-image tail would stand alone
        (4500, 128, [128] * 34 + [148]),  # 500/class: a 20-image tail
        (97, 16, [16] * 5 + [17]),
        (104, 16, [16] * 6 + [8]),  # half a batch or more stays its own batch
        (10, 16, [10]),  # one short batch is the whole epoch
        (0, 16, []),
        (64, 16, [16] * 4),
    ],
)
def test_batch_spans_merge_a_small_tail_and_use_every_sample_once(n, batch_size, sizes):
    spans = batch_spans(n, batch_size)
    assert [size for _, size in spans] == sizes
    covered = [i for start, size in spans for i in range(start, start + size)]
    assert covered == list(range(n))


def test_prediction_batches_keep_the_tail_apart():
    assert [size for _, size in batch_spans(900, 128, merge_tail=False)] == [128] * 7 + [4]


def test_batch_spans_refuses_an_empty_batch():
    with pytest.raises(ValueError, match="batch_size"):
        batch_spans(10, 0)


def test_epoch_order(digits):
    normalize = Normalizer(digits.mean, digits.std)
    positions = torch.arange(50)

    def order(seed, epoch, shuffle=True):
        return torch.cat(
            [
                b.positions
                for b in iterate(
                    digits.train, positions, 8, normalize, shuffle=shuffle, seed=seed, epoch=epoch
                )
            ]
        )

    e0, e0b, e1, s1 = order(0, 0), order(0, 0), order(0, 1), order(1, 0)
    assert torch.equal(e0, e0b)
    assert not torch.equal(e0, e1) and not torch.equal(e0, s1)
    for o in (e0, e1, s1):
        assert sorted(o.tolist()) == list(range(50))
    assert torch.equal(order(0, 0, shuffle=False), positions)
    assert torch.equal(order(0, 3, shuffle=False), positions)


# --------------------------------------------------------------------------------------------- 8. errors


def test_unknown_dataset(tmp_path):
    with pytest.raises(ConfigError, match=r"^data\.dataset: got 'mnist'.*digits"):
        check_data(DataConfig(dataset="mnist"))
    with pytest.raises(ConfigError, match=r"^data\.dataset"):
        load_dataset(DataConfig(dataset="mnist"), 0, str(tmp_path))


@pytest.mark.parametrize(
    "spec",
    ["random:0", "random:1.5", "random:1", "random:-0.1", "random:abc", "class:", "classes:0", "nonsense:3"],
)
def test_bad_forget_spec(digits, spec):
    with pytest.raises(ConfigError, match=r"^forget\.spec"):
        make_splits(digits, ForgetConfig(spec), 0)
    with pytest.raises(ConfigError, match=r"^forget\.spec"):
        ForgetConfig(spec).validate()


@pytest.mark.parametrize(
    "spec", ["class:12", "class:3,-1", "classes:10", "classes:11", "class:0,1,2,3,4,5,6,7,8,9"]
)
def test_forget_spec_beyond_the_dataset(digits, spec):
    with pytest.raises(ConfigError, match=r"^forget\.spec"):
        make_splits(digits, ForgetConfig(spec), 0)
    with pytest.raises(ConfigError, match=r"^forget\.spec"):
        ForgetConfig(spec).validate(num_classes=10)


def test_missing_data_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MCU_DIST_CIFAR100_ROOT", raising=False)
    with pytest.raises(ConfigError, match=r"^data\.data_root"):
        check_data(DataConfig(dataset="cifar100", data_root=str(tmp_path / "absent")))
    with pytest.raises(ConfigError, match=r"^data\.data_root"):
        check_data(DataConfig(dataset="cifar100"))
    empty = tmp_path / "empty"
    empty.mkdir()
    check_data(DataConfig(dataset="cifar100", data_root=str(empty)))  # exists: the loader is the judge
    with pytest.raises(ConfigError, match=r"^data\.data_root"):
        load_dataset(DataConfig(dataset="cifar100", data_root=str(empty)), 0, str(tmp_path / "cache"))


def test_forget_file_with_foreign_index(digits, tmp_path):
    test_only = int(digits.test.index[0])  # a digits sample, but in the test split
    good = digits.train.index[:5].tolist()
    for bad in (test_only, 99_999, -1):
        f = tmp_path / f"forget_{bad}.txt"
        f.write_text(" ".join(map(str, good + [bad])))
        with pytest.raises(ConfigError, match=r"^forget\.spec: 1 indices"):
            make_splits(digits, ForgetConfig(f"file:{f}"), 0)
    ok = tmp_path / "ok.txt"
    ok.write_text(",".join(map(str, good)))
    assert len(make_splits(digits, ForgetConfig(f"file:{ok}"), 0).forget) == 5
    with pytest.raises(ConfigError, match=r"^forget\.spec"):
        make_splits(digits, ForgetConfig(f"file:{tmp_path / 'absent.txt'}"), 0)
    junk = tmp_path / "junk.txt"
    junk.write_text("1 2 three")
    with pytest.raises(ConfigError, match=r"^forget\.spec"):
        make_splits(digits, ForgetConfig(f"file:{junk}"), 0)


def test_forget_file_after_subset(cache_dir, tmp_path):
    """After ``--subset`` a file index outside the kept samples is not in the training set."""
    sub = load_dataset(DataConfig(dataset="digits", subset=5), 0, cache_dir)
    full = load_dataset(DataConfig(dataset="digits"), 0, cache_dir)
    dropped = sorted(set(full.train.index.tolist()) - set(sub.train.index.tolist()))[0]
    f = tmp_path / "f.npy"
    np.save(f, np.array([int(sub.train.index[0]), dropped]))
    with pytest.raises(ConfigError, match=r"^forget\.spec"):
        make_splits(sub, ForgetConfig(f"file:{f}"), 0)
    np.save(f, sub.train.index[:3].numpy())
    s = make_splits(sub, ForgetConfig(f"file:{f}"), 0)
    assert s.forget.tolist() == [0, 1, 2]


def test_unknown_yaml_key(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("data: {datset: digits}\n")
    with pytest.raises(ConfigError, match=r"^data\.datset: unknown field.*dataset"):
        load_yaml(path)
    with pytest.raises(ConfigError, match=r"^data\.datset: unknown field"):
        with_overrides(ExperimentConfig(), {"data.datset": "digits"})
    with pytest.raises(ConfigError, match=r"^datta: unknown field"):
        with_overrides(ExperimentConfig(), {"datta.dataset": "digits"})

    path.write_text("data: {dataset: digits, subset: 4}\nforget: {spec: 'class:3'}\n")
    cfg = load_yaml(path)
    assert cfg.data.subset == 4 and cfg.forget.spec == "class:3"
    path.write_text("data: {dataset: mnist}\n")
    with pytest.raises(ConfigError, match=r"^data\.dataset"):
        validate(load_yaml(path))
    with pytest.raises(ConfigError, match=r"^data\.subset"):
        validate(with_overrides(ExperimentConfig(), {"data.subset": 0}))
