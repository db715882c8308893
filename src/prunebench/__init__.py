"""prunebench: reproducible benchmark of neural-network pruning methods.

The Python API (`prunebench.api`) is loaded on first use, so `import prunebench` stays light:
`prunebench.prune(model, method, ...)`, `prunebench.measure(model, example_inputs)`,
`prunebench.load_run(path)` and their `PruneResult`.
"""
__version__ = "0.1.0"

_API = ("PruneResult", "load_run", "measure", "prune")


def __getattr__(name: str):
    if name in _API:
        from prunebench import api

        return getattr(api, name)
    raise AttributeError(f"module 'prunebench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])


__all__ = ["__version__", *_API]
