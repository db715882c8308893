"""`Registry`: the one name -> entry table behind every pluggable kind of thing.

Three registries use it, each named by the config key that selects from it:

- `prunebench.models.MODELS` (key `model.name`): model factories, `@register_model("name")`;
- `prunebench.data.DATASETS` (key `data.name`): `Dataset` entries, `register_dataset(entry)`;
- `prunebench.pruning.METHODS` (key `method`): `PruningMethod` entries, `@register_method(...)`.

Adding a model, a dataset or a method is one registration; nothing else lists the names.
An entry registered while a plugin is imported (`prunebench.plugins`) remembers that plugin
(`origin(name)`), so the runs that use it are named by the plugin's content too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, Generic, TypeVar

from prunebench.errors import ConfigError

T = TypeVar("T")

_ORIGIN: ContextVar[Any] = ContextVar("prunebench_registry_origin", default=None)


@contextlib.contextmanager
def registering_from(origin: Any) -> Iterator[None]:
    """Entries registered inside the block record `origin` (a plugin) as where they come
    from; entries registered outside any such block are the package's own (origin None)."""
    token = _ORIGIN.set(origin)
    try:
        yield
    finally:
        _ORIGIN.reset(token)


class Registry(Generic[T]):
    """Maps names to entries of one kind, and names the config key when a lookup fails.

    `kind` ("model") and `key` ("model.name") only word the errors. Names come back sorted
    unless `sort=False`, which keeps registration order (datasets list smallest first).

    - `register(name, entry)` adds an entry and returns it; a name registered twice raises
      ValueError (two plug-ins claiming one name is a programming error, not a config one);
    - `decorator(name)` is `register` as a decorator, returning the decorated object;
    - `get(name)` returns the entry; an unknown name raises ConfigError naming the key and
      the allowed names, so every config mistake reads the same;
    - `names()`, `items()`, `in`, `len()` and iteration (over names) read it like a mapping.

    The entries live in the dict `_items`; tests swap in a copy to register temporary ones.
    """

    def __init__(self, kind: str, key: str, *, sort: bool = True):
        self.kind = kind
        self.key = key
        self.sort = sort
        self._items: dict[str, T] = {}
        self._origins: dict[str, Any] = {}

    def register(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = item
        origin = _ORIGIN.get()
        if origin is not None:
            self._origins[name] = origin
        return item

    def unregister_from(self, origin: Any) -> list[str]:
        """Remove the entries `origin` registered (a plugin that failed half-way)."""
        names = [name for name, o in self._origins.items() if o is origin]
        for name in names:
            del self._items[name], self._origins[name]
        return names

    def origin(self, name: str) -> Any:
        """The plugin that registered `name`, or None for the package's own entries."""
        return self._origins.get(name)

    def decorator(self, name: str) -> Callable[[T], T]:
        return lambda item: self.register(name, item)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name from a config file
            raise ConfigError(
                f"unknown {self.kind} {name!r} (key {self.key}); allowed: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items) if self.sort else list(self._items)

    def items(self) -> list[tuple[str, T]]:
        return [(name, self._items[name]) for name in self.names()]

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._items
        except TypeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, key {self.key!r}: {', '.join(self.names())})"
