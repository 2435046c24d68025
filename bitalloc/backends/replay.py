"""Block replay: skip the decoder blocks a candidate plan shares with a recently scored one.

A plan changes the output of block ``k`` only if it changes a unit inside blocks ``0..k``.
:class:`BlockReplay` keeps, per piece of calibration data, the block outputs of the last few
plans it ran. For a new plan it picks the cached plan that agrees with it on the longest
prefix of blocks, returns that plan's cached outputs for the agreeing blocks (their
``forward`` is not run) and runs only the blocks from the first changed one on. The logits are
bit-for-bit those of a full forward: the skipped blocks would compute the same tensors from
the same weights and inputs. In EvoPress, every offspring differs from its parent in a few
units, so it reuses the parent's outputs up to its first changed block.

Units outside every block (embeddings, a searched ``lm_head``) make a changed plan run in full.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..search.space import SearchSpace

if TYPE_CHECKING:
    from torch import nn


@dataclass
class _Entry:
    choice: tuple[str | None, ...]
    outputs: list[Any]


@dataclass
class ReplayStats:
    """Block forwards run and skipped so far, and full forwards (no cached prefix)."""

    run: int = 0
    skipped: int = 0
    calls: int = 0
    history: list[int] = field(default_factory=list)

    @property
    def fraction_run(self) -> float:
        """Share of block forwards actually computed (1.0 = no saving)."""
        total = self.run + self.skipped
        return self.run / total if total else 1.0


class BlockReplay:
    """Cached block outputs of up to ``keep`` recent plans per piece of data.

    Args:
        model: the model; its repeated blocks are found with
            :func:`bitalloc.sensitivity._blocks.find_blocks`.
        space: the search space (unit ``i`` of a choice tuple is ``space.units[i]``).
        keep: plans remembered per piece (least recently used as a base is dropped first).
    """

    def __init__(self, model: nn.Module, space: SearchSpace, keep: int = 3) -> None:
        from ..nn.blocks import find_blocks, owning_blocks

        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"`keep` must be an int >= 1, got {keep!r}")
        found = find_blocks(model, {u.fqn for u in space.units})
        names = [name for name, _ in found]
        self.blocks = [block for _, block in found]
        owner = owning_blocks({u.name: u.fqn for u in space.units}, names)
        self.unit_block = [names.index(b) if b is not None else -1 for b in owner.values()]
        self.keep = keep
        self.stats = ReplayStats()
        self._cache: dict[Hashable, list[_Entry]] = {}

    @property
    def enabled(self) -> bool:
        return bool(self.blocks)

    def clear(self) -> None:
        """Forget every cached output (call when the weights behind a choice change)."""
        self._cache.clear()

    def first_change(self, a: tuple[str | None, ...], b: tuple[str | None, ...]) -> int:
        """Index of the first block whose output differs between choices ``a`` and ``b``
        (``len(blocks)`` when no block does; 0 when a unit outside the blocks differs)."""
        first = len(self.blocks)
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                k = self.unit_block[i]
                if k < 0:
                    return 0
                first = min(first, k)
        return first

    def run(self, piece: Hashable, choice: tuple[str | None, ...], forward: Callable[[], Any]):
        """``forward()`` with the blocks shared with a cached plan replayed; caches this
        plan's block outputs for ``piece``. Returns what ``forward`` returns."""
        entries = self._cache.setdefault(piece, [])
        base, k = None, 0
        for entry in entries:
            depth = self.first_change(entry.choice, choice)
            if depth > k:
                base, k = entry, depth
        outputs: list[Any] = [None] * len(self.blocks)
        handles, patched = [], []
        for j, block in enumerate(self.blocks):
            if base is not None and j < k:
                block.forward = _constant(base.outputs[j])  # type: ignore[method-assign]
                patched.append(block)
                outputs[j] = base.outputs[j]
            else:
                handles.append(block.register_forward_hook(_recorder(outputs, j)))
        try:
            result = forward()
        finally:
            for h in handles:
                h.remove()
            for block in patched:
                del block.forward
        if base is not None:
            entries.remove(base)
            entries.append(base)  # most recently used as a base
        entries.append(_Entry(tuple(choice), outputs))
        del entries[: max(len(entries) - self.keep, 0)]
        self.stats.calls += 1
        self.stats.skipped += k
        self.stats.run += len(self.blocks) - k
        self.stats.history.append(k)
        return result


def _constant(value: Any) -> Callable[..., Any]:
    def forward(*_args: Any, **_kwargs: Any) -> Any:
        return value

    return forward


def _recorder(outputs: list[Any], j: int) -> Callable[..., None]:
    def hook(_mod: Any, _args: Any, out: Any) -> None:
        outputs[j] = _detach(out)

    return hook


def _detach(out: Any) -> Any:
    if isinstance(out, tuple):
        return tuple(_detach(o) for o in out)
    return out.detach() if hasattr(out, "detach") else out
