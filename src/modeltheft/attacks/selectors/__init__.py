"""Selectors: how the next queries are chosen from a source, registered by name.

``random`` takes the source's rows as they come, ``active`` the most uncertain and most
diverse candidates of a pool (ActiveThief), ``jacobian`` grows seed rows along the
substitute's gradient (Papernot et al.). Knockoff's gradient bandit stays inside the
``natural-patches`` recipe: its arms are clusters of that fixed patch pool.
"""

from modeltheft.attacks.selectors.active import ActiveSelection
from modeltheft.attacks.selectors.jacobian import JacobianAugmentation
from modeltheft.attacks.selectors.random import RandomSelection
from modeltheft.registry import Registry

SELECTORS: Registry = Registry("selector")
for _selector in (RandomSelection, ActiveSelection, JacobianAugmentation):
    SELECTORS.register(_selector)

__all__ = ["SELECTORS", "ActiveSelection", "JacobianAugmentation", "RandomSelection"]
