"""The training loop (one, shared by every gradient strategy) and checkpoints."""

from raynas.train.checkpoint import load_checkpoint, save_checkpoint
from raynas.train.loop import evaluate, search_epoch
from raynas.train.search import SupernetSearch

__all__ = ["SupernetSearch", "evaluate", "load_checkpoint", "save_checkpoint", "search_epoch"]
