"""Configuration, training loop, evaluation and prediction, checkpoints, logging and plots."""

from dsmpnn.train.config import Config, load_config
from dsmpnn.train.evaluate import evaluate_run, predict_file
from dsmpnn.train.rundir import load_run
from dsmpnn.train.trainer import train

__all__ = ["Config", "evaluate_run", "load_config", "load_run", "predict_file", "train"]
