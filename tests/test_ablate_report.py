"""Ablation grids and the paper-style report, on real MLflow runs written by real trials (no Ray)."""

from __future__ import annotations

import itertools
import statistics
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from mlflow.tracking import MlflowClient

from mcu_dist import report
from mcu_dist.config import ConfigError
from mcu_dist.sweep import reference_cells
from mcu_dist.tracking import KIND_TAG, PARENT_TAG, Tracker
from mcu_dist.trial import TrialContext, run_trial
from mcu_dist.tune_space import load_space
from mcu_dist.validation import validate

SMALL = {
    "data.dataset": "digits",
    "reference.epochs": 3,
    "mcu.epochs": 1,
    "eval.t_points": 5,
    "eval.mia_cap": 200,
    "eval.bn_set_size": 256,
}


def _grid(tmp_path, grid: dict, **fixed) -> str:
    path = tmp_path / "grid.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "fixed": {**SMALL, "cache_dir": str(tmp_path / "cache"), **fixed},
                "grid": grid,
                "sweep": {"name": "g"},
            }
        )
    )
    return str(path)


def test_grid_is_the_cross_product_and_shares_references_per_scenario_and_seed(tmp_path):
    space = load_space(
        _grid(
            tmp_path,
            {
                "baseline": ["ga", "rl"],
                "forget.spec": ["classes:1", "random:0.1"],
                "mcu.beta_schedule": ["fixed", "adaptive_step"],
                "seed": [0, 1],
            },
        )
    )
    assert space.sweep.num_samples == 16
    cells = reference_cells(space)
    assert len(cells) == 4 and {(c["forget.spec"], c["seed"]) for c in cells} == {
        ("classes:1", 0),
        ("classes:1", 1),
        ("random:0.1", 0),
        ("random:0.1", 1),
    }
    cfg = space.trial_config(
        {"baseline": "rl", "forget.spec": "random:0.1", "mcu.beta_schedule": "fixed", "seed": 1}
    )
    assert cfg.baselines.methods == ["rl"] and cfg.forget.spec == "random:0.1"
    assert (cfg.seeds.split, cfg.seeds.model, cfg.seeds.unlearn, cfg.seeds.eval) == (1, 1, 1, 1)


@pytest.mark.parametrize(
    "grid,key",
    [
        ({"mcu.k": 0.5}, "grid.mcu.k"),
        ({"mcu.k": []}, "grid.mcu.k"),
        ({"mcu.kk": [0.5]}, "search.mcu.kk"),
        ({"seed": ["a"]}, "search.seed"),
        ({"mcu.k": [0.5, 1.5]}, "search.mcu.k"),
    ],
)
def test_bad_grid_is_one_line_naming_the_key(tmp_path, grid, key):
    with pytest.raises(ConfigError) as info:
        load_space(_grid(tmp_path, grid))
    assert str(info.value).split(": ")[0].startswith(key) and "\n" not in str(info.value)


