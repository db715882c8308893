"""Which runs of a stage train together as one stack, decided by the plan.

A stage says which of its runs could share a stack (`Stage.stack_recipe`: the recipe the run
trains with, or None when it must train alone). The runs of one method label, stage and
recipe (a method's seeds x sparsities) are ordered by seed (members of one seed share each
input batch), then split into equal stacks of at most `stack.max_members`, fewer where the
study's `stack.memory_mb` would not hold them. Nothing here depends on what is already on
disk, so the same params always give the same stacks: a stack's members agree with runs
trained alone only to float rounding (batched kernels sum in another order), and a fixed
membership is what keeps a rerun bit-identical. Stacks never mix methods, so adding or
editing one method neither reruns nor changes another method's runs; nor do they mix a
ticket with a control (`RunSpec.control`), so asking for a rewind run's control leaves its
stack as it was.

The workflow keeps one job per grid point. A stack's first run is its leader: the leader's
job waits for every member's parents and trains the stack; each other member's job waits for
the leader's and finds its run finished (`Executor.ensure_stack`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path

from prunebench.config import TrainConfig, config_hash
from prunebench.context import StudyContext
from prunebench.runs import Arch, Run


@functools.lru_cache(maxsize=64)
def _capacity(arch: Arch, recipe: TrainConfig, memory_mb: int) -> int:
    """How many members of `arch` one stack may hold (0: the architecture or recipe does not
    stack at all)."""
    from prunebench.training.stacked import stack_refusal, stack_size

    model = arch.build()
    if stack_refusal([model], recipe) is not None:
        return 0
    return stack_size(model, recipe.batch_size, memory_mb * 2**20,
                      input_shape=arch.input_shape, recipe=recipe)


def split_evenly(members: Sequence[Run], size: int) -> list[list[Run]]:
    """`members` in order, as the fewest parts of at most `size`, their sizes differing by at
    most one (18 runs at size 8: 6 + 6 + 6, not 8 + 8 + 2)."""
    parts = math.ceil(len(members) / size)
    base, extra = divmod(len(members), parts)
    out, start = [], 0
    for i in range(parts):
        n = base + (1 if i < extra else 0)
        out.append(list(members[start:start + n]))
        start += n
    return out


def stacks(stage, ctx: StudyContext, runs: Sequence[Run]) -> dict[Path, tuple[Run, ...]]:
    """Every run of `runs` that trains in a stack of two or more, mapped to its stack (the
    leader first). Runs not in the mapping train alone."""
    cfg = ctx.study.stack
    if cfg.max_members < 2:
        return {}
    groups: dict[tuple, tuple[TrainConfig, list[Run]]] = {}
    for run in runs:
        recipe = stage.stack_recipe(ctx, run)
        if recipe is not None:
            # Runs that a stage makes in one job (`job_key`) stack only with each other, and
            # runs asked for a budget only with each other: adding budgets to a study leaves
            # the stacks, and so the bits, of its sparsity runs as they were.
            key = (run.label, run.spec.control, stage.job_key(run), config_hash(recipe),
                   run.spec.budget is not None)
            groups.setdefault(key, (recipe, []))[1].append(run)
    arch = ctx.dense_arch
    out: dict[Path, tuple[Run, ...]] = {}
    for recipe, members in groups.values():
        size = min(cfg.max_members, _capacity(arch, recipe, cfg.memory_mb))
        if len(members) < 2 or size < 2:
            continue
        members = sorted(members, key=lambda r: r.spec.seed)  # stable: stage order per seed
        for part in split_evenly(members, size):
            if len(part) > 1:
                out.update({r.path: tuple(part) for r in part})
    return out


__all__ = ["split_evenly", "stacks"]
