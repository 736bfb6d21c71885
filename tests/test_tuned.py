"""Tuned baselines first (python -m mcu_dist.tuned): each baseline tuned on its own objective, then MCU."""

from __future__ import annotations

import json

import pytest
import yaml
from mlflow.tracking import MlflowClient

from mcu_dist import tuned

SMALL = {
    "data.dataset": "digits",
    "forget.spec": "random:0.1",
    "reference.epochs": 3,
    "mcu.epochs": 1,
    "eval.t_points": 5,
    "eval.mia_cap": 200,
    "eval.bn_set_size": 256,
}


def _file(tmp_path, **spec) -> str:
    path = tmp_path / "tuned.yaml"
    body = {"mode": "research", "baselines": ["ga"], "num_samples": 3, "tuning_seed": 0, "seeds": [0, 1]}
    path.write_text(
        yaml.safe_dump(
            {
                "fixed": {**SMALL, "cache_dir": str(tmp_path / "cache")},
                "tuned": {**body, **spec},
                "sweep": {"name": "tb", "max_concurrent": 2},
            }
        )
    )
    return str(path)


@pytest.mark.parametrize(
    "spec,field",
    [
        ({"baselines": ["ga", "nope"]}, "tuned.baselines: unknown baseline 'nope'"),
        ({"baselines": ["retrain"]}, "tuned.baselines: retrain declares no hyperparameter range"),
        ({"mode": "both"}, "tuned.mode: got 'both'"),
        ({"num_samples": 0}, "tuned.num_samples"),
        ({"seeds": []}, "tuned.seeds"),
    ],
)
def test_bad_tuned_file_is_one_line_naming_the_field_before_ray(tmp_path, capsys, spec, field):
    assert tuned.main(["--space", _file(tmp_path, **spec), "--storage", str(tmp_path / "st")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {field}") and "\n" not in err
    assert not (tmp_path / "st").exists()  # refused before the driver made its storage or reached Ray


def test_a_tuned_file_with_a_user_endpoint_is_refused(tmp_path, capsys):
    body = yaml.safe_load(open(_file(tmp_path)).read())
    body["fixed"]["baselines.endpoint"] = str(tmp_path / "theta_p.pt")
    (tmp_path / "tuned.yaml").write_text(yaml.safe_dump(body))
    assert tuned.main(["--space", str(tmp_path / "tuned.yaml"), "--storage", str(tmp_path / "st")]) == 2
    assert capsys.readouterr().err.startswith("error: fixed.baselines.endpoint: a tuned file tunes")


def test_shipped_tuned_files_parse():
    for name, n in (("tuned_smoke", 2), ("tuned_cifar10_random", 7), ("tuned_cifar10_class", 7)):
        plan = tuned.load_plan(f"tune_spaces/{name}.yaml")
        assert len(plan.baselines) == n and plan.objective == "avg_gap" and len(plan.seeds) >= 2
    plan = tuned.load_plan("tune_spaces/tuned_cifar10_random.yaml")
    salun = plan.tuning_space("salun")
    assert {d.key for d in salun.dims} == {
        "baseline",
        "baseline.lr",
        "baseline.epochs",
        "baseline.mask_ratio",
    }
    assert plan.final_grid({"ga": {"lr": 0.01}}).trial_config({"baseline": "ga", "seed": 2}).baselines.params[
        "ga"
    ] == {"lr": 0.01}


def test_tuned_baseline_then_mcu_end_to_end(tmp_path, ray_cluster, capsys):
    from mcu_dist.tracking import KIND_TAG

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = tmp_path / "st"
    rc = tuned.main(["--space", _file(tmp_path), "--storage", str(storage), "--tracking-uri", uri])
    out = capsys.readouterr().out
    assert rc == 0, out
    record = yaml.safe_load((storage / "tb" / "tuned.yaml").read_text())["baselines"]["ga"]
    client = MlflowClient(uri)
    # stage 1: the record is the tuning trial with the best objective, as MLflow logged them
    exp = client.get_experiment_by_name("tb-tuning")
    runs = client.search_runs([exp.experiment_id], f"tags.`{KIND_TAG}` = 'baseline_tuning'")
    assert len(runs) == 3 == record["trials"]
    # its console lines name a tuning trial by its baseline and hyperparameters (no curve settings)
    assert sum("] ga · tuning · lr" in line for line in out.splitlines()) == 3, out
    best = min(runs, key=lambda r: r.data.metrics["avg_gap"])
    assert record["avg_gap"] == pytest.approx(best.data.metrics["avg_gap"])
    assert float(best.data.params["baseline.lr"]) == pytest.approx(record["hyperparameters"]["lr"])
    # stage 2: every trial ran with exactly the tuned hyperparameters, one per seed
    exp = client.get_experiment_by_name("tb")
    trials = client.search_runs([exp.experiment_id], f"tags.`{KIND_TAG}` = 'trial'")
    assert len(trials) == 2
    for t in trials:
        params = yaml.safe_load(t.data.params["baselines.params"])
        assert params["ga"] == pytest.approx(record["hyperparameters"])
        assert yaml.safe_load(t.data.params["baselines.tuned"]) == ["ga"]
    assert "| ga (tuned) |" in out and "| ga (tuned)+BN |" in out, "the report labels the tuned rows"
    # the tuned endpoint at the tuning seed came from the cache: stage 2 trained only seed 1's
    # original, retrained and tuned ga (seed 0's three are the stage-1 ones)
    ready = [line for line in out.splitlines() if line.startswith("shared models ready")]
    assert ready[-1].startswith("shared models ready (3 trained now"), ready
    assert "tuned baseline" in out and "±" in out and ("beats +BN" in out or "not +BN" in out)

    # --resume: finished stages are kept, a stage cut off before its table is continued, nothing reruns
    summary = storage / "tb-final" / "summary.json"  # stage 2 as if a trial had failed: it is resumed
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "failed": 1}))
    again = ["--space", _file(tmp_path), "--storage", str(storage), "--tracking-uri", uri, "--resume"]
    rc = tuned.main(again)
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "tb-tune-ga: finished earlier, kept" in out and "tb-final: finished earlier" not in out
    assert json.loads(summary.read_text())["failed"] == 0, "stage 2 restored, its table written again"
    assert yaml.safe_load((storage / "tb" / "tuned.yaml").read_text())["baselines"]["ga"] == record
    assert len(client.search_runs([exp.experiment_id], f"tags.`{KIND_TAG}` = 'trial'")) == 2, "no trial reran"
