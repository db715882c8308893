"""CLI subcommands of the analysis stage (aggregate, plot, report)."""

COMMANDS: tuple[str, ...] = ()


def add_subcommands(sub) -> None:
    """Add the analysis subcommands to the `prunebench` parser."""


def run_analysis(args) -> None:
    raise NotImplementedError(args.command)
