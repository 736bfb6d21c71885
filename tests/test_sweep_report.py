"""What a sweep shows: run names, params, the end-of-sweep tables and files, the MLflow view (no Ray)."""

from __future__ import annotations

import json

import yaml

from mcu_dist.sweep_report import best_config, console_table, summary_markdown, sweep_plot
from mcu_dist.tracking import EXPERIMENT_KIND, VIEW_TAG, Tracker, t_step
from mcu_dist.trial import trial_name, trial_params
from mcu_dist.tune_space import load_space

SPACE = {
    "fixed": {"data.dataset": "digits", "forget.spec": "classes:1", "mcu.epochs": 1},
    "search": {
        "baseline": {"type": "categorical", "choices": ["ft", "rl"]},
        "baseline.lr": {"type": "logfloat", "low": 1e-3, "high": 1e-1},
        "mcu.beta_schedule": {"type": "categorical", "choices": ["fixed", "adaptive_step"]},
        "mcu.beta": {"type": "float", "low": 0.05, "high": 0.5, "when": {"mcu.beta_schedule": "fixed"}},
        "mcu.k": {"type": "float", "low": 0.1, "high": 1.0},
    },
    "sweep": {"name": "demo", "num_samples": 4},
}
FIXED_BETA = {
    "baseline": "rl",
    "baseline.lr": 0.01,
    "mcu.beta_schedule": "fixed",
    "mcu.beta": 0.2,
    "mcu.k": 0.3,
}
ADAPTIVE = {"baseline": "ft", "baseline.lr": 0.02, "mcu.beta_schedule": "adaptive_step", "mcu.k": 0.5}


def _space(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(SPACE, sort_keys=False))
    return load_space(str(path))


def _row(tid, params, avg_gap, base, **extra):
    return {
        "trial_id": tid,
        "name": f"name-{tid}",
        "status": "OK",
        **{f"param.{k}": v for k, v in params.items()},
        "avg_gap": avg_gap,
        "gain": base - avg_gap,
        "gap_cal": 1.0,
        "baseline_avg_gap": base,
        **{k: 50.0 for k in ("UA", "RA", "TA", "MIA")},
        "t_star": 0.8,
        "order": extra.get("order", 1),
    }


def test_a_trial_is_named_and_parametrised_by_what_it_ran(tmp_path):
    space = _space(tmp_path)
    fixed = space.trial_config(FIXED_BETA)
    assert trial_name(fixed, FIXED_BETA) == "rl · β0.2 · k0.3 · o2 · lr0.01"
    adaptive = space.trial_config(ADAPTIVE)
    assert trial_name(adaptive, ADAPTIVE).startswith("ft · adaptive_step · k0.5 · o2")
    params = trial_params(fixed, FIXED_BETA)
    assert params["mcu.variant"] == "mcu" and "mcu.variants" not in params  # fixed β is MCU, not MCU-β
    assert trial_params(adaptive, ADAPTIVE)["mcu.variant"] == "mcu_beta"
    assert params["baseline"] == "rl" and params["search.mcu.k"] == 0.3


def test_best_config_reruns_the_winner(tmp_path):
    space = _space(tmp_path)
    rows = [_row("a", FIXED_BETA, 1.0, 3.0), _row("b", ADAPTIVE, 2.0, 2.5)]
    path = tmp_path / "best.yaml"
    path.write_text(yaml.safe_dump(best_config(SPACE, rows[0], "demo")))
    rerun = load_space(str(path))
    assert rerun.sweep.num_samples == 1 and rerun.sweep.name == "demo-best"
    # the only point of the new space is the winner: sampling it gives the winner's config
    only = {d.key: d.choices[0] for d in rerun.dims}
    assert rerun.trial_config(only).to_dict() == space.trial_config(FIXED_BETA).to_dict()


def test_the_end_of_sweep_tables_say_what_they_are(tmp_path):
    rows = [
        _row("a", FIXED_BETA, 1.0, 3.0, order=2),
        _row("b", ADAPTIVE, 2.0, 2.5, order=1),
        _row("c", {**ADAPTIVE, "mcu.k": 0.9}, 2.2, 2.5, order=3),
        {"trial_id": "d", "status": "ERROR", "error": "boom", "order": 4},
    ]
    text = console_table(rows, "avg_gap", n=2)
    assert text.splitlines()[0].startswith("Top 2 of 4 trials by avg_gap")
    assert "d" in text and "boom" in text
    per_base = text[text.index("Per baseline") :].splitlines()[1:]
    # one line per baseline: its own Avg. Gap, the best MCU trial's, the gain
    assert [line.split()[0] for line in per_base] == ["rl", "ft"]
    assert all(x in per_base[0] for x in ("3.00", "1.00", "(+2.00)"))
    assert all(x in per_base[1] for x in ("2.50", "2.00", "(+0.50)"))
    # a sweep with no baseline dimension (e.g. one user endpoint) names the baseline from the trial names
    endpoint = [{**_row("e", {"mcu.k": 0.5}, 1.5, 2.0), "name": "endpoint · adaptive_step · k0.5 · o2"}]
    line = console_table(endpoint, "avg_gap").split("Per baseline")[1].splitlines()[1]
    assert line.split()[0] == "endpoint", line
    summary = {"trials": 4, "completed": 3, "failed": 1, "wall_s": 10.0}
    md = summary_markdown(rows, "avg_gap", summary, rows[0])
    assert "3 of 4 trials completed" in md and "Best config" in md and "boom" in md
    plot = sweep_plot(rows, "avg_gap", tmp_path)
    assert plot.stat().st_size > 10_000


def test_the_experiment_opens_in_the_training_view_sorted_best_first(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'm.db'}", "view")
    exp = tracker.client.get_experiment(tracker.experiment_id)
    assert exp.tags[EXPERIMENT_KIND[0]] == EXPERIMENT_KIND[1]
    key = tracker.share_view("avg_gap", ["avg_gap", "gain"], ["mcu.k"])
    state = json.loads(tracker.client.get_experiment(tracker.experiment_id).tags[VIEW_TAG + key])
    assert state["orderByKey"] == "metrics.`avg_gap`" and state["orderByAsc"] is True
    assert state["selectedColumns"][:2] == ["metrics.`avg_gap`", "metrics.`gain`"]
    url = tracker.runs_url(key)
    assert url.startswith("http://127.0.0.1:5000/#/experiments/") and f"viewStateShareKey={key}" in url
    assert "workflowType=machine_learning" in url
    assert tracker.serve_hint().startswith("mlflow ui --backend-store-uri sqlite:///")
    assert [t_step(t) for t in (0.0, 0.05, 0.75, 1.0)] == [0, 5, 75, 100]


def test_help_lists_the_registered_names(capsys):
    import pytest

    from mcu_dist import run, sweep

    for parse in (sweep.parse_args, run.build_parser().parse_args):
        with pytest.raises(SystemExit):
            parse(["--help"])
        text = capsys.readouterr().out
        for name in ("digits", "cifar10", "resnet18", "small_cnn", "salun", "rl", "adaptive_step", "fixed"):
            assert name in text.split("datasets:", 1)[1], name
