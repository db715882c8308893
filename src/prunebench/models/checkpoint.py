"""Pretrained weights: a study's `model.checkpoint: {path, sha256}`, verified, then loaded.

The file's SHA-256 is checked before anything is unpickled, and loading uses
`torch.load(weights_only=True)`, so a checkpoint can neither be swapped silently nor run
code. A plain state dict, or one under a `state_dict` or `model` key (how most training
scripts save), is accepted; every parameter and buffer of the model must be in it, with its
shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from prunebench.errors import ConfigError
from prunebench.io import file_sha256

KEY = "model.checkpoint"


def load_pretrained(model: nn.Module, path: str | Path, sha256: str) -> nn.Module:
    """Load the checkpoint at `path` into `model` (in place) after checking its SHA-256."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{KEY}.path {str(path)!r} not found")
    actual = file_sha256(path)
    if actual != sha256:
        raise ConfigError(f"{KEY}.path {str(path)!r} has SHA-256 {actual}, but "
                          f"{KEY}.sha256 is {sha256}: not the file the study names")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 (a damaged or foreign file)
        raise ConfigError(f"{KEY}.path {str(path)!r} is not a state dict torch can load with "
                          f"weights_only=True: {type(err).__name__}: {err}") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping):
        raise ConfigError(f"{KEY}.path {str(path)!r} holds {type(state).__name__}, not a "
                          "state dict")
    expected = model.state_dict()
    # BatchNorm's step counter is optional (torch's own load_state_dict accepts it missing).
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        parts = [f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected),
                                     ("shape differs", wrong)) if keys]
        raise ConfigError(f"{KEY}.path {str(path)!r} does not fit the model ({'; '.join(parts)})")
    model.load_state_dict(state, strict=False)  # every other key was checked above
    return model
