"""``python -m mcu_dist.run``: one experiment, no Ray Tune — the fast path for users and tests.

Flags are derived from the config dataclasses (fields with ``cli`` metadata); ``--config FILE``
loads a YAML config first, flags override it, ``--seed`` sets every stage's seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing

from mcu_dist import fs
from mcu_dist.config import SMOKE, ConfigError, ExperimentConfig, cli_fields, load_yaml, with_overrides
from mcu_dist.guard import DivergenceError
from mcu_dist.services import writable_dir
from mcu_dist.validation import validate


def build_parser() -> argparse.ArgumentParser:
    from mcu_dist.console import registry_epilog

    p = argparse.ArgumentParser(
        prog="python -m mcu_dist.run",
        description=__doc__.splitlines()[0],
        epilog=registry_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="YAML experiment config (flags override it)")
    p.add_argument("--seed", type=int, help="seed of every stage (split, model, unlearn, eval)")
    p.add_argument("--smoke-test", action="store_true", help="shrink everything so the run takes seconds")
    for dotted, f, tp in cli_fields():
        default = f.default if f.default is not dataclasses.MISSING else None
        extra = f" (default: {default})" if default not in (None, "") else ""
        flag_kw = {"nargs": "?", "const": "true"} if _metavar(tp) == "BOOL" else {}
        p.add_argument(
            f.metadata["cli"], dest=dotted, metavar=_metavar(tp), help=f.metadata["help"] + extra, **flag_kw
        )
    return p


def _metavar(tp) -> str:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    base = args[0] if args else tp
    return {int: "N", float: "X", bool: "BOOL"}.get(
        base, "LIST" if typing.get_origin(base) is list else "VALUE"
    )


def config_from_args(args: argparse.Namespace) -> tuple[ExperimentConfig, bool]:
    cfg = load_yaml(args.config) if args.config else ExperimentConfig()
    flags = {dotted for dotted, _, _ in cli_fields()}
    overrides = {k: v for k, v in vars(args).items() if k in flags and v is not None}
    if args.seed is not None:
        overrides.update({f"seeds.{s}": args.seed for s in ("split", "model", "unlearn", "eval")})
    if args.smoke_test:
        overrides = {**SMOKE, **overrides}
    return with_overrides(cfg, overrides), args.smoke_test


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg, _ = config_from_args(args)
        validate(cfg)
        for loc, flag in ((cfg.out, "--out"), (cfg.cache_dir, "--cache-dir")):
            if fs.is_remote(loc):
                fs.probe(loc, flag)
            else:
                writable_dir(loc, flag)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from mcu_dist.experiment import format_table, run_experiment, run_folder

    out = run_folder(cfg.out, cfg)
    try:
        with fs.staged(out) as local:  # a URI gets the finished folder's files
            result = run_experiment(cfg, local)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except DivergenceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a full disk, a folder that became unwritable mid-run
        print(f"error: cannot write {e.filename or ''} ({e.strerror or type(e).__name__})", file=sys.stderr)
        return 1
    print()
    print(format_table(result.rows))
    print(f"\nrun folder: {out}  (results.parquet, config.yaml, forget_manifest.parquet, paths/*/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
