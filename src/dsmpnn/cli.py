"""``dsmpnn <command>``: the command-line interface.

Each subcommand is a thin shell over a library function (tests call the functions directly).
Errors caused by user input (:class:`dsmpnn.errors.DsmpnnError`) are printed without a traceback and exit with 2.

``train``, ``evaluate`` and ``predict`` run as P ranks with ``--nproc P``: this process then checks the input and
runs ``dsmpnn.cli.main(<the same arguments>)`` as P local ranks through torchrun's elastic launcher, forked from
a fork server that imported the ranks' modules while the input was checked (:class:`dsmpnn.distributed.launch.
RankLauncher`; each rank sees torchrun's RANK/WORLD_SIZE and joins the group instead of launching again).
Multi-node runs start the same entry point with ``torchrun ... -m dsmpnn.cli train ...`` directly.
``DSMPNN_TRACE_STARTUP=1`` prints when each start-up phase ends (:mod:`dsmpnn.startup_trace`).
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import threading
import typing
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING

from dsmpnn.errors import DsmpnnError, Interrupted
from dsmpnn.messages import brief
from dsmpnn.ranges import SEED_MAX, Rule
from dsmpnn.startup_trace import mark as _mark

if TYPE_CHECKING:
    from dsmpnn.data.dataset import Manifest

__all__ = ["main", "build_parser", "run"]

Handler = Callable[[argparse.Namespace], int | None]


class UsageError(Exception):
    """A command line argparse refuses (unknown option, missing argument, value out of range)."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are raised (:class:`UsageError`) for :func:`main` to print as one line."""

    def error(self, message: str) -> typing.NoReturn:
        raise UsageError(self.prog, message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dsmpnn", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    gen = sub.add_parser("generate", help="generate a PDE dataset with a numerical solver")
    gen_sub = gen.add_subparsers(dest="generator", required=True, metavar="DATASET")
    imp = sub.add_parser("import", help="convert user data into the dsmpnn dataset format")
    imp_sub = imp.add_subparsers(dest="importer", required=True, metavar="FORMAT")
    for add in (_add_generate_darcy, _add_generate_airfoil, _add_generate_step3d, _add_import_grid,
                _add_import_mesh, _add_import_airfrans):
        add(gen_sub if add.__name__.startswith("_add_generate") else imp_sub)
    for add in (_add_train, _add_evaluate, _add_predict, _add_partition, _add_check, _add_bench):
        add(sub)
    return parser


def _formatter() -> type[argparse.HelpFormatter]:
    return argparse.ArgumentDefaultsHelpFormatter


# --- option values --------------------------------------------------------------------------------------------


def _parse_number(text: str, integer: bool) -> float | int | None:
    """``text`` as an int (``1e6`` too, when whole) or a float; None when it is neither."""
    try:
        return int(text) if integer else float(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if integer and value.is_integer() else None


def _ranged(kind: str, lo: float, hi: float | None = None, lo_open: bool = False) -> Callable[[str], float | int]:
    """An argparse ``type=`` that parses a number and checks it against ``Rule(kind, lo, hi, lo_open)``; argparse
    names the option in the message (``--seed is -1, expected an integer in [0, 4294967295]``)."""
    rule = Rule(kind, lo, hi, lo_open)

    def convert(text: str) -> float | int:
        value = _parse_number(text, kind == "int")
        if value is None or not rule.accepts(value):
            shown = brief(text) if value is None else text.strip()  # a number as typed, anything else quoted
            raise argparse.ArgumentTypeError(f"is {shown}, expected {rule.describe()}")
        return value

    convert.__name__ = "integer" if kind == "int" else "number"
    return convert


_SEED = _ranged("int", 0, SEED_MAX)
_THREADS = _ranged("int", 1, 4096)
_NPROC = _ranged("int", 1, 4096)
_HALO_HOPS = _ranged("int", 1, 1000)
_RADIUS = _ranged("float", 0.0, None, lo_open=True)
_WIDTH = _ranged("int", 1, 65536)


def _device(text: str) -> str:
    """``cpu`` or ``cuda[:k]`` of a CUDA device this machine has."""
    match = re.fullmatch(r"(cpu|cuda)(?::(\d+))?", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"is {brief(text)}, expected cpu, cuda or cuda:K")
    if match.group(1) == "cuda":
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(match.group(2) or 0)
        if index >= count:
            raise argparse.ArgumentTypeError(f"is {brief(text)}, but this machine has {count} CUDA device(s)")
    return text.strip()


# --- generate darcy -------------------------------------------------------------------------------------------


def _add_generate_darcy(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("darcy", help="2D Darcy flow -div(a grad u) = 1 on the unit square (Li et al. 2020)",
                       description="Generate Darcy flow samples: a = 12/3 thresholded Gaussian random field, "
                                   "u = 0 on the boundary, f = 1; inputs [a, boundary], target [u].",
                       formatter_class=_formatter())
    p.add_argument("--n", type=_ranged("int", 1, 10**9), default=1000, help="number of samples")
    p.add_argument("--resolution", type=_ranged("int", 3, 10**6), default=64, metavar="S",
                   help="grid nodes per side, boundary included (spacing 1/(S-1) on the unit square)")
    p.add_argument("--out", required=True, default=argparse.SUPPRESS, metavar="DIR",
                   help="output dataset directory (must not exist or be empty)")
    p.add_argument("--seed", type=_SEED, default=0, help="random seed (sample k is reproducible from seed and k)")
    p.add_argument("--split", default="0.8,0.1,0.1", metavar="TRAIN,VAL,TEST",
                   help="fractions of samples in the train/val/test splits, summing to 1 (0,0,1: a test-only set "
                        "to evaluate a run on, e.g. at another resolution)")
    p.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    p.set_defaults(handler=_generate_darcy)


def _generate_darcy(args: argparse.Namespace) -> int:
    import time

    from dsmpnn.data.darcy import generate_darcy
    from dsmpnn.data.grid import parse_splits

    t0 = time.perf_counter()
    m = generate_darcy(args.out, args.n, args.resolution, args.seed, parse_splits(args.split, need_train=False),
                       progress=not args.no_progress)
    counts = _split_counts(m)
    print(f"wrote {args.n} Darcy samples at {args.resolution}x{args.resolution} ({counts}) to {args.out} "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0


def _split_counts(manifest: Manifest) -> str:
    """"train 96, val 12, test 12": samples per split of a written dataset."""
    return ", ".join(f"{k} {len(manifest.splits.get(k, ()))}" for k in ("train", "val", "test"))


# --- import grid ----------------------------------------------------------------------------------------------


def _add_import_grid(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("grid", help="regular-grid arrays [samples, H, W(, C)] from .mat/.npz/.npy/.pt",
                       description="Convert regular-grid arrays [samples, H, W] or [samples, H, W, C] (axis 1 "
                                   "along y, axis 2 along x) into a dataset of quad meshes. Keys are found "
                                   "among x/a/coeff/input(s) and y/u/sol/output(s)/solution unless given. Bool "
                                   "arrays become 0/1 and integer arrays float (the manifest description says so). "
                                   "Node (i, j) sits at (x_j, y_i) in the --bbox [xmin, xmax] x [ymin, ymax]: "
                                   "endpoint: x_j = xmin + j (xmax - xmin) / (W - 1), both walls are nodes; "
                                   "stride: x_j = xmin + j (xmax - xmin) / W, the far walls are not (a vertex grid "
                                   "subsampled by striding: a 32x32 file and its [::2, ::2] 16x16 version agree on "
                                   "the shared nodes); y_i alike with i and H. --stride-of N: the arrays are an "
                                   "N-node grid of that convention taken [::k] (k with ceil(N / k) = W): "
                                   "x_j = xmin + j k (xmax - xmin) / (N - 1) (endpoint) or / N (stride).",
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
                   help="fractions of samples in the train/val/test splits, summing to 1; 0,0,1 imports a test-only "
                        "set for `dsmpnn evaluate RUN --data DIR` (normalised with the run's training statistics)")
    p.add_argument("--seed", type=_SEED, default=0, help="seed of the random split assignment")
    p.add_argument("--coords", choices=("endpoint", "stride"), default="endpoint",
                   help="where the nodes sit: endpoint x_j = xmin + j (xmax - xmin) / (W - 1) (both walls are nodes); "
                        "stride x_j = xmin + j (xmax - xmin) / W (the last row/column is one spacing short of the "
                        "far wall); y_i alike")
    p.add_argument("--bbox", type=_bbox, default="0,1,0,1", metavar="XMIN,XMAX,YMIN,YMAX",
                   help="the box the grid spans: x in [XMIN, XMAX] along axis 2, y in [YMIN, YMAX] along axis 1")
    p.add_argument("--stride-of", type=_stride_of, default=None, metavar="N|NH,NW",
                   help="the arrays are an N x N (NH x NW) grid of the --coords convention taken [::k], k the "
                        "integer with ceil(N / k) = W; None: the arrays are the grid itself")
    p.add_argument("--boundary", action="store_true",
                   help="add an input field 'boundary': 1 on the nodes on the box's edges (from the positions: with "
                        "stride the last row and column are not on the wall), 0 elsewhere")
    p.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    p.set_defaults(handler=_import_grid)


def _bbox(text: str) -> tuple[float, float, float, float]:
    """``xmin,xmax,ymin,ymax``: four finite numbers with xmin < xmax and ymin < ymax."""
    from dsmpnn.data.sample import MAX_COORDINATE

    values = [_parse_number(v.strip(), False) for v in text.split(",")]
    if len(values) != 4 or any(v is None or not abs(v) <= MAX_COORDINATE for v in values):
        raise argparse.ArgumentTypeError(f"is {brief(text)}, expected four numbers XMIN,XMAX,YMIN,YMAX (e.g. 0,1,0,1)")
    if not (values[0] < values[1] and values[2] < values[3]):
        raise argparse.ArgumentTypeError(f"is {brief(text)}, expected XMIN,XMAX,YMIN,YMAX with XMIN < XMAX and "
                                         "YMIN < YMAX")
    return tuple(values)


def _stride_of(text: str) -> tuple[int, int]:
    """``N`` or ``NH,NW``: node counts (at least 2) of the grid the arrays were taken from."""
    values = [_parse_number(v.strip(), True) for v in text.split(",")]
    if len(values) not in (1, 2) or any(v is None or not 2 <= v <= 10**9 for v in values):
        raise argparse.ArgumentTypeError(f"is {brief(text)}, expected N or NH,NW: node counts per side in "
                                         "[2, 1000000000]")
    return (values[0], values[-1])


def _import_grid(args: argparse.Namespace) -> int:
    import time

    from dsmpnn.data.grid import parse_splits
    from dsmpnn.data.grid_import import import_grid

    t0 = time.perf_counter()
    m = import_grid(args.file, args.out, x_key=args.x_key, y_key=args.y_key, y_path=args.y_file,
                    splits=parse_splits(args.split, need_train=False), seed=args.seed, progress=not args.no_progress,
                    coords=args.coords, bbox=args.bbox, stride_of=args.stride_of, boundary=args.boundary)
    counts = _split_counts(m)
    x = ", ".join(f.name for f in m.input_fields)
    y = ", ".join(f.name for f in m.target_fields)
    print(f"imported {sum(len(v) for v in m.splits.values())} samples ({counts}; inputs {x}; targets {y}) "
          f"from {args.file} to {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0


# --- import mesh -----------------------------------------------------------------------------------------------


def _add_import_mesh(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mesh", help="solver output in any format meshio reads (.vtu, .vtk, .msh, .xdmf, .med, ...)",
                       description="Convert mesh files into a dataset: one sample per file (per step of an XDMF "
                                   "time series); point fields chosen by name, vectors and tensors split into "
                                   "components (U -> U_x, U_y[, U_z]; U_x alone: one of them); a 2D mesh written "
                                   "with a constant z is 2D; every cell block is kept for predict's output.",
                       formatter_class=_formatter())
    p.add_argument("files", nargs="*", metavar="FILE",
                   help="mesh files or quoted glob patterns ('runs/*/out.vtu', '**' recursive)")
    p.add_argument("--list", dest="list_file", default=None, metavar="TXT",
                   help="a text file naming mesh files, one a line (relative to its folder; # comments)")
    p.add_argument("--out", required=True, default=argparse.SUPPRESS, metavar="DIR",
                   help="output dataset directory (must not exist or be empty)")
    p.add_argument("--inputs", required=True, default=argparse.SUPPRESS, metavar="A,B",
                   help="input fields (columns of x): point-data names or components (U, U_x, S_xy)")
    p.add_argument("--targets", required=True, default=argparse.SUPPRESS, metavar="U,P",
                   help="target fields (columns of y), named as --inputs")
    p.add_argument("--cell-data", choices=("refuse", "average"), default="refuse",
                   help="a field given per cell: refuse it, or average it onto the nodes (weighted by cell "
                        "volume, area in 2D)")
    p.add_argument("--split", default="0.8,0.1,0.1", metavar="TRAIN,VAL,TEST",
                   help="fractions of samples in the train/val/test splits, summing to 1 (0,0,1: test only)")
    p.add_argument("--split-by", choices=("file", "step"), default="file",
                   help="draw splits per file (the steps of a time series stay together) or per sample")
    p.add_argument("--seed", type=_SEED, default=0, help="seed of the random split assignment")
    p.add_argument("--name", default=None, help="dataset name in the manifest; None: the --out folder's name")
    p.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    p.set_defaults(handler=_import_mesh)


def _import_mesh(args: argparse.Namespace) -> int:
    import time

    from dsmpnn.data.grid import parse_splits
    from dsmpnn.data.mesh_import import import_mesh

    t0 = time.perf_counter()
    m = import_mesh(args.files, args.out, args.inputs, args.targets, list_file=args.list_file,
                    splits=parse_splits(args.split, need_train=False), seed=args.seed, cell_data=args.cell_data,
                    split_by=args.split_by, name=args.name, progress=not args.no_progress)
    x = ", ".join(f.name for f in m.input_fields)
    y = ", ".join(f.name for f in m.target_fields)
    print(f"imported {sum(len(v) for v in m.splits.values())} meshes ({_split_counts(m)}; {m.dim}D; inputs {x}; "
          f"targets {y}) to {args.out} in {time.perf_counter() - t0:.1f} s")
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
    p.add_argument("--n", type=_ranged("int", 1, 10**6), default=100, help="number of samples")
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
    p.add_argument("--n", type=_ranged("int", 1, 10**6), default=50, help="number of samples")
    p.add_argument("--resolution", type=_ranged("int", 2, 64), default=6, metavar="R",
                   help="tetrahedra across the channel height (mesh size 1/R m)")
    _add_solver_run_options(p)
    p.set_defaults(handler=_generate_step3d)


def _add_solver_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, default=argparse.SUPPRESS, metavar="DIR",
                   help="output dataset directory (must not exist or be empty)")
    p.add_argument("--seed", type=_SEED, default=0, help="random seed (attempt k is reproducible from seed and k)")
    p.add_argument("--split", default="0.8,0.1,0.1", metavar="TRAIN,VAL,TEST",
                   help="fractions of samples in the train/val/test splits, summing to 1")
    p.add_argument("--max-newton", type=_ranged("int", 1, 1000), default=15, help="Newton iterations before a setting is refused")
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
    p.add_argument("--val-fraction", type=_ranged("float", 0.0, 0.99), default=0.0, metavar="F",
                   help="share of the train cases moved to a 'val' split (seeded)")
    p.add_argument("--seed", type=_SEED, default=0, help="seed of the val selection")
    p.add_argument("--limit", type=_ranged("int", 1, 10**6), default=None, metavar="K",
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


def _add_ds_options(p: argparse.ArgumentParser, config_default: bool) -> None:
    """--nproc, --partition, --halo-hops, --max-restarts of the commands that run on P ranks."""
    from dsmpnn.graph.partition import PARTITION_METHODS

    src = "the config's distributed.partition" if config_default else "the run's distributed.partition"
    g = p.add_argument_group("domain decomposition (DS-MPNN)")
    g.add_argument("--nproc", type=_NPROC, default=None, metavar="P",
                   help="run as P local ranks, launched like torchrun --standalone; omit it under torchrun "
                        "(the ranks then come from torchrun). None: one process")
    g.add_argument("--partition", choices=PARTITION_METHODS, default=None,
                   help=f"how each mesh is split over the ranks; None: {src} (metis unless set)")
    g.add_argument("--halo-hops", type=_HALO_HOPS, default=None, metavar="K",
                   help="halo width in graph hops; the halo exchange runs before every K-th layer; None: "
                        + src.replace("partition", "halo_hops") + " (1 unless set)")
    g.add_argument("--max-restarts", type=_ranged("int", 0, 1000), default=0, metavar="N",
                   help="with --nproc: restart all ranks up to N times after one fails (train resumes from the "
                        "newest checkpoint)")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on a dataset (one process, or P ranks with --nproc)",
                       formatter_class=_formatter(),
                       description="Train the MPNN of a YAML config on a dataset directory. Overrides: "
                                   "section.key=value. With --nproc P (or under torchrun) every mesh is partitioned "
                                   "over P ranks that exchange halo features; the result equals one process up to "
                                   "round-off.")
    p.add_argument("--config", help="YAML config (see configs/); defaults for every key not given")
    p.add_argument("--data", required=True, help="dataset directory (with manifest.json)")
    p.add_argument("--out", required=True, help="run directory to write checkpoints, logs and plots to")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.epochs=10")
    _add_ds_options(p, config_default=True)
    p.set_defaults(handler=_train, precheck=_train_precheck)


def _train_config(args: argparse.Namespace):
    from pathlib import Path

    from dsmpnn.train import load_config

    overrides = list(args.overrides)
    if args.partition is not None:
        overrides.append(f"distributed.partition={args.partition}")
    if args.halo_hops is not None:
        overrides.append(f"distributed.halo_hops={args.halo_hops}")
    if args.resume:
        from dsmpnn.train.rundir import RunDir

        stored = Path(args.out) / "config.yaml"
        if not stored.is_file():
            raise DsmpnnError(f"{args.out}: --resume needs a run directory with config.yaml")
        RunDir(Path(args.out)).read_meta()  # the run's own files are readable (UTF-8, YAML, JSON)
        return load_config(args.config or stored, overrides)
    return load_config(args.config, overrides)


def _train_precheck(args: argparse.Namespace) -> None:
    """Before launching P ranks: the config parses, --out may be written (a new or empty directory, or a run; on
    --resume one this config and dataset may continue) and every training mesh has at least P nodes."""
    from pathlib import Path, PurePath

    from dsmpnn.data.dataset import Dataset
    from dsmpnn.data.paths import check_output_path
    from dsmpnn.train.rundir import RunDir, check_out_dir, resume_changes
    from dsmpnn.train.sharding import check_nproc
    from dsmpnn.train.strategy import check_decomposable

    cfg = _train_config(args)
    check_decomposable(cfg, args.nproc)
    check_output_path(args.out, "directory", "the run directory (--out)")
    data = Dataset(args.data)
    if args.resume:
        resume_changes(RunDir(Path(args.out)), cfg, Path(args.data), data.manifest)
    else:
        check_out_dir(Path(args.out))
    check_nproc(args.nproc, [(PurePath(f).stem, data.num_nodes(f)) for f in data.split("train")])


def _launcher_lock(args: argparse.Namespace) -> AbstractContextManager:
    """What the launcher of P ranks holds while they run: the run directory's lock for `train` (rank 0 sees that
    its parent holds it, and restarted ranks too), nothing for the other commands."""
    from pathlib import Path

    from dsmpnn.train.rundir import RunLock

    return RunLock(Path(args.out)) if args.command == "train" else nullcontext()


def _join_group(args: argparse.Namespace, timeout_s: float):
    """The process group torchrun (or `--nproc`) started, or one process."""
    from dsmpnn.distributed import destroy_process_group, init_from_env, quiet_unless_main

    ctx = init_from_env(timeout_s=timeout_s)
    _mark("process group joined")
    if args.nproc is not None and ctx.world_size != args.nproc:
        destroy_process_group()
        raise quiet_unless_main(DsmpnnError(
            f"--nproc {args.nproc} was given, but this process is one of {ctx.world_size} ranks started by "
            "torchrun; omit --nproc under torchrun"))
    return ctx


def _train(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from dsmpnn.distributed import destroy_process_group
    from dsmpnn.train import train
    from dsmpnn.train.checkpoint import list_checkpoints
    from dsmpnn.train.rundir import RunDir

    cfg = _train_config(args)
    ctx = _join_group(args, cfg.distributed.timeout_s)
    resume = args.resume
    if not resume and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        resume = bool(list_checkpoints(RunDir(Path(args.out)).checkpoints))  # a restart continues the run
    try:
        record = train(cfg, args.data, args.out, resume=resume, progress=not args.no_progress, ctx=ctx)
    finally:
        destroy_process_group()
    if ctx.is_main and record:  # empty: the run was complete already (train said so)
        print(f"done: epoch {record['epoch']}, train loss {record['train_loss']:.4g}; "
              f"run in {RunDir(Path(args.out)).root}")
    return 0


def _run_timeout(run: str) -> float:
    """The run's distributed.timeout_s (the default when its config cannot be read; the command reports why)."""
    from pathlib import Path

    from dsmpnn.distributed import DEFAULT_TIMEOUT_S
    from dsmpnn.train.rundir import RunDir

    try:
        return RunDir(Path(run)).read_meta()[0].distributed.timeout_s
    except DsmpnnError:
        return DEFAULT_TIMEOUT_S


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate a trained run on a dataset split", formatter_class=_formatter(),
                       description="Print RMSE per field and mean relative L2 (physical units); write "
                                   "RUN/metrics.json. With --nproc P every mesh is partitioned and predicted by P "
                                   "ranks.")
    p.add_argument("run", help="run directory written by `dsmpnn train`")
    p.add_argument("--data", help="dataset directory (default: the one the run was trained on)")
    p.add_argument("--split", default="test", help="dataset split to evaluate")
    p.add_argument("--no-plots", action="store_true", help="skip the truth / prediction / error figures")
    _add_ds_options(p, config_default=False)
    p.set_defaults(handler=_evaluate, precheck=_evaluate_precheck)


def _evaluate_precheck(args: argparse.Namespace) -> None:
    from pathlib import Path

    from dsmpnn.data.dataset import Dataset
    from dsmpnn.train.rundir import RunDir
    from dsmpnn.train.sharding import check_nproc
    from dsmpnn.train.strategy import check_decomposable

    cfg, data_dir, _ = RunDir(Path(args.run)).read_meta()
    check_decomposable(cfg, args.nproc)
    data = Dataset(args.data if args.data is not None else data_dir)
    check_nproc(args.nproc, [(Path(f).stem, data.num_nodes(f)) for f in data.split(args.split)])


def _evaluate(args: argparse.Namespace) -> int:
    from dsmpnn.distributed import destroy_process_group
    from dsmpnn.train import evaluate_run

    ctx = _join_group(args, _run_timeout(args.run))
    try:
        evaluate_run(args.run, args.data, args.split, plots=not args.no_plots, ctx=ctx, partition=args.partition,
                     halo_hops=args.halo_hops)
    finally:
        destroy_process_group()
    return 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict the fields of one mesh", formatter_class=_formatter(),
                       description="Predict target fields on a mesh (.npz sample, or any file meshio reads: .vtu, "
                                   ".vtk, .msh, .xdmf ..., with the input fields as point data named as in the "
                                   "dataset, U_x being component x of U); write .npz, .vtu or .xdmf (+ .h5) with "
                                   "every cell block of the input and the predicted fields (with _true/_error "
                                   "fields when targets exist). With --nproc P the mesh is partitioned and "
                                   "predicted by P ranks.")
    p.add_argument("run", help="run directory written by `dsmpnn train`")
    p.add_argument("--input", required=True, help="mesh file: .npz (pos, x[, y]) or any format meshio reads")
    p.add_argument("--out", required=True, help="output file, .npz, .vtu or .xdmf (its data in the .h5 beside it)")
    p.add_argument("--step", type=_ranged("int", 0, 10**9), default=None, metavar="K",
                   help="the step of an XDMF time series to predict on; None: the file must hold one mesh")
    p.add_argument("--cell-data", choices=("refuse", "average"), default="refuse",
                   help="an input field given per cell: refuse it, or average it onto the nodes (by cell volume)")
    _add_ds_options(p, config_default=False)
    p.set_defaults(handler=_predict, precheck=_predict_precheck)


def _predict_precheck(args: argparse.Namespace) -> None:
    from pathlib import Path

    from dsmpnn.data.dataset import sample_num_nodes
    from dsmpnn.train.evaluate import check_predict_paths
    from dsmpnn.train.rundir import RunDir
    from dsmpnn.train.sharding import check_nproc

    RunDir(Path(args.run)).read_meta()
    check_predict_paths(args.input, args.out)
    path = Path(args.input)
    if path.suffix == ".npz":  # other formats are read (and checked) by the ranks
        check_nproc(args.nproc, [(path.stem, sample_num_nodes(path))])


def _predict(args: argparse.Namespace) -> int:
    from dsmpnn.distributed import destroy_process_group
    from dsmpnn.train import predict_file

    ctx = _join_group(args, _run_timeout(args.run))
    try:
        predict_file(args.run, args.input, args.out, ctx=ctx, partition=args.partition, halo_hops=args.halo_hops,
                     step=args.step, cell_data=args.cell_data)
    finally:
        destroy_process_group()
    return 0


# --- partition / check ----------------------------------------------------------------------------------------


def _add_mesh_decomposition_args(p: argparse.ArgumentParser, nproc_default: int | None,
                                 which_mesh: bool = True) -> None:
    """The arguments `partition` and `check` share: which meshes, how many ranks, which partitioner and halo."""
    from dsmpnn.graph.partition import DEFAULT_PARTITION_METHOD, PARTITION_METHODS

    p.add_argument("--data", required=True, help="dataset directory (with manifest.json)")
    p.add_argument("--nproc", type=_NPROC, required=nproc_default is None, default=nproc_default,
                   metavar="P", help="number of subdomains (ranks)")
    p.add_argument("--partition", "--method", dest="partition", choices=PARTITION_METHODS,
                   default=DEFAULT_PARTITION_METHOD, help="partitioner")
    p.add_argument("--halo-hops", type=_HALO_HOPS, default=1, metavar="K", help="halo width in graph hops")
    p.add_argument("--split", default="train", help="dataset split to take the mesh from" if which_mesh else
                   "dataset split whose meshes the training steps sample (train: what `dsmpnn train` uses)")
    if which_mesh:
        p.add_argument("--sample", type=_ranged("int", 0, 10**9), default=0, metavar="K",
                       help="which mesh of the split")


def _add_partition(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("partition", help="split a mesh over P ranks; report and draw subdomains and halos",
                       formatter_class=_formatter(),
                       description="Partition one mesh of a dataset into P subdomains on its radius graph, print "
                                   "per-rank owned/halo/cut-edge counts and the imbalance, and draw the subdomains "
                                   "and halos (2D: PNG; any mesh: VTU with 'owner' and 'halo_count' point fields).")
    _add_mesh_decomposition_args(p, nproc_default=None)
    p.add_argument("--radius", type=_RADIUS, default=None, metavar="R",
                   help="radius of the graph (mesh length unit); None: graph.radius of --config or the default")
    p.add_argument("--config", help="YAML config whose graph.radius and graph.max_neighbors are used")
    p.add_argument("--plot", default=None, metavar="FILE",
                   help="write the picture: FILE.png (2D meshes) or FILE.vtu (any mesh); None: no picture")
    p.set_defaults(handler=_partition)


def _partition(args: argparse.Namespace) -> int:
    from dsmpnn.train import load_config
    from dsmpnn.train.decomposition import inspect_partition, write_partition_figure

    _check_output_files(args, "plot")
    cfg = load_config(args.config)
    view = inspect_partition(args.data, args.nproc, args.partition, cfg, args.halo_hops, args.radius, args.split,
                             args.sample)
    print(view.describe())
    if args.plot:
        print(f"wrote {write_partition_figure(view, args.plot)}")
    return 0


def _add_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="check that P ranks give the single-process outputs and gradients",
                       formatter_class=_formatter(),
                       description="The first training step of `dsmpnn train` with the config (its model and "
                                   "initial weights, the Nystrom-sampled graphs of epoch 1, graph.max_neighbors, "
                                   "distributed.halo_hops or distributed.overlap), run by the trainer's step "
                                   "function as one process and as P local gloo ranks; prints the largest relative "
                                   "difference of the outputs and of every parameter gradient. Exit status 0 "
                                   "within tolerance (1e-10 float64, 1e-5 float32), 1 otherwise.")
    _add_mesh_decomposition_args(p, nproc_default=2, which_mesh=False)
    p.set_defaults(partition=None, halo_hops=None)  # None: the config's distributed.partition / halo_hops
    for action in p._actions:
        if action.dest in ("partition", "halo_hops"):
            action.help += f"; None: the config's distributed.{action.dest}"
    p.add_argument("--steps", type=_ranged("int", 1, 10**6), default=1, metavar="N",
                   help="check the batches of the first N optimizer steps of epoch 1 (each from the initial weights)")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64", help="precision of both runs")
    p.add_argument("--config", help="YAML config: model, graph (radius, sampling, max_neighbors), train (seed, "
                                    "batch_graphs) and distributed (partition, halo_hops, overlap)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. model.layers=2")
    p.set_defaults(handler=_check)


def _check(args: argparse.Namespace) -> int:
    import torch

    from dsmpnn.train import load_config
    from dsmpnn.train.check import check_training_step, format_check

    overrides = list(args.overrides)
    if args.partition is not None:
        overrides.append(f"distributed.partition={args.partition}")
    if args.halo_hops is not None:
        overrides.append(f"distributed.halo_hops={args.halo_hops}")
    cfg = load_config(args.config, overrides)
    rep = check_training_step(args.data, cfg, args.nproc, getattr(torch, args.dtype), args.split, args.steps)
    print(format_check(rep))
    return 0 if rep["passed"] else 1


# --- bench ----------------------------------------------------------------------------------------------------


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks: ECConv vs NNConv (conv), growth with the mesh size (scale), scaling "
                                     "model to P = 1024 (model)",
                       formatter_class=_formatter())
    bench_sub = p.add_subparsers(dest="bench", required=True, metavar="WHAT")
    c = bench_sub.add_parser("conv", help="ECConv vs PyG NNConv: time, peak memory, throughput on one radius graph",
                             formatter_class=_formatter(),
                             description="N random nodes in the unit square, radius graph, one ECConv and one PyG "
                                         "NNConv with the same weights; forward, backward, inference times (min and "
                                         "median of interleaved rounds) and peak memory; prints a table, writes JSON.")
    c.add_argument("--nodes", type=_ranged("int", 2, 10**9), default=20_000, help="random nodes in the unit square")
    c.add_argument("--radius", type=_ranged("float", 0.0, 1.5, lo_open=True), default=0.02, help="graph radius (unit square)")
    c.add_argument("--channels", type=_WIDTH, default=32, help="input = output channels")
    c.add_argument("--hidden", type=_WIDTH, default=64, help="kernel MLP hidden width H")
    c.add_argument("--aggr", choices=["mean", "sum"], default="mean", help="aggregation")
    c.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="precision")
    c.add_argument("--repeats", type=_ranged("int", 1, 1000), default=3, help="timed rounds")
    c.add_argument("--edge-chunk", type=_ranged("int", 1, 2**31 - 1), default=None, help="ECConv edges per chunk; None: the library's")
    c.add_argument("--dense-size", type=_ranged("int", 1, 65536), default=4096, help="size of the reference dense matmul")
    c.add_argument("--threads", type=_THREADS, default=None, help="torch threads; None: torch's setting")
    c.add_argument("--device", type=_device, default="cpu", help="torch device: cpu, cuda or cuda:K")
    c.add_argument("--no-nnconv", action="store_true", help="skip PyG NNConv (no ratios)")
    c.add_argument("--with-bmm", action="store_true",
                   help="also time ECConv with the fused CPU kernels off (its PyTorch bmm path), in the same rounds")
    c.add_argument("--out", default=None, metavar="FILE.json", help="write the full result as JSON; None: do not")
    c.set_defaults(handler=_bench_conv)
    s = bench_sub.add_parser("scale", help="graph build, forward, backward time and peak memory against N",
                             formatter_class=_formatter(),
                             description="For each N: N random points in the unit square/cube, the radius giving "
                                         "--neighbors neighbours per node, the radius graph, forward and backward of "
                                         "an MPNN (--layers x --channels); each N in a fresh process, peak memory = "
                                         "peak RSS above the level before the points were made. Prints a table and "
                                         "the log-log slopes (1 = linear growth).")
    s.add_argument("--nodes", type=_node_list, default=[10_000, 100_000, 1_000_000], metavar="N1,N2,...",
                   help="comma-separated node counts, e.g. 1e4,1e5,1e6")
    s.add_argument("--dim", type=int, choices=(2, 3), default=2, help="unit square (2) or unit cube (3)")
    s.add_argument("--neighbors", type=_ranged("float", 0.0, 10_000.0, lo_open=True), default=25, help="mean neighbours per node (sets the radius)")
    s.add_argument("--channels", type=_WIDTH, default=32, help="MPNN latent channels")
    s.add_argument("--layers", type=_ranged("int", 1, 1000), default=4, help="MPNN message-passing layers")
    s.add_argument("--threads", type=_THREADS, default=None, help="torch threads; None: torch's setting")
    s.add_argument("--seed", type=_SEED, default=0, help="seed of the points and weights")
    s.add_argument("--device", type=_device, default="cpu",
                   help="torch device of the model (the graph is built on the CPU, then copied): cpu, cuda or cuda:K")
    s.add_argument("--mode", choices=["train", "predict"], default="train",
                   help="time forward + backward (train) or the inference forward alone (predict)")
    s.add_argument("--edge-chunk", type=_ranged("int", 1, 2**31 - 1), default=None,
                   help="ECConv edges per chunk; None: the library's (sized for CPU caches; a GPU wants e.g. 262144)")
    s.add_argument("--out", default=None, metavar="FILE.json", help="write the result as JSON (atomically)")
    s.add_argument("--plot", default=None, metavar="FILE.png", help="log-log plot of time and memory against N")
    s.set_defaults(handler=_bench_scale)
    m = bench_sub.add_parser("model", help="scaling model of DS-MPNN to P = 1024 (CPU gloo measured, GPU assumed)",
                             formatter_class=_formatter(),
                             description="Measures this machine's ECConv layer, MPNN step (1 thread) and gloo halo "
                                         "exchange (2 processes), partitions uniform 2-D/3-D meshes of 1e5..1e7 nodes "
                                         "into P = 2..1024, and predicts strong and weak scaling efficiency for this "
                                         "CPU and for assumed H200 GPUs (NVLink + InfiniBand NDR). About 12 min and 3 "
                                         "GiB by default; --quick: tiny meshes, ~20 s. benchmarks/scaling_model.py "
                                         "--check also compares with measured P = 1, 2, 4 steps.")
    m.add_argument("--quick", action="store_true", help="small meshes and few sizes (a smoke run)")
    m.add_argument("--measured", default=None, metavar="FILE.json",
                   help="a benchmarks/bench_scaling.py --json output to compare the model with; None: no comparison")
    m.add_argument("--out", default=None, metavar="FILE.json", help="write everything as JSON (atomically)")
    m.add_argument("--plot", default=None, metavar="FILE.png", help="efficiency against P, strong and weak")
    m.add_argument("--report", default=None, metavar="FILE.md", help="write the Markdown tables to this file")
    m.set_defaults(handler=_bench_model)


def _node_list(text: str) -> list[int]:
    """Comma-separated node counts, each an integer in [2, 10^9] (``1e4,1e5`` is fine)."""
    count = _ranged("int", 2, 10**9)
    values = [count(v) for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"is {brief(text)}, expected comma-separated node counts like 1e4,1e5")
    return values


def _check_output_files(args: argparse.Namespace, *options: str) -> None:
    """Refuse, before any work, output-file options (``--out``, ``--plot``) that name a directory or cannot be
    created."""
    from dsmpnn.data.paths import check_output_path

    for name in options:
        if getattr(args, name) is not None:
            check_output_path(getattr(args, name), "file", f"--{name}")


def _bench_conv(args: argparse.Namespace) -> int:
    import torch

    from dsmpnn.bench import bench_conv, format_table
    from dsmpnn.bench.scale import write_json

    _check_output_files(args, "out")
    kwargs = {} if args.edge_chunk is None else {"edge_chunk": args.edge_chunk}
    result = bench_conv(args.nodes, args.radius, args.channels, args.hidden, args.repeats, args.device,
                        aggr=args.aggr, dtype=getattr(torch, args.dtype), dense_size=args.dense_size,
                        nnconv=not args.no_nnconv, threads=args.threads, with_bmm=args.with_bmm, **kwargs)
    print(format_table(result))
    if args.out:
        print(f"wrote {write_json(result, args.out)}")
    return 0


def _bench_scale(args: argparse.Namespace) -> int:
    from dsmpnn.bench.scale import bench_scale, format_scale_table, plot_scale, write_json

    _check_output_files(args, "out", "plot")
    result = bench_scale(args.nodes, args.dim, args.neighbors, args.channels, args.layers, args.seed, args.threads,
                         device=args.device, mode=args.mode, edge_chunk=args.edge_chunk)
    print(format_scale_table(result))
    if args.out:
        print(f"wrote {write_json(result, args.out)}")
    if args.plot:
        print(f"wrote {plot_scale(result, args.plot)}")
    return 0


def _bench_model(args: argparse.Namespace) -> int:
    from dsmpnn.bench.scale import write_json, write_text
    from dsmpnn.bench.scaling_measure import DEFAULT_MESHES, QUICK_RUN, run_scaling_model
    from dsmpnn.bench.scaling_report import format_report, plot_scaling_model
    from dsmpnn.data.textfile import read_json

    _check_output_files(args, "out", "plot", "report")
    measured = None if args.measured is None else read_json(args.measured, "bench_scaling.py --json output")
    result = run_scaling_model(measured=measured, **(QUICK_RUN if args.quick else {"meshes": DEFAULT_MESHES}))
    if args.out:
        print(f"wrote {write_json(result, args.out)}")
    report = format_report(result, (2, 8, 64) if args.quick else (2, 8, 64, 256, 1024))
    print(report)
    if args.plot:
        print(f"wrote {plot_scaling_model(result, args.plot)}")
    if args.report:
        written = write_text(report + "\n", args.report)
        print(f"wrote {written}")
    return 0


_RANK_MODULES = {"train": ("dsmpnn.cli", "dsmpnn.train.trainer", "torch._dynamo"),
                 "evaluate": ("dsmpnn.cli", "dsmpnn.train.evaluate", "torch._dynamo"),
                 "predict": ("dsmpnn.cli", "dsmpnn.train.evaluate", "torch._dynamo")}
"""What the ranks of ``--nproc`` commands import (their fork server does, once, while the input is checked).
``torch._dynamo`` (1.5-2 s, sympy included): every rank imports it before it joins the process group (see
:func:`dsmpnn.distributed.process_group.init_process_group`), and torch.optim.Adam would anyway."""


def _launched_here(args: argparse.Namespace) -> bool:
    """True when this process should start ``--nproc`` ranks (not when it is one of them, under torchrun)."""
    import os

    nproc = getattr(args, "nproc", None)
    return (hasattr(args, "precheck") and nproc is not None and nproc > 1
            and not ("RANK" in os.environ and "WORLD_SIZE" in os.environ))


@contextmanager
def _user_warnings(command: str) -> Iterator[None]:
    """Print warnings meant for the user (UserWarning) as one line ``dsmpnn COMMAND: warning: ...``, without the
    source line Python adds; other warnings keep Python's format."""
    import warnings

    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 - warnings' signature
        if category is UserWarning:
            print(f"dsmpnn {command}: warning: {message}", file=sys.stderr if file is None else file)
        else:
            original(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = original


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (``kill``, ``timeout``, a batch scheduler) raises KeyboardInterrupt like Ctrl-C, so that a command
    stopped that way cleans up what it was writing (a dataset's temporary directory, say) and exits 130. ``train``
    installs its own handlers while it trains (it stops after the current step and checkpoints)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):  # noqa: ANN001 - signal handler signature
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _usage_line(error: UsageError, limit: int = 400) -> str:
    """``dsmpnn generate: error: --seed is '-1', expected ...; see `dsmpnn generate darcy --help```: argparse's
    message on one line, the option first, cut to ``limit`` characters."""
    command = " ".join(error.prog.split()[:2])
    message = re.sub(r"^argument ([^:]+): is ", r"\1 is ", " ".join(str(error)[: limit * 2].split()))
    if len(message) > limit:
        message = message[: limit - 3] + "..."
    return f"{command}: error: {message}; see `{error.prog} --help`"


def main(argv: list[str] | None = None) -> int:
    """Run ``dsmpnn ARGV``; the exit status: 0 done, 1 a run failed (a peer rank hung or died, training diverged,
    a file could not be written: a one-line message; anything else: a traceback), 2 bad input (a one-line message naming the file, field or option), 130 interrupted
    (a checkpoint to continue from was saved)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _mark("dsmpnn.cli imported")
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        print(_usage_line(e), file=sys.stderr)
        return 2
    _mark("arguments parsed")
    with _user_warnings(args.command), _sigterm_interrupts():
        try:
            if _launched_here(args):
                from dsmpnn.distributed.launch import RankLauncher

                # the ranks' fork server imports their modules while this process checks the input
                with RankLauncher(args.nproc, preload=_RANK_MODULES[args.command]) as launcher:
                    args.precheck(args)  # refuse bad input once, before starting P processes
                    _mark("precheck done")
                    with _launcher_lock(args):
                        code = launcher.run("dsmpnn.cli", argv, args.max_restarts)
                _mark("ranks finished, launcher returned")
                return code
            code = args.handler(args)
            _mark("command done")
        except Interrupted as e:
            if not e.quiet:
                print(f"dsmpnn {args.command}: {e}", file=sys.stderr)
            return e.exit_code
        except DsmpnnError as e:
            if not e.quiet:
                print(f"dsmpnn {args.command}: error: {e}", file=sys.stderr)
            return e.exit_code
        except KeyboardInterrupt:
            print(f"dsmpnn {args.command}: interrupted", file=sys.stderr)
            return 130
    return int(code or 0)


def run() -> typing.NoReturn:
    """The ``dsmpnn`` program: :func:`main` with ``sys.argv``, then exit with its status.

    Before exiting it moves every object into the garbage collector's permanent generation (``gc.freeze``): the
    interpreter's final collections would otherwise walk the millions of objects torch, scipy and matplotlib made,
    which takes 0.5-1 s for a command that ran for two. Objects are still freed by reference counting and files
    closed; only unreachable cycles are left to the end of the process."""
    code = main()
    import gc

    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run()
