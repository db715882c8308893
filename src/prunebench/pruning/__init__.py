"""Pruning core: masks, scopes and the method registry (unstructured and structured).

Importing this package registers every method; a new method is one module plus one import
line here.
"""

from prunebench.pruning import lottery, magnitude, random_pruning  # noqa: F401  (registers methods)
from prunebench.pruning import channels  # noqa: F401  (registers methods)
from prunebench.pruning import gradual  # noqa: F401  (registers methods)
from prunebench.pruning import grasp  # noqa: F401  (registers methods)
from prunebench.pruning import nm  # noqa: F401  (registers methods)
from prunebench.pruning import sensitivity  # noqa: F401  (registers methods)
from prunebench.pruning import snip  # noqa: F401  (registers methods)
from prunebench.pruning import synflow  # noqa: F401  (registers methods)
from prunebench.pruning import wanda  # noqa: F401  (registers methods)
from prunebench.pruning.base import (
    METHODS,
    PruneContext,
    PruningMethod,
    register_method,
)
from prunebench.pruning.mask import (
    Mask,
    apply_mask,
    global_topk_mask,
    layerwise_topk_mask,
    load_mask,
    masked_nonzero,
    ones_mask,
    save_mask,
    sparsity_report,
)
from prunebench.pruning.scope import Scope

__all__ = [
    "METHODS",
    "Mask",
    "PruneContext",
    "PruningMethod",
    "Scope",
    "apply_mask",
    "global_topk_mask",
    "layerwise_topk_mask",
    "load_mask",
    "masked_nonzero",
    "ones_mask",
    "register_method",
    "save_mask",
    "sparsity_report",
]
