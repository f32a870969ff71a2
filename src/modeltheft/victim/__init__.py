"""The "proprietary" victim model: training, safe persistence, verified loading, importing."""

from modeltheft.victim.imports import load_model
from modeltheft.victim.store import LoadedVictim, load_victim, save_victim
from modeltheft.victim.train import FAMILIES, TrainedVictim, train_victim

__all__ = [
    "FAMILIES",
    "LoadedVictim",
    "TrainedVictim",
    "load_model",
    "load_victim",
    "save_victim",
    "train_victim",
]
