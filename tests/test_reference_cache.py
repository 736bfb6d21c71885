"""The content-addressed model cache and the reference models θ_o / θ_r.

Properties: a hit trains nothing and loads bit-identical weights; the key changes with exactly
the fields the model depends on; two processes asking for one key train it once; a failure leaves
no half-written entry; a user's checkpoint (``model.original``) is loaded with ``weights_only``,
never trained, and a bad one is a ConfigError naming the field.
"""

from __future__ import annotations

import copy
import hashlib
import multiprocessing as mp
import random
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from mcu_dist.config import ConfigError, with_overrides
from mcu_dist.lab import Lab
from mcu_dist.models import create_model
from mcu_dist.references import baseline_model
from mcu_dist.store import ModelCache, key_hash, load_checkpoint, save_model
from mcu_dist.train import reference
from mcu_dist.train.reference import original_model, retrained_model
from mcu_dist.validation import validate
from tests.conftest import digits_config

# ---------------------------------------------------------------------------------------------- helpers


def state_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def state_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def lab_with(lab: Lab, cache: ModelCache, model_factory=None, **overrides) -> Lab:
    """``lab``'s data and splits under a changed config and another cache (no data reloading)."""
    cfg = with_overrides(lab.cfg, overrides) if overrides else lab.cfg
    return Lab(cfg, lab.bundle, lab.splits, lab.device, cache, model_factory)


def leftovers(cache: ModelCache, pattern: str) -> list[Path]:
    return sorted(cache.root.glob(pattern))


@pytest.fixture
def cheap_training(monkeypatch):
    """Reference training replaced by a seeded fresh model, each call recorded (the cache is unchanged)."""
    calls: list[tuple[int, int]] = []

    def fake_train(lab: Lab, positions: torch.Tensor, seed: int) -> nn.Module:
        calls.append((len(positions), seed))
        return lab.new_model(1000 + seed + len(calls))

    monkeypatch.setattr(reference, "train_supervised", fake_train)
    return calls


def probe_batch(lab: Lab) -> torch.Tensor:
    return next(
        iter(lab.batches(lab.splits.retain[:64], 64, seed=0, epoch=0, shuffle=False, augment=False))
    ).x


# ---------------------------------------------------------------------------------------------- hits


def test_hit_calls_no_build_and_loads_bit_identical_weights(digits_lab, tmp_path):
    cache = ModelCache(tmp_path)
    fields = digits_lab.reference_key()
    built: list[nn.Module] = []

    def build() -> nn.Module:
        built.append(digits_lab.new_model(seed=123))
        return built[-1]

    first_template = digits_lab.new_model(seed=1)
    assert not state_equal(first_template, digits_lab.new_model(seed=123))  # the load below is observable
    first, meta = cache.get("original", fields, first_template, build)
    assert len(built) == 1 and cache.trained == [cache.path("original", fields).stem]
    assert meta["kind"] == "model" and meta["cache_kind"] == "original" and meta["seconds"] >= 0
    assert state_equal(first, built[0])

    second, _ = cache.get("original", fields, digits_lab.new_model(seed=2), build)
    assert len(built) == 1, "a hit must not call the build callable"
    assert len(cache.trained) == 1, "a hit must not count as trained"
    assert state_equal(second, built[0])

    # another process's view of the same folder: a hit too
    other = ModelCache(tmp_path)
    third, _ = other.get("original", fields, digits_lab.new_model(seed=3), build)
    assert len(built) == 1 and other.trained == []
    assert state_equal(third, built[0])


def test_original_model_second_call_is_a_hit(digits_lab, digits_original):
    before = list(digits_lab.cache.trained)
    again, _ = original_model(digits_lab, digits_lab.cache)
    assert digits_lab.cache.trained == before
    assert again is not digits_original
    assert state_equal(again, digits_original)


@pytest.mark.parametrize(
    "override",
    [
        {"reference.lr": 0.02},
        {"reference.epochs": 9},
        {"reference.momentum": 0.5},
        {"reference.weight_decay": 1e-4},
        {"reference.batch_size": 64},
        {"seeds.model": 1},
        {"model.name": "small_cnn_nobn"},
    ],
    ids=lambda o: next(iter(o)),
)
def test_relevant_field_changes_key_and_trains(digits_lab, tmp_path, cheap_training, override):
    cache = ModelCache(tmp_path)
    base = lab_with(digits_lab, cache)
    changed = lab_with(digits_lab, cache, **override)
    assert key_hash(base.reference_key()) != key_hash(changed.reference_key())
    original_model(base, cache)
    assert len(cheap_training) == 1
    model, _ = original_model(changed, cache)
    assert len(cheap_training) == 2 and len(cache.trained) == 2
    assert len(leftovers(cache, "original-*.pt")) == 2
    assert state_equal(model, changed.new_model(1000 + changed.cfg.seeds.model + 2))


