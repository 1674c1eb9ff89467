"""``dsmpnn <command>``: the command-line interface.

Each subcommand is a thin shell over a library function (tests call the functions directly).
Errors caused by user input (:class:`dsmpnn.errors.DsmpnnError`) are printed without a traceback and exit with 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from dsmpnn.errors import DsmpnnError, Interrupted

__all__ = ["main", "build_parser"]

Handler = Callable[[argparse.Namespace], int | None]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dsmpnn", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    gen = sub.add_parser("generate", help="generate a PDE dataset with a numerical solver")
    gen_sub = gen.add_subparsers(dest="generator", required=True, metavar="DATASET")
    imp = sub.add_parser("import", help="convert user data into the dsmpnn dataset format")
    imp_sub = imp.add_subparsers(dest="importer", required=True, metavar="FORMAT")
    for add in (_add_generate_darcy, _add_generate_airfoil, _add_generate_step3d, _add_import_grid,
                _add_import_airfrans):
        add(gen_sub if add.__name__.startswith("_add_generate") else imp_sub)
    for add in (_add_train, _add_evaluate, _add_predict):
        add(sub)
    return parser


def _formatter() -> type[argparse.HelpFormatter]:
    return argparse.ArgumentDefaultsHelpFormatter


# --- generate darcy -------------------------------------------------------------------------------------------


def _add_generate_darcy(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("darcy", help="2D Darcy flow -div(a grad u) = 1 on the unit square (Li et al. 2020)",
                       description="Generate Darcy flow samples: a = 12/3 thresholded Gaussian random field, "
                                   "u = 0 on the boundary, f = 1; inputs [a, boundary], target [u].",
                       formatter_class=_formatter())
    p.add_argument("--n", type=int, default=1000, help="number of samples")
    p.add_argument("--resolution", type=int, default=64, metavar="S",
                   help="grid nodes per side, boundary included (spacing 1/(S-1) on the unit square)")
    p.add_argument("--out", required=True, default=argparse.SUPPRESS, metavar="DIR",
                   help="output dataset directory (must not exist or be empty)")
    p.add_argument("--seed", type=int, default=0, help="random seed (sample k is reproducible from seed and k)")
    p.add_argument("--split", default="0.8,0.1,0.1", metavar="TRAIN,VAL,TEST",
                   help="fractions of samples in the train/val/test splits, summing to 1")
    p.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    p.set_defaults(handler=_generate_darcy)


def _generate_darcy(args: argparse.Namespace) -> int:
    import time

    from dsmpnn.data.darcy import generate_darcy
    from dsmpnn.data.grid import parse_splits

    t0 = time.perf_counter()
    m = generate_darcy(args.out, args.n, args.resolution, args.seed, parse_splits(args.split),
                       progress=not args.no_progress)
    counts = ", ".join(f"{k} {len(m.splits.get(k, ()))}" for k in ("train", "val", "test"))
    print(f"wrote {args.n} Darcy samples at {args.resolution}x{args.resolution} ({counts}) to {args.out} "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0


# --- import grid ----------------------------------------------------------------------------------------------


def _add_import_grid(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("grid", help="regular-grid arrays [samples, H, W(, C)] from .mat/.npz/.npy/.pt",
                       description="Convert regular-grid arrays [samples, H, W] or [samples, H, W, C] (axis 1 "
                                   "along y, axis 2 along x) into a dataset on the unit square. Keys are found "
                                   "among x/a/coeff/input(s) and y/u/sol/output(s)/solution unless given.",
                       formatter_class=_formatter())
    p.add_argument("file", metavar="FILE", help="inputs (and targets unless --y): .mat, .npz, .npy, .pt or .pth")
    p.add_argument("--out", required=True, default=argparse.SUPPRESS, metavar="DIR",
                   help="output dataset directory (must not exist or be empty)")
    p.add_argument("--x-key", default=None, metavar="K", help="key of the input array in FILE; None: auto-detect")
    p.add_argument("--y-key", default=None, metavar="K",
                   help="key of the target array in FILE, or in the --y file; None: auto-detect")
    p.add_argument("--y", dest="y_file", default=None, metavar="FILE",
                   help="a separate file with the targets (required when FILE is .npy); None: targets are in FILE")
    p.add_argument("--split", default="0.8,0.1,0.1", metavar="TRAIN,VAL,TEST",
                   help="fractions of samples in the train/val/test splits, summing to 1")
    p.add_argument("--seed", type=int, default=0, help="seed of the random split assignment")
    p.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    p.set_defaults(handler=_import_grid)


def _import_grid(args: argparse.Namespace) -> int:
    import time

    from dsmpnn.data.grid import parse_splits
    from dsmpnn.data.grid_import import import_grid

    t0 = time.perf_counter()
    m = import_grid(args.file, args.out, x_key=args.x_key, y_key=args.y_key, y_path=args.y_file,
                    splits=parse_splits(args.split), seed=args.seed, progress=not args.no_progress)
    counts = ", ".join(f"{k} {len(m.splits.get(k, ()))}" for k in ("train", "val", "test"))
    x = ", ".join(f.name for f in m.input_fields)
    y = ", ".join(f.name for f in m.target_fields)
    print(f"imported {sum(len(v) for v in m.splits.values())} samples ({counts}; inputs {x}; targets {y}) "
          f"from {args.file} to {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0


# --- generate airfoil / step3d, import airfrans ---------------------------------------------------------------


def _add_generate_airfoil(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("airfoil", help="2D steady Navier-Stokes past NACA airfoils, Re 50-200 (AirfRANS-like)",
                       description="Generate steady incompressible flows past random NACA 4/5-digit airfoils "
                                   "(chord 1 in the box [-2,4]x[-2,2], nu = 0.01, inlet speed 0.5-2 m/s, angle of "
                                   "attack -5..15 deg) with Taylor-Hood P2-P1 elements and Newton; unconverged "
                                   "settings are refused. Inputs [inlet_u, inlet_v, sdf, normal_x, normal_y], "
                                   "targets [u, v, p].",
                       formatter_class=_formatter())
    p.add_argument("--n", type=int, default=100, help="number of samples")
    p.add_argument("--fidelity", choices=("low", "high"), default="low",
                   help="mesh: low = size 0.03 at the airfoil, 0.4 far (~800 nodes); high = 0.015 / 0.2 (~2,900)")
    _add_solver_run_options(p)
    p.set_defaults(handler=_generate_airfoil)


def _add_generate_step3d(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("step3d", help="3D steady Navier-Stokes over a backward-facing step (tetrahedra)",
                       description="Generate steady incompressible flows in a 3x1x0.5 channel with a backward-"
                                   "facing step of random height 0.2-0.5 and peak inlet speed 0.2-1 m/s "
                                   "(nu = 0.02), Taylor-Hood P2-P1 tetrahedra and Newton; unconverged settings "
                                   "are refused. Inputs [inlet_speed, step_height, wall], targets [u, v, w, p].",
                       formatter_class=_formatter())
    p.add_argument("--n", type=int, default=50, help="number of samples")
    p.add_argument("--resolution", type=int, default=6, metavar="R",
                   help="tetrahedra across the channel height (mesh size 1/R m)")
    _add_solver_run_options(p)
    p.set_defaults(handler=_generate_step3d)


def _add_solver_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, default=argparse.SUPPRESS, metavar="DIR",
                   help="output dataset directory (must not exist or be empty)")
    p.add_argument("--seed", type=int, default=0, help="random seed (attempt k is reproducible from seed and k)")
    p.add_argument("--split", default="0.8,0.1,0.1", metavar="TRAIN,VAL,TEST",
                   help="fractions of samples in the train/val/test splits, summing to 1")
    p.add_argument("--max-newton", type=int, default=15, help="Newton iterations before a setting is refused")
    p.add_argument("--no-progress", action="store_true", help="do not show a progress bar")


def _generate_airfoil(args: argparse.Namespace) -> int:
    from dsmpnn.data.airfoil import generate_airfoil
    from dsmpnn.data.grid import parse_splits

    _, report = generate_airfoil(args.out, args.n, args.fidelity, args.seed, parse_splits(args.split),
                                 args.max_newton, progress=not args.no_progress)
    print(f"wrote airfoil ({args.fidelity}) to {args.out}: {report.summary()}")
    return 0


def _generate_step3d(args: argparse.Namespace) -> int:
    from dsmpnn.data.grid import parse_splits
    from dsmpnn.data.step3d import generate_step3d

    _, report = generate_step3d(args.out, args.n, args.resolution, args.seed, parse_splits(args.split),
                                args.max_newton, progress=not args.no_progress)
    print(f"wrote step3d (resolution {args.resolution}) to {args.out}: {report.summary()}")
    return 0


def _add_import_airfrans(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("airfrans", help="AirfRANS case folders (+ manifest.json) of one task",
                       description="Convert AirfRANS cases (DIR/manifest.json and DIR/<case>/<case>_internal.vtu, "
                                   "<case>_aerofoil.vtp) into a dataset: inputs [inlet_u, inlet_v, sdf, normal_x, "
                                   "normal_y], targets [u, v, p, nu_t]; splits <task>_train and <task>_test "
                                   "(scarce uses full_test).",
                       formatter_class=_formatter())
    p.add_argument("dir", metavar="DIR", help="the AirfRANS dataset folder (with manifest.json)")
    p.add_argument("--out", required=True, default=argparse.SUPPRESS, metavar="DIR2",
                   help="output dataset directory (must not exist or be empty)")
    p.add_argument("--task", choices=("full", "scarce", "reynolds", "aoa"), default="full",
                   help="AirfRANS task whose train/test lists are imported")
    p.add_argument("--val-fraction", type=float, default=0.0, metavar="F",
                   help="share of the train cases moved to a 'val' split (seeded)")
    p.add_argument("--seed", type=int, default=0, help="seed of the val selection")
    p.add_argument("--limit", type=int, default=None, metavar="K",
                   help="import only the first K cases of each list; None: all")
    p.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    p.set_defaults(handler=_import_airfrans)


def _import_airfrans(args: argparse.Namespace) -> int:
    import time

    from dsmpnn.data.airfrans import import_airfrans

    t0 = time.perf_counter()
    m = import_airfrans(args.dir, args.out, args.task, args.val_fraction, args.seed, args.limit,
                        progress=not args.no_progress)
    counts = ", ".join(f"{k} {len(v)}" for k, v in m.splits.items())
    print(f"imported AirfRANS task {args.task} ({counts}) from {args.dir} to {args.out} "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0


# --- train / evaluate / predict -------------------------------------------------------------------------------


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on a dataset", formatter_class=_formatter(),
                       description="Train the MPNN of a YAML config on a dataset directory. Overrides: section.key=value.")
    p.add_argument("--config", help="YAML config (see configs/); defaults for every key not given")
    p.add_argument("--data", required=True, help="dataset directory (with manifest.json)")
    p.add_argument("--out", required=True, help="run directory to write checkpoints, logs and plots to")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.epochs=10")
    p.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dsmpnn.train import load_config, train
    from dsmpnn.train.rundir import RunDir

    if args.resume:
        stored = Path(args.out) / "config.yaml"
        if not stored.is_file():
            raise DsmpnnError(f"{args.out}: --resume needs a run directory with config.yaml")
        cfg = load_config(args.config or stored, args.overrides)
    else:
        cfg = load_config(args.config, args.overrides)
    record = train(cfg, args.data, args.out, resume=args.resume, progress=not args.no_progress)
    print(f"done: epoch {record.get('epoch')}, train loss {record.get('train_loss', float('nan')):.4g}; "
          f"run in {RunDir(Path(args.out)).root}")
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate a trained run on a dataset split", formatter_class=_formatter(),
                       description="Print RMSE per field and mean relative L2 (physical units); write RUN/metrics.json.")
    p.add_argument("run", help="run directory written by `dsmpnn train`")
    p.add_argument("--data", help="dataset directory (default: the one the run was trained on)")
    p.add_argument("--split", default="test", help="dataset split to evaluate")
    p.add_argument("--no-plots", action="store_true", help="skip the truth / prediction / error figures")
    p.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from dsmpnn.train import evaluate_run

    evaluate_run(args.run, args.data, args.split, plots=not args.no_plots)
    return 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict the fields of one mesh", formatter_class=_formatter(),
                       description="Predict target fields on a mesh (.npz sample or .vtu/.vtk with the input fields "
                                   "as point data); write .npz or .vtu (with _true/_error fields when targets exist).")
    p.add_argument("run", help="run directory written by `dsmpnn train`")
    p.add_argument("--input", required=True, help="mesh file: .npz (pos, x[, y]) or .vtu/.vtk")
    p.add_argument("--out", required=True, help="output file, .npz or .vtu")
    p.set_defaults(handler=_predict)


def _predict(args: argparse.Namespace) -> int:
    from dsmpnn.train import predict_file

    predict_file(args.run, args.input, args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.handler(args)
    except Interrupted as e:
        print(f"dsmpnn {args.command}: {e}", file=sys.stderr)
        return 130
    except DsmpnnError as e:
        print(f"dsmpnn {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dsmpnn {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
