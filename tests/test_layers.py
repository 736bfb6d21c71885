"""The package's floors hold on its real import graph: no upward import, no import circle."""

from __future__ import annotations

from mcu_dist.devtools import layers


def test_no_upward_import_and_no_circle():
    assert layers.violations(layers.graph()) == []


def test_every_function_level_import_counts(tmp_path):
    """Imports inside functions and under TYPE_CHECKING count; a circle and an upward edge are named."""
    pkg = tmp_path / "mcu_dist"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "config.py").write_text("def f():\n    from mcu_dist.data import thing\n")
    (pkg / "data" / "__init__.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mcu_dist import config\n"
    )
    (pkg / "stray.py").write_text("")
    problems = layers.violations(layers.graph(pkg))
    assert any(p.startswith("mcu_dist.config (floor 'config') imports mcu_dist.data") for p in problems)
    assert "import circle among: mcu_dist.config, mcu_dist.data" in problems
    assert "mcu_dist.stray: on no floor; allowed: add it to FLOORS" in problems


def test_a_store_checkpoint_round_trips_and_a_damaged_one_is_refused(tmp_path):
    import pytest
    import torch

    from mcu_dist.config import ConfigError
    from mcu_dist.store import FORMAT, load_checkpoint, save_checkpoint

    state = {"w": torch.arange(6.0).reshape(2, 3), "n": torch.tensor(3)}
    path = tmp_path / "c.pt"
    save_checkpoint(path, "curve", state, {"order": 2}, {"rng": torch.get_rng_state()})
    ckpt = load_checkpoint(path, "curve", kind="curve")
    assert ckpt.header["order"] == 2 and ckpt.header["format"] == FORMAT and ckpt.header["kind"] == "curve"
    assert all(torch.equal(ckpt.state[k], state[k]) for k in state)
    with pytest.raises(ConfigError, match=r"^x: .* holds a 'curve'; allowed: a 'model'"):
        load_checkpoint(path, "x", kind="model")
    obj = torch.load(path, weights_only=True)
    obj["state"]["w"][0, 0] = 99.0
    torch.save(obj, path)
    with pytest.raises(ConfigError, match=r"^x: .* fails its digest check"):
        load_checkpoint(path, "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]  # no temporary file left behind


def test_ci_runs_the_readme_test_line_and_it_lints():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    line = next(s for s in (root / ".ci" / "run").read_text().splitlines() if s.startswith("pip install"))
    assert f"    {line}\n" in (root / "README.md").read_text()
    assert "ruff check . && ruff format --check ." in line