def test_report_builds_the_paper_table_from_mlflow(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    space = load_space(
        _grid(
            tmp_path,
            {"baseline": ["ga"], "mcu.beta_schedule": ["fixed", "adaptive_step"], "seed": [0, 1]},
            **{"forget.spec": "classes:1"},
        )
    )
    tracker = Tracker(uri, "grid")
    parent = tracker.start_run("grid", {KIND_TAG: "sweep"})
    metrics = {}
    for i, (schedule, seed) in enumerate(
        [("fixed", 0), ("fixed", 1), ("adaptive_step", 0), ("adaptive_step", 1)]
    ):
        params = {"baseline": "ga", "mcu.beta_schedule": schedule, "seed": seed}
        ctx = TrialContext(space, uri, "grid", parent, f"cell{i}", tmp_path / f"cell{i}")
        metrics[(schedule, seed)] = run_trial(params, ctx)
    tracker.end_run(parent)
    out = tmp_path / "report"
    assert report.main(["--experiment", "grid", "--tracking-uri", uri, "--out", str(out)]) == 0
    rows = pq.read_table(out / "report.parquet").to_pylist()
    assert [r["model"] for r in rows] == [
        "Original",
        "Retrain",
        "ga",
        "ga+BN",
        "ga+line",
        "ga+budget",
        "ga+mcu",
        "ga+mcu_beta",
    ]
    original, rows = rows[0], rows[1:]
    assert original["n"] == 2 and original["avg_gap"] == pytest.approx(
        statistics.fmean(metrics[("fixed", s)]["original_avg_gap"] for s in (0, 1))
    )
    assert 0 < original["train_acc"] <= 100
    assert rows[0]["avg_gap"] == 0.0 and rows[0]["n"] == 2
    for i, control in ((2, "baseline_bn_avg_gap"), (3, "line_avg_gap"), (4, "budget_avg_gap")):
        assert rows[i]["n"] == 2  # one value per seed, not per cell
        assert rows[i]["avg_gap"] == pytest.approx(
            statistics.fmean(metrics[("fixed", s)][control] for s in (0, 1))
        )
    for r in [original, *rows]:  # every row carries the seed mean's interval, the +BN control's included
        for m in ("UA", "RA", "TA", "MIA", "avg_gap"):
            assert r[f"{m}_lo"] <= r[m] <= r[f"{m}_hi"], (r["model"], m)
    assert rows[6]["beta_0"] + rows[6]["beta_low"] + rows[6]["beta_high"] + rows[6][
        "beta_other"
    ] == pytest.approx(1)
    mcu = rows[5]
    assert mcu["no_path_gain"] == sum(metrics[("fixed", s)]["path_gain"] == 0.0 for s in (0, 1))
    gaps = [metrics[("fixed", s)]["avg_gap"] for s in (0, 1)]
    assert mcu["avg_gap"] == pytest.approx(statistics.fmean(gaps))
    assert mcu["avg_gap_std"] == pytest.approx(statistics.stdev(gaps))
    assert rows[1]["avg_gap"] == pytest.approx(
        statistics.fmean(metrics[("fixed", s)]["baseline_avg_gap"] for s in (0, 1))
    )
    for name in ("report.md", "report.csv", "paths.png", "pareto.png", "avg_gap_by_schedule.png"):
        assert (out / name).is_file(), name
    assert "| ga+mcu_beta |" in (out / "report.md").read_text()
    client = MlflowClient(uri)
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert "report/report.md" in logged and "report/paths.png" in logged
    children = client.search_runs([tracker.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent}'")
    assert len(children) == 4


def test_report_on_an_empty_experiment_is_a_clear_error(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    Tracker(uri, "nothing")
    assert report.main(["--experiment", "nothing", "--tracking-uri", uri, "--out", str(tmp_path / "r")]) == 2
    assert "--experiment" in capsys.readouterr().err


@pytest.mark.parametrize("name,references", [("ablation_smoke.yaml", 4), ("ablation_mask_smoke.yaml", 2)])
def test_shipped_smoke_grid_parses(name, references):
    space = load_space(Path(__file__).resolve().parents[1] / "tune_spaces" / name)
    assert space.grid and space.sweep.num_samples == 16 and len(reference_cells(space)) == references


GRIDS = sorted(
    p.name
    for p in (Path(__file__).resolve().parents[1] / "tune_spaces").glob("*.yaml")
    if "grid" in yaml.safe_load(p.read_text())
)


@pytest.mark.parametrize("name", GRIDS)
def test_every_shipped_grid_parses_and_each_cell_builds_a_valid_config(name):
    space = load_space(Path(__file__).resolve().parents[1] / "tune_spaces" / name)
    cells = list(itertools.product(*space.grid.values()))
    assert space.sweep.num_samples == len(cells) > 0
    for cell in cells:
        validate(space.trial_config(dict(zip(space.grid, cell, strict=True))))


def test_asha_trials_report_a_gap_cal_proxy_every_epoch(tmp_path):
    from mcu_dist.tune_space import parse_space

    space = parse_space(
        {
            "fixed": {
                **SMALL,
                "forget.spec": "classes:1",
                "mcu.epochs": 3,
                "cache_dir": str(tmp_path / "cache"),
            },
            "search": {"mcu.k": {"type": "float", "low": 0.2, "high": 1.0}},
            "sweep": {"asha": True, "objective": "gap_cal"},
        }
    )
    reports: list[dict] = []
    final = run_trial(
        {"mcu.k": 0.5}, TrialContext(space, None, "x", None, "t0", tmp_path / "t"), report=reports.append
    )
    assert [r["epoch"] for r in reports] == [1, 2, 3]
    assert all(r["final"] == 0 and r["gap_cal"] == r["proxy_gap_cal"] >= 0 for r in reports)
    assert final["final"] == 1 and "avg_gap" in final


def test_a_trial_wraps_the_users_endpoint_in_a_space_and_a_grid(tmp_path):
    """A user's own θ_p (``baselines.endpoint``) in a sweep or grid: each trial wraps that checkpoint, and
    a checkpoint of GA's θ_p gives exactly the path GA's trial gives (no +budget row: not our update)."""
    from mcu_dist.config import ExperimentConfig, with_overrides
    from mcu_dist.lab import Lab
    from mcu_dist.references import baseline_model, prepare_references
    from mcu_dist.store import save_model
    from mcu_dist.trial import trial_name
    from mcu_dist.tune_space import grid_from_dict, parse_space

    fixed = {**SMALL, "cache_dir": str(tmp_path / "cache")}
    lab = Lab.build(validate(with_overrides(ExperimentConfig(), {**fixed, "baselines.methods": ["ga"]})))
    ga, _ = baseline_model(lab, "ga", prepare_references(lab, retrain=False, mask=False).original)
    save_model(ga, tmp_path / "theta_p.pt")  # the user's θ_p, made outside the sweep
    user = {**fixed, "baselines.endpoint": str(tmp_path / "theta_p.pt")}

    # dimensions that would change what the checkpoint was made from (or a second θ_p) are refused
    refused = ({"baseline": ["ga"]}, {"baseline.lr": [0.1]}, {"seed": [0, 1]}, {"forget.spec": ["classes:1"]})
    for dim in refused:
        with pytest.raises(ConfigError, match=rf"search\.{next(iter(dim))}: fixed sets baselines\.endpoint"):
            grid_from_dict({"fixed": user, "grid": dim}, "g.yaml")
    with pytest.raises(ConfigError, match=r"search\.baselines\.endpoint: one checkpoint per space"):
        grid_from_dict({"fixed": fixed, "grid": {"baselines.endpoint": [user["baselines.endpoint"]]}}, "g")
    grid_from_dict({"fixed": user, "grid": {"seeds.unlearn": [0, 1], "mcu.curve_order": [2, 3]}}, "g.yaml")
    search = parse_space({"fixed": user, "search": {"mcu.k": {"type": "categorical", "choices": [0.5]}}})
    grid = grid_from_dict({"fixed": user, "grid": {"mcu.k": [0.5]}}, "g.yaml")
    assert search.methods() == grid.methods() == [], "no registered baseline is trained for these trials"
    assert trial_name(grid.trial_config({"mcu.k": 0.5}), {"mcu.k": 0.5}).startswith("endpoint · ")

    theirs = run_trial({"mcu.k": 0.5}, TrialContext(grid, None, "x", None, "t0", tmp_path / "t0"))
    ga_grid = grid_from_dict({"fixed": {**fixed, "baselines.methods": ["ga"]}, "grid": {"mcu.k": [0.5]}}, "g")
    ours = run_trial({"mcu.k": 0.5}, TrialContext(ga_grid, None, "x", None, "t1", tmp_path / "t1"))
    for key in ("baseline_avg_gap", "baseline_bn_avg_gap", "line_avg_gap", "avg_gap", "t_star"):
        assert theirs[key] == pytest.approx(ours[key]), key
    assert "budget_avg_gap" in ours and "budget_avg_gap" not in theirs
