"""`CombinedLoader`: several loaders iterated together, as Lightning's (modes `max_size_cycle`,
`max_size`, `min_size`, `sequential`). Training with a list or dict of loaders uses
`max_size_cycle`: each batch is a list or dict with one batch per loader, shorter loaders restart.
Collections may nest (a dict of lists of loaders): every loader is a leaf and each batch keeps
the collection's shape, as Lightning's."""

from __future__ import annotations

import itertools
from typing import Any, Dict, Iterator, List, Union

from torch.utils._pytree import tree_flatten, tree_unflatten

from ferrotrain.errors import MisconfigurationException

MODES = ("max_size_cycle", "max_size", "min_size", "sequential")


def _is_iterable_leaf(node: Any) -> bool:
    """A list of plain values (`[1, 2, 3]`) is one iterable, not a collection of them."""
    if isinstance(node, dict):
        children = list(node.values())
    elif isinstance(node, (list, tuple)):
        children = list(node)
    else:
        return True
    return bool(children) and all(isinstance(c, (int, float, str)) for c in children)


class CombinedLoader:
    def __init__(self, iterables: Union[List[Any], Dict[str, Any], tuple], mode: str = "max_size_cycle") -> None:
        if mode not in MODES:
            raise MisconfigurationException(f"`CombinedLoader(mode={mode!r})` must be one of {MODES}")
        if not isinstance(iterables, (list, tuple, dict)):
            raise MisconfigurationException("`CombinedLoader` takes a list, tuple or dict of iterables")
        self.iterables = iterables
        self.mode = mode
        leaves, self._spec = tree_flatten(iterables, is_leaf=_is_iterable_leaf)
        self.flattened: List[Any] = leaves

    def _lengths(self) -> List[float]:
        out = []
        for it in self.flattened:
            try:
                out.append(len(it))
            except TypeError:
                out.append(float("inf"))
        return out

    def __len__(self) -> int:
        lengths = self._lengths()
        if self.mode == "min_size":
            n = min(lengths) if lengths else 0
        elif self.mode == "sequential":
            n = sum(lengths)
        else:
            n = max(lengths) if lengths else 0
        if n == float("inf"):
            raise TypeError("CombinedLoader over iterables without a length has no length")
        return int(n)

    def _pack(self, items: List[Any]) -> Any:
        return tree_unflatten(list(items), self._spec)

    def __iter__(self) -> Iterator[Any]:
        if self.mode == "sequential":
            return itertools.chain.from_iterable(self.flattened)
        if self.mode == "min_size":
            return (self._pack(list(b)) for b in zip(*self.flattened))
        if self.mode == "max_size":
            sentinel = object()
            return (self._pack([None if x is sentinel else x for x in b])
                    for b in itertools.zip_longest(*self.flattened, fillvalue=sentinel))
        return self._cycle()

    def _cycle(self) -> Iterator[Any]:
        lengths = self._lengths()
        total = max(lengths) if lengths else 0
        iters = [iter(it) for it in self.flattened]
        done = [False] * len(iters)
        count = 0
        while count < total:
            batch = []
            for i, it in enumerate(iters):
                try:
                    batch.append(next(it))
                except StopIteration:
                    done[i] = True
                    if all(done):
                        return
                    iters[i] = iter(self.flattened[i])
                    batch.append(next(iters[i]))
            yield self._pack(batch)
            count += 1
