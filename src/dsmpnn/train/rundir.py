"""A run directory: what training writes and what evaluate/predict read back.

    RUN/config.yaml          resolved configuration
    RUN/dataset.json         dataset path and manifest (field names, units, normalisation statistics)
    RUN/checkpoints/         ckpt_epoch_NNNNNN.pt (atomic, checksummed, last K kept)
    RUN/metrics.jsonl        one record per epoch;  RUN/tb/  TensorBoard
    RUN/plots/               loss curve, truth / prediction / error figures
    RUN/metrics.json         written by `dsmpnn evaluate`
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import nn

import dsmpnn
from dsmpnn.data.dataset import Manifest
from dsmpnn.errors import CheckpointError
from dsmpnn.train.checkpoint import atomic_write_bytes, load_checkpoint, load_state
from dsmpnn.train.config import Config, read_config_file
from dsmpnn.train.factory import build_model
from dsmpnn.train.features import FeatureMap

__all__ = ["RunDir", "LoadedRun", "load_run"]


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    def write_meta(self, cfg: Config, data_dir: Path, manifest: Manifest) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.root / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode())
        meta = {"path": str(Path(data_dir).resolve()), "manifest": manifest.to_json(), "version": dsmpnn.__version__}
        atomic_write_bytes(self.root / "dataset.json", json.dumps(meta, indent=1).encode())

    def read_meta(self) -> tuple[Config, Path, Manifest]:
        if not self.root.is_dir():
            raise CheckpointError(f"{self.root}: run directory does not exist")
        for name in ("config.yaml", "dataset.json"):
            if not (self.root / name).is_file():
                raise CheckpointError(f"{self.root}: not a dsmpnn run directory (no {name}); pass the --out of `dsmpnn train`")
        cfg_path, meta_path = self.root / "config.yaml", self.root / "dataset.json"
        cfg = Config.from_dict(read_config_file(cfg_path), str(cfg_path))
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{meta_path}: not valid JSON ({e}); `dsmpnn train` writes it, restore it from "
                                  "a copy or train again") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("path"), str) or "manifest" not in meta:
            raise CheckpointError(f"{meta_path}: expected an object with 'path' (the dataset directory) and "
                                  "'manifest'")
        return cfg, Path(meta["path"]), Manifest.from_json(meta["manifest"], meta_path)


@dataclass
class LoadedRun:
    cfg: Config
    data_dir: Path
    fmap: FeatureMap
    model: nn.Module
    epoch: int


def load_run(run_dir: str | Path, device: torch.device | str = "cpu") -> LoadedRun:
    """Rebuild the trained model from the newest readable checkpoint of a run directory."""
    rd = RunDir(Path(run_dir))
    cfg, data_dir, manifest = rd.read_meta()
    fmap = FeatureMap(manifest, cfg.model.use_pos)
    state, path = load_checkpoint(rd.checkpoints)
    model = build_model(cfg.model, fmap).to(getattr(torch, cfg.train.dtype))
    load_state(model, state, "model", path, str(rd.root / "config.yaml"))
    return LoadedRun(cfg, data_dir, fmap, model.to(device), int(state["epoch"]))