def test_dataset_identity_is_part_of_the_key(digits_lab, tmp_path):
    small = Lab.build(digits_config(tmp_path, **{"data.subset": 40}))
    assert small.bundle.dataset_id != digits_lab.bundle.dataset_id
    assert key_hash(small.reference_key()) != key_hash(digits_lab.reference_key())


@pytest.mark.parametrize(
    "override",
    [
        {"mcu.k": 0.1},
        {"mcu.beta_schedule": ["fixed"]},
        {"eval.t_points": 7},
        {"eval.mia_cap": 50},
        {"baselines.methods": ["ga"]},
        {"seeds.unlearn": 3},
        {"seeds.eval": 3},
        {"forget.spec": "class:3"},
        {"out": "/elsewhere"},
        {"cache_dir": "/elsewhere"},
    ],
    ids=lambda o: next(iter(o)),
)
def test_irrelevant_field_keeps_reference_key(digits_lab, override):
    changed = lab_with(digits_lab, digits_lab.cache, **override)
    assert changed.reference_key() == digits_lab.reference_key()


def test_forget_set_keys_the_retrained_model_but_not_the_original(digits_lab, tmp_path, cheap_training):
    from mcu_dist.data import make_splits

    cache = ModelCache(tmp_path)
    a = lab_with(digits_lab, cache)
    cfg_b = with_overrides(digits_lab.cfg, {"forget.spec": "class:3"})
    splits_b = make_splits(digits_lab.bundle, cfg_b.forget, cfg_b.seeds.split)
    assert splits_b.manifest_hash != a.splits.manifest_hash
    b = Lab(cfg_b, digits_lab.bundle, splits_b, digits_lab.device, cache)

    original_model(a, cache)
    original_model(b, cache)
    assert len(cheap_training) == 1, "θ_o is trained on all of D: the forget set must not key it"
    retrained_model(a, cache)
    retrained_model(b, cache)
    retrained_model(a, cache)
    assert len(cheap_training) == 3, "θ_r depends on D_r: one training per forget set, then hits"
    assert sorted(n for n, _ in cheap_training) == sorted(
        [len(digits_lab.bundle.train), len(a.splits.retain), len(b.splits.retain)]
    )


# ---------------------------------------------------------------------------------------------- concurrency


def _concurrent_worker(cfg, barrier, queue) -> None:
    """Spawned twice: build a Lab, wait for the other worker, ask for θ_o, report what happened."""
    torch.set_num_threads(1)  # two workers on two cores
    try:
        lab = Lab.build(cfg)
        barrier.wait(timeout=300)
        start = time.time()
        model, _ = original_model(lab, lab.cache)
        end = time.time()
        queue.put(
            {"trained": len(lab.cache.trained), "start": start, "end": end, "digest": state_digest(model)}
        )
    except BaseException as e:  # report, never hang the parent
        queue.put({"error": repr(e)})


