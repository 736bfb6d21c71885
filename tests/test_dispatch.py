"""Reference and baseline training as Ray tasks with the space's resources; fractional trial resources.

On the loopback test cluster the custom resource ``fake_gpu`` (1 unit on the head) stands in for a GPU.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mcu_dist.config import ConfigError
from mcu_dist.dispatch import check_cluster, prepare_remote, task_options, trial_resources
from mcu_dist.lab import Lab
from mcu_dist.sweep import prepare_shared_models, reference_cells, with_trial_resources
from mcu_dist.train.reference import original_model, retrained_model
from mcu_dist.tune_space import SweepConfig, space_from_dict


def grid_space(tmp: Path, **sweep) -> object:
    return space_from_dict(
        {
            "fixed": {
                "data.dataset": "digits",
                "reference.epochs": 2,
                "cache_dir": str(tmp / "cache"),
                "baselines.params": {"ga": {"epochs": 1}, "rl": {"epochs": 1}},
            },
            "grid": {"baseline": ["ga", "rl"], "seed": [0, 1]},
            "sweep": {"name": "dispatch", "gpu_resource": "fake_gpu", **sweep},
        },
        "test",
    )


def test_references_and_baselines_go_out_as_ray_tasks_with_the_named_resources(ray_cluster, tmp_path):
    space = grid_space(tmp_path, reference_gpus=0.5, reference_cpus=0.5)
    cells = reference_cells(space)
    assert cells == [{"seed": 0}, {"seed": 1}]
    records = prepare_remote(space, cells, log=lambda *_: None)
    # per cell: original, retrain, one task per offered baseline
    assert sorted(r["what"] for r in records) == sorted(
        ["original", "retrain", "baseline:ga", "baseline:rl"] * 2
    )
    for r in records:
        assert r["resources"].get("fake_gpu") == pytest.approx(0.5), r
        assert r["resources"].get("CPU") == pytest.approx(0.5), r
        assert r["device"] == "cpu"  # a stand-in resource is no CUDA device
    # a baseline waits for its own cell's original: it starts after that original ended
    for cell in range(2):
        mine = records[cell * 4 : cell * 4 + 4]
        original = mine[0]
        assert original["what"] == "original" and mine[1]["what"] == "retrain"
        for b in mine[2:]:
            assert b["after"] == "original" and b["start"] >= original["end"] - 0.05
    # independent tasks ran side by side (0.5 fake_gpu each: two at a time)
    spans = sorted((r["start"], r["end"]) for r in records)
    assert any(b0 < a1 for (a0, a1), (b0, _) in zip(spans, spans[1:], strict=False)), spans
    assert sum(len(r["trained"]) for r in records) == 8
    # results are in the shared cache exactly as the driver would have put them: nothing left to train
    for cell in cells:
        lab = Lab.build(space.trial_config(cell))
        original_model(lab, lab.cache)
        retrained_model(lab, lab.cache)
        assert lab.cache.trained == []
    # the sweep's own entry point dispatches the same way; a second call trains nothing
    lines = []
    prepare_shared_models(space, log=lines.append)
    assert "8 Ray tasks" in lines[0] and "0 trained now" in lines[0]


def test_fractional_trial_resources_pack_trials_as_asked(ray_cluster, tmp_path):
    """gpus_per_trial 0.25 on one (stand-in) GPU: four trials at once, never five."""
    from ray import tune

    space = grid_space(tmp_path, gpus_per_trial=0.25, cpus_per_trial=0.25)
    assert trial_resources(space.sweep) == {"CPU": 0.25, "fake_gpu": 0.25}
    marks = tmp_path / "marks"
    marks.mkdir()

    def probe(config):
        import ray

        (marks / str(config["i"])).touch()
        deadline = time.time() + 120
        while len(list(marks.iterdir())) < 4 and time.time() < deadline:  # four must be running together
            time.sleep(0.2)
        start = time.time()
        time.sleep(1.0)
        held = ray.get_runtime_context().get_assigned_resources()
        tune.report(
            {
                "start": start,
                "end": time.time(),
                "held": held.get("fake_gpu", 0.0),
                "n": len(list(marks.iterdir())),
            }
        )

    tuner = tune.Tuner(
        with_trial_resources(probe, space),
        param_space={"i": tune.grid_search(list(range(6)))},
        tune_config=tune.TuneConfig(max_concurrent_trials=6),
        run_config=tune.RunConfig(name="packing", storage_path=str(tmp_path / "tune"), verbose=0),
    )
    results = tuner.fit()
    rows = [r.metrics for r in results]
    assert len(rows) == 6 and all(not r.error for r in results)
    assert all(m["held"] == pytest.approx(0.25) for m in rows)
    assert all(m["n"] >= 4 for m in rows)  # every trial saw at least four trials started
    events = sorted([(m["start"], 1) for m in rows] + [(m["end"], -1) for m in rows])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak == 4  # one fake_gpu / 0.25 per trial


def test_resource_options_and_checks():
    assert task_options(1, 0, "GPU") == {"num_cpus": 1, "max_retries": 1}
    assert task_options(2, 1, "GPU")["num_gpus"] == 1
    assert task_options(1, 0.5, "fake_gpu")["resources"] == {"fake_gpu": 0.5}
    with pytest.raises(ConfigError, match=r"^sweep.gpus_per_trial: got -1"):
        SweepConfig(gpus_per_trial=-1).validate()
    with pytest.raises(ConfigError, match=r"^sweep.reference_gpus: got 2, the cluster has 1 GPU"):
        check_cluster(SweepConfig(reference_gpus=2), {"CPU": 8, "GPU": 1})
    check_cluster(SweepConfig(gpus_per_trial=0.25, reference_gpus=1), {"GPU": 1})


def test_gpu_trials_without_gpu_references_on_a_cpu_driver_are_refused(tmp_path):
    from mcu_dist.sweep import parse_args, resolve

    space_file = tmp_path / "s.yaml"
    import torch

    if not torch.cuda.is_available():
        space_file.write_text(
            "fixed: {data.dataset: digits}\nsearch: {mcu.k: {type: float, low: 0.1, high: 0.5}}\n"
            "sweep: {gpus_per_trial: 0.5}\n"
        )
        with pytest.raises(ConfigError, match=r"^sweep.reference_gpus: got 0 with device 'cuda'"):
            resolve(parse_args(["--space", str(space_file), "--storage", str(tmp_path / "st")]))
