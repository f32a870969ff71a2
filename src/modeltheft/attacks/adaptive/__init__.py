"""Adaptive attacks: thieves that know the defenses (Tramèr et al., NeurIPS 2020).

Key rotation (:mod:`.keys`), an in-distribution query source (:mod:`.in_distribution`,
registered as the ``in-distribution`` source and recipe), twin probing (:mod:`.twins`), a
canary for a flagged key (:mod:`.canary`), PRADA replay (:mod:`.prada_replay`), a
``/metrics`` reader (:mod:`.metrics`), and the :class:`Thief` that composes them.
"""

from modeltheft.attacks.adaptive.canary import Canary
from modeltheft.attacks.adaptive.in_distribution import InDistribution
from modeltheft.attacks.adaptive.keys import RotatingOracle, http_keys, local_keys
from modeltheft.attacks.adaptive.metrics import MetricsReader, MetricsSnapshot
from modeltheft.attacks.adaptive.prada_replay import PradaReplay
from modeltheft.attacks.adaptive.thief import Thief, ThiefRun, describe
from modeltheft.attacks.adaptive.twins import TwinFilter, twin, twins

__all__ = [
    "Canary",
    "InDistribution",
    "MetricsReader",
    "MetricsSnapshot",
    "PradaReplay",
    "RotatingOracle",
    "Thief",
    "ThiefRun",
    "TwinFilter",
    "describe",
    "http_keys",
    "local_keys",
    "twin",
    "twins",
]