def test_two_processes_train_one_key_once(tmp_path):
    cfg = digits_config(tmp_path, **{"reference.epochs": 12, "seeds.model": 7})
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_concurrent_worker, args=(cfg, barrier, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    try:
        results = [queue.get(timeout=400) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.terminate()
                p.join()
    errors = [r["error"] for r in results if "error" in r]
    assert not errors, errors
    assert sorted(r["trained"] for r in results) == [0, 1], "exactly one of the two must report a miss"
    trainer = next(r for r in results if r["trained"] == 1)
    waiter = next(r for r in results if r["trained"] == 0)
    # the two requests overlapped: the waiter asked while the trainer was still training
    assert waiter["start"] < trainer["end"] and trainer["start"] < waiter["end"]
    assert trainer["digest"] == waiter["digest"]
    cache = ModelCache(cfg.cache_dir)
    entries = leftovers(cache, "original-*.pt")
    assert len(entries) == 1
    assert leftovers(cache, "*.tmp*") == [] and list(Path(cfg.cache_dir).rglob("*.tmp*")) == []
    state = load_checkpoint(entries[0]).state
    lab_model = create_model("small_cnn", 10, 1, 8)
    lab_model.load_state_dict(state)
    assert state_digest(lab_model) == trainer["digest"]


# ---------------------------------------------------------------------------------------------- failures


def test_failed_build_leaves_no_entry_and_a_later_call_trains(digits_lab, tmp_path):
    cache = ModelCache(tmp_path)
    fields = digits_lab.reference_key()
    path = cache.path("original", fields)

    def failing_build() -> nn.Module:
        model = digits_lab.new_model(seed=0)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for b in digits_lab.batches(digits_lab.all_train, 128, seed=0, epoch=0):
            opt.zero_grad()
            nn.functional.cross_entropy(model(b.x), b.y).backward()
            opt.step()
            raise RuntimeError("training diverged")  # mid-training
        return model

    with pytest.raises(RuntimeError, match="diverged"):
        cache.get("original", fields, digits_lab.new_model(), failing_build)
    assert not path.exists()
    assert leftovers(cache, "*.pt") == [] and leftovers(cache, "*.tmp*") == []
    assert cache.trained == []

    good = digits_lab.new_model(seed=5)
    model, _ = cache.get("original", fields, digits_lab.new_model(seed=6), lambda: good)
    assert path.exists() and cache.trained == [path.stem]
    assert state_equal(model, good)


def _write_then_fail(obj, f, *args, **kwargs):
    Path(f).write_bytes(b"half a checkpoint")
    raise OSError(28, "No space left on device")


def test_failed_write_leaves_no_entry_and_a_later_call_trains(digits_lab, tmp_path, monkeypatch):
    cache = ModelCache(tmp_path)
    fields = digits_lab.reference_key()
    with monkeypatch.context() as m:
        m.setattr(torch, "save", _write_then_fail)
        with pytest.raises(OSError):
            cache.get("original", fields, digits_lab.new_model(), lambda: digits_lab.new_model(seed=5))
    assert not cache.path("original", fields).exists() and cache.trained == []
    good = digits_lab.new_model(seed=5)
    model, _ = cache.get("original", fields, digits_lab.new_model(seed=6), lambda: good)
    assert state_equal(model, good) and len(cache.trained) == 1


def test_failed_write_leaves_no_tmp_file(digits_lab, tmp_path, monkeypatch):
    cache = ModelCache(tmp_path)
    fields = digits_lab.reference_key()
    monkeypatch.setattr(torch, "save", _write_then_fail)
    with pytest.raises(OSError):
        cache.get("original", fields, digits_lab.new_model(), lambda: digits_lab.new_model(seed=5))
    assert leftovers(cache, "*.tmp*") == []


# ------------------------------------------------------------------------------------------- user checkpoints


class _OpensFile:
    """Unpickling this runs ``open(path, "w")``: code execution that weights_only must refuse."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _expect_model_original_error(lab: Lab, cache: ModelCache, path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^model\.original: ") as info:
        original_model(lab_with(lab, cache, **{"model.original": str(path)}), cache)
    assert str(path) in str(info.value)


def test_corrupt_checkpoint_is_a_config_error(digits_lab, tmp_path, cheap_training):
    cache = ModelCache(tmp_path / "cache")
    noise = tmp_path / "noise.pt"
    noise.write_bytes(random.Random(0).randbytes(4096))
    _expect_model_original_error(digits_lab, cache, noise)

    whole = tmp_path / "whole.pt"
    save_model(digits_lab.new_model(seed=0), whole)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    _expect_model_original_error(digits_lab, cache, truncated)

    not_a_state = tmp_path / "list.pt"
    torch.save([1, 2, 3], not_a_state)
    _expect_model_original_error(digits_lab, cache, not_a_state)
    assert cheap_training == [] and cache.trained == []


@pytest.mark.parametrize("other", [("small_cnn_nobn", 10), ("small_cnn", 5)], ids=["missing-keys", "shapes"])
def test_other_architecture_is_a_config_error(digits_lab, tmp_path, cheap_training, other):
    name, classes = other
    path = tmp_path / f"{name}-{classes}.pt"
    save_model(create_model(name, classes, digits_lab.bundle.in_channels, digits_lab.bundle.image_size), path)
    _expect_model_original_error(digits_lab, ModelCache(tmp_path / "cache"), path)
    assert cheap_training == []


def test_checkpoint_is_loaded_weights_only(digits_lab, tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _OpensFile(str(marker))}, path)
    with pytest.raises(ConfigError, match=r"^model\.original: "):
        load_checkpoint(path, "model.original")
    _expect_model_original_error(digits_lab, ModelCache(tmp_path / "cache"), path)
    assert not marker.exists(), "the checkpoint's pickle ran code"
    # the payload is real: a full unpickler does run it
    torch.load(path, weights_only=False)["state_dict"].close()
    assert marker.exists()


@pytest.mark.parametrize("fmt", ["wrapped", "plain"])
def test_user_original_is_loaded_not_trained(digits_lab, tmp_path, cheap_training, fmt):
    user = digits_lab.new_model(seed=77).eval()
    path = tmp_path / "mine.pt"
    if fmt == "wrapped":
        save_model(user, path, {"note": "mine"})
    else:
        torch.save(user.state_dict(), path)
    cache = ModelCache(tmp_path / "cache")
    lab = lab_with(digits_lab, cache, **{"model.original": str(path)})
    validate(lab.cfg)
    model, meta = original_model(lab, cache)
    assert cheap_training == [] and cache.trained == [] and leftovers(cache, "*.pt") == []
    assert state_equal(model, user)
    assert not model.training
    x = probe_batch(digits_lab)
    with torch.no_grad():
        assert torch.equal(model(x), user(x))
    if fmt == "wrapped":  # the store's header: the writer's meta, kind, architecture, digest
        assert meta["note"] == "mine" and meta["kind"] == "model"
        assert meta["architecture"] == digits_lab.architecture()
    else:
        assert meta == {"kind": "model"}


def test_cached_reference_models_come_back_in_eval_mode(digits_lab, tmp_path, cheap_training):
    cache = ModelCache(tmp_path)
    lab = lab_with(digits_lab, cache)
    original, _ = original_model(lab, cache)
    retrained, _ = retrained_model(lab, cache)
    assert not original.training and not retrained.training


# ------------------------------------------------------------------------------------- keys of derived models


def test_own_architecture_gets_its_own_cache_entry(digits_lab, tmp_path, cheap_training):
    cache = ModelCache(tmp_path)
    default = lab_with(digits_lab, cache)
    b = digits_lab.bundle

    def factory() -> nn.Module:
        return create_model("small_cnn_nobn", b.num_classes, b.in_channels, b.image_size)

    own = lab_with(digits_lab, cache, model_factory=factory)
    original_model(default, cache)
    model, _ = original_model(own, cache)
    assert len(cheap_training) == 2, "the own architecture must be trained, not served the default's entry"
    assert model.state_dict().keys() == factory().state_dict().keys()


def test_baseline_key_depends_on_the_model_seed(digits_lab, digits_original, tmp_path):
    cache = ModelCache(tmp_path)
    hp = {"baselines.params": {"ga": {"epochs": 1}}}
    a = lab_with(digits_lab, cache, **hp)
    b = lab_with(digits_lab, cache, **hp, **{"seeds.model": 1})
    theta_p_a, _ = baseline_model(a, "ga", digits_original)
    theta_p_b, _ = baseline_model(b, "ga", b.new_model(seed=5))  # stands in for θ_o of seeds.model = 1
    assert len(cache.trained) == 2
    assert not state_equal(theta_p_a, theta_p_b)


def test_replaced_user_checkpoint_invalidates_derived_models(digits_lab, tmp_path):
    cache = ModelCache(tmp_path / "cache")
    path = tmp_path / "mine.pt"
    lab = lab_with(
        digits_lab, cache, **{"model.original": str(path), "baselines.params": {"ga": {"epochs": 1}}}
    )
    save_model(digits_lab.new_model(seed=1), path)
    first, _ = original_model(lab, cache)
    theta_p_first, _ = baseline_model(lab, "ga", first)
    replacement = digits_lab.new_model(seed=2)
    save_model(replacement, path)
    second, _ = original_model(lab, cache)
    assert state_equal(second, replacement)  # θ_o itself is re-read
    theta_p_second, _ = baseline_model(lab, "ga", second)
    assert not state_equal(theta_p_first, theta_p_second), "θ_p of the old checkpoint was reused"


def test_baseline_model_is_cached_by_method_and_hyperparameters(digits_lab, digits_original, tmp_path):
    cache = ModelCache(tmp_path)
    a = lab_with(digits_lab, cache, **{"baselines.params": {"ga": {"epochs": 1}}})
    first, _ = baseline_model(a, "ga", digits_original)
    again, _ = baseline_model(a, "ga", copy.deepcopy(digits_original))
    assert len(cache.trained) == 1 and state_equal(first, again)
    b = lab_with(digits_lab, cache, **{"baselines.params": {"ga": {"epochs": 1, "lr": 0.002}}})
    other, _ = baseline_model(b, "ga", digits_original)
    assert len(cache.trained) == 2 and not state_equal(first, other)
