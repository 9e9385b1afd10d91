"""`ncood` command line: `ncood train | aggregate | register | serve | data link | datasets | models`.

Every TrialConfig field is a flag of `ncood train` (built from the dataclass, so the two cannot drift apart);
values start from a named preset (`--preset`, default: the dataset's own preset, else `digits`).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from pathlib import Path
from typing import Any, Sequence

from ncood.config import PRESETS, ConfigError, TrialConfig, add_config_flags, make_config
from ncood.serve import cli as serve_cli


def _config_from_args(args: argparse.Namespace) -> TrialConfig:
    overrides: dict[str, Any] = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrialConfig)
                                 if getattr(args, f.name) is not None}
    if isinstance(overrides.get("ood_sets"), str):
        overrides["ood_sets"] = tuple(s.strip() for s in overrides["ood_sets"].split(",") if s.strip())
    preset = args.preset or (overrides.get("dataset") if overrides.get("dataset") in PRESETS else "digits")
    return make_config(preset, **overrides)


def _check_folder(flag: str, path: Path) -> None:
    """A folder flag whose path is, or lies under, an existing file: refused before training, naming the file
    (otherwise the data loader fails with NotADirectoryError, or the first epoch's checkpoint write does)."""
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise ConfigError(f"{flag} {path}: {p} is a file, not a folder; pass a folder path")
            return


def cmd_train(args: argparse.Namespace) -> int:
    from ncood.evaluate import format_results
    from ncood.pipeline import run_trial

    cfg = _config_from_args(args)
    out = Path(args.out or f"runs/{cfg.condition}-s{cfg.seed}").resolve()
    _check_folder("--out", out)
    _check_folder("--data-root" if args.data_root else "$NCOOD_DATA_ROOT", Path(cfg.data_root))
    print(f"ncood train: {cfg.condition} seed {cfg.seed} on {cfg.dataset} (OoD: {', '.join(cfg.ood_sets)}) -> {out}")
    summary = run_trial(cfg, out, resume=args.resume, progress=not args.no_progress)
    print(format_results(summary["final"]))
    print(f"test accuracy {summary['test_accuracy']:.4f}  |  wall time {summary['wall_time_s']:.1f} s")
    print(f"summary: {out / 'summary.json'}\ncheckpoint: {summary['artifacts']['checkpoint']}")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from ncood.data import get_info, list_datasets

    for name in list_datasets():
        info = get_info(name)
        role = "ID " if info.can_be_id else "OoD"
        shape = "x".join(map(str, info.image_shape)) if info.image_shape else "as ID"  # generated in the ID shape
        print(f"{name:14s} {role}  {shape:8s} {info.description}")
    return 0


def cmd_data_link(args: argparse.Namespace) -> int:
    """Install (optionally) and link Fashion-MNIST into the data root; see ncood.data.fashion_mnist."""
    from ncood.config import default_data_root
    from ncood.data import fashion_mnist

    if args.install:
        try:
            fashion_mnist.install_debian_package()
        except RuntimeError as e:
            print(f"ncood: {e}", file=sys.stderr)
            return 2
    result = fashion_mnist.link(args.data_root or default_data_root(), args.source or fashion_mnist.DEBIAN_DIR)
    print(result.describe())
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from ncood.models import list_models

    print("\n".join(list_models()))
    return 0


MODULE_COMMANDS = [  # (name, light module with add_arguments and run, help)
    ("aggregate", "ncood.aggregate", "min/max/mean tables and figures from a sweep's MLflow runs"),
]


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ncood",
        description="ncood: L2 feature normalization, Neural Collapse and OoD detection experiments "
                    "(DDU benchmark) on Ray Tune + MLflow.",
        epilog="Grids: python tune_jobs/ablation.py --help.  Docs: README.md",
    )
    from ncood.tune.jobs import add_version

    add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train and evaluate one trial; writes summary.json + checkpoint to --out",
                       description="Train one trial (progress bar), evaluate NC metrics and OoD detection, and write "
                                   "summary.json, checkpoint.pt, gaussians.pt and config.json into --out.")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="starting values (default: the dataset's preset if there is one, else digits); flags override")
    p.add_argument("--out", default=None, help="output folder (default: runs/<condition>-s<seed>)")
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt if present")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    add_config_flags(p)
    p.set_defaults(func=cmd_train)

    # Subcommands that live with their module (add_arguments(parser) + run(args)); imported only when chosen. The
    # modules are light (heavy imports inside run): mlflow/torch take seconds and no --help should.
    chosen = next((a for a in (argv or []) if not a.startswith("-")), None)
    for name, module, help_ in MODULE_COMMANDS:
        p = sub.add_parser(name, help=help_, description=help_)
        if name == chosen:
            mod = importlib.import_module(module)
            mod.add_arguments(p)
            p.set_defaults(func=mod.run)

    p = sub.add_parser("register", help="register the best condition's median-seed model as "
                                         "ncood-ood-scorer@<alias> and print the serve command",
                       description="Register the best condition's median-seed model (see ncood/serve/register.py).")
    serve_cli.add_register_arguments(p)
    p.set_defaults(func=serve_cli.run_register)

    p = sub.add_parser("data", help="prepare datasets (ncood data link fashion-mnist)")
    link = p.add_subparsers(dest="action", required=True, metavar="ACTION").add_parser(
        "link", help="put Fashion-MNIST into the data root where torchvision reads it",
        description="Unpack the Fashion-MNIST IDX files of Debian's package dataset-fashion-mnist (or of --source) "
                    "into <data-root>/FashionMNIST/raw and verify them. Training does this by itself on first use "
                    "when the package is installed.")
    link.add_argument("dataset", choices=["fashion-mnist", "fashion_mnist"])
    link.add_argument("--data-root", default=None, help="default: $NCOOD_DATA_ROOT or ~/.cache/ncood/data")
    link.add_argument("--source", default=None, help="folder with the four IDX files, gzipped or not "
                                                     "(default: /usr/share/datasets/fashion-mnist, the package's)")
    link.add_argument("--install", action="store_true",
                      help="first apt-get install dataset-fashion-mnist if it is missing (needs root)")
    link.set_defaults(func=cmd_data_link)
    p = sub.add_parser("serve", help="serve the registered champion (or --model-uri) with `mlflow models serve`",
                       description="Start `mlflow models serve --env-manager local` for the model with the right "
                                   "environment (this venv's bin on PATH, MLFLOW_TRACKING_URI, ncood's request "
                                   "limits): works from .venv/bin/ncood without activating the venv. Ctrl+C stops it.")
    serve_cli.add_serve_arguments(p)
    p.set_defaults(func=serve_cli.run_serve)
    sub.add_parser("datasets", help="list registered datasets").set_defaults(func=cmd_datasets)
    sub.add_parser("models", help="list registered architectures").set_defaults(func=cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"ncood: configuration error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:  # DatasetNotFoundError says where it looked and how to get the data
        print(f"ncood: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
