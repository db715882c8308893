"""The one place a run's display name is composed: its method label, plus how it was
recovered and which control it is. Job names (`prunebench.plan`), tables, legends and
headline files use it; nothing parses a name back (the parts are their own fields and
columns). Imports nothing, so the planner and the analysis can both use it cheaply."""

from __future__ import annotations

DISTILL_SUFFIX = "+distill"
REWIND_SUFFIX = "+rewind"
REINIT_SUFFIX = "_reinit"


def series_name(label: str, recovery: str | None = None, control: str | None = None) -> str:
    """`mag`, `mag+distill` (recovered by distillation), `mag+rewind` (its mask rewound and
    retrained), `lottery_reinit` and `mag+rewind_reinit` (the random-reinitialisation
    controls of a lottery ticket and of a rewind run)."""
    name = str(label)
    if recovery == "distill":
        name += DISTILL_SUFFIX
    elif recovery == "rewind":
        name += REWIND_SUFFIX
    if control == "reinit":
        name += REINIT_SUFFIX
    return name


__all__ = ["series_name"]
