"""Forget scenarios and the forget manifest.

D = D_f ∪ D_r. ``random:F`` forgets a seeded fraction F of the training set; ``class:C,...``
forgets every training sample of the named classes; ``classes:N`` draws N classes with the split
seed; ``file:PATH`` reads sample indices (into the full dataset's training split) that a user brings.
Class-wise runs measure TA on the remaining classes' test samples and report the forgotten
classes' test accuracy apart.

The manifest (Parquet: index, label, split) has a SHA-256 over the dataset id and the sorted
indices, so a run can prove which samples it forgot, whatever file format carried them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mcu_dist.config import ConfigError, ForgetConfig
from mcu_dist.data.registry import DatasetBundle
from mcu_dist.store import write_table


@dataclass
class Splits:
    forget: torch.Tensor  # positions into bundle.train
    retain: torch.Tensor
    forget_classes: list[int] | None  # class-wise scenarios only
    test_eval: torch.Tensor  # positions into bundle.test used for TA (remaining classes when class-wise)
    test_forgotten: torch.Tensor  # test samples of the forgotten classes (empty otherwise)
    manifest_hash: str

    @property
    def classwise(self) -> bool:
        return self.forget_classes is not None


FILE_FORMATS = (
    "a text file of integer indices (one per line or comma/space separated), a .npy array of integer "
    "indices or of booleans (entry i: forget training sample i), or a Parquet file with an integer "
    "'index' column"
)


def read_index_file(path: str) -> np.ndarray:
    """The training-set indices a forget file names: integers only, each once (the range against the
    training split, negatives included, is checked by ``make_splits``). A boolean .npy array is a mask
    over the training indices and is recognised as one; a float or any other array is refused, never cast."""
    p = Path(path)

    def refuse(why: str) -> ConfigError:
        return ConfigError(f"forget.spec: {path} {why}; allowed: {FILE_FORMATS}")

    try:
        if p.suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
            if arr.ndim != 1:
                raise refuse(f"holds a {arr.ndim}-D array of shape {arr.shape}")
            if arr.dtype == np.bool_:
                arr = np.flatnonzero(arr)
            elif not np.issubdtype(arr.dtype, np.integer):
                raise refuse(f"holds {arr.dtype} values")
        elif p.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            column = pq.read_table(p, columns=["index"]).column("index")
            if not pa.types.is_integer(column.type) or column.null_count:
                raise refuse(f"has an 'index' column of type {column.type} (nulls: {column.null_count})")
            arr = column.to_numpy()
        else:
            arr = np.array([int(t) for t in p.read_text().replace(",", " ").split()], dtype=np.int64)
    except ConfigError:
        raise
    except (ValueError, OSError, KeyError, UnicodeDecodeError) as e:
        raise refuse(
            f"cannot be read as sample indices ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
        ) from None
    except Exception as e:  # pyarrow raises its own types for a damaged file
        raise refuse(f"cannot be read ({type(e).__name__})") from None
    arr = arr.astype(np.int64)
    uniq, counts = np.unique(arr, return_counts=True)
    if (counts > 1).any():
        raise refuse(
            f"names index {int(uniq[counts > 1][0])} more than once ({int((counts > 1).sum())} repeated)"
        )
    return arr


def manifest_hash(dataset_id: str, indices: torch.Tensor) -> str:
    h = hashlib.sha256(dataset_id.encode())
    h.update(np.sort(indices.numpy()).astype("<i8").tobytes())
    return h.hexdigest()


def make_splits(bundle: DatasetBundle, cfg: ForgetConfig, seed: int) -> Splits:
    cfg.validate(bundle.num_classes)
    kind, value = cfg.parsed()
    labels = bundle.train.labels
    n = len(labels)
    classes: list[int] | None = None
    if kind == "random":
        g = torch.Generator().manual_seed(seed)
        count = max(1, int(round(value * n)))
        forget_mask = torch.zeros(n, dtype=torch.bool)
        forget_mask[torch.randperm(n, generator=g)[:count]] = True
    elif kind in ("class", "classes"):
        if kind == "classes":
            g = torch.Generator().manual_seed(seed)
            value = sorted(torch.randperm(bundle.num_classes, generator=g)[:value].tolist())
        classes = sorted(value)
        forget_mask = torch.isin(labels, torch.tensor(classes))
    else:
        wanted = torch.from_numpy(read_index_file(value))
        forget_mask = torch.isin(bundle.train.index, wanted)
        missing = int(len(torch.unique(wanted)) - forget_mask.sum())
        if missing:
            raise ConfigError(
                f"forget.spec: {missing} indices in {value} are not in the training set "
                f"(0..{int(bundle.train.index.max())}, after any subset); allowed: training-set indices"
            )
    forget = torch.nonzero(forget_mask).flatten()
    retain = torch.nonzero(~forget_mask).flatten()
    if len(forget) == 0 or len(retain) == 0:
        raise ConfigError(
            f"forget.spec: {cfg.spec!r} leaves an empty forget or retain set; allowed: a proper subset"
        )
    test_labels = bundle.test.labels
    if classes is not None:
        gone = torch.isin(test_labels, torch.tensor(classes))
        test_eval, test_forgotten = torch.nonzero(~gone).flatten(), torch.nonzero(gone).flatten()
    else:
        test_eval, test_forgotten = torch.arange(len(test_labels)), torch.empty(0, dtype=torch.int64)
    return Splits(
        forget,
        retain,
        classes,
        test_eval,
        test_forgotten,
        manifest_hash(bundle.dataset_id, bundle.train.index[forget]),
    )


def write_manifest(
    bundle: DatasetBundle, splits: Splits, path: str | Path, extra: dict[str, str] | None = None
) -> str:
    """Write the forget manifest as Parquet (atomically); returns its content hash.

    ``extra``: more provenance in the file's metadata (the curve's retained sample D_r′).
    """
    import pyarrow as pa

    idx = bundle.train.index[splits.forget]
    order = torch.argsort(idx)
    table = pa.table(
        {
            "index": pa.array(idx[order].numpy(), pa.int64()),
            "label": pa.array(bundle.train.labels[splits.forget][order].numpy(), pa.int16()),
            "split": pa.array(["train"] * len(idx)).dictionary_encode(),
        },
        metadata={
            "dataset_id": bundle.dataset_id,
            "sha256": splits.manifest_hash,
            "forget_classes": ",".join(map(str, splits.forget_classes or [])),
            **(extra or {}),
        },
    )
    write_table(table, path)
    return splits.manifest_hash
