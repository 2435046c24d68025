"""KL fitness of a plan by swapping precomputed variants into the model (EvoPress).

EvoPress (Sieberling et al., ICML 2025, arXiv 2410.14649; algorithms.md section 1.2) scores a
configuration by ``KL = (1/P) * sum_t KL(p_ref(.|x_<=t) || p_plan(.|x_<=t))`` over calibration
positions ``t``, against reference logits computed once, with the compressed layers swapped in
from its database (here :class:`~bitalloc.backends.variants.VariantCache`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..nn.logits import RefRow, kl_rows, output_logits, reference_row
from ..nn.modes import eval_mode
from ..search.space import SearchSpace
from .variants import VariantCache

if TYPE_CHECKING:
    import torch
    from torch import nn

Piece = tuple[int, int, int, int]
"""Part of a calibration batch: ``(batch index, first row, stop row, columns)``."""


class KLEvaluator:
    """Mean per-token ``KL(reference || plan)`` on calibration tokens (an ``Evaluator``).

    ``evaluator(plan, tokens=n)`` swaps each unit's cached variant (:class:`VariantCache`)
    into the model, runs the calibration batches on their first ``n`` token positions (whole
    sequences in order, the last one truncated to a prefix, as EvoPress's token budget; ``None``
    = all), and returns the position-weighted mean KL (nats; ``attention_mask`` weights for
    mapping batches) against reference logits computed once per piece of data with the original
    weights (:func:`bitalloc.nn.logits.kl_rows`, stable for tiny KLs). The original
    weights are put back bit-exactly after every call; inside ``with evaluator:`` they stay
    swapped between calls (only units whose format changed are copied) and are restored on
    exit.

    Args:
        model: the reference model; its weights are modified only during a call/session.
        calib: calibration batches (:class:`~bitalloc.search.calibration.Calibration` or list).
        space: the search space the plans use.
        backend: backend name or instance that builds the variants (default ``"rtn"``); the
            KL equals that of ``bitalloc.apply(model, plan, backend, calib=calib)``.
        cache_dir: keep variants as safetensors files there instead of in memory.
        replay: reuse the block outputs of recently scored plans for the blocks a plan shares
            with them (:class:`~bitalloc.backends.replay.BlockReplay`; same KL bit for bit).
        replay_plans: plans whose block outputs are kept per piece of data (each costs
            ``4 * tokens * hidden * n_blocks`` bytes).

    Memory: reference logits are float32, ``4 * tokens * vocab`` bytes for the tokens used.

    Example:
        >>> kl = KLEvaluator(model, calib, space)
        >>> with kl:
        ...     sol = bitalloc.solve(table, 3.0, "evopress", evaluate=kl)
    """

    def __init__(
        self,
        model: nn.Module,
        calib: Any,
        space: SearchSpace,
        backend: Any = "rtn",
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        replay: bool = True,
        replay_plans: int = 3,
    ) -> None:
        from ..search.calibration import as_calibration
        from .replay import BlockReplay

        if not isinstance(replay, bool):
            raise TypeError(f"`replay` must be a bool, got {replay!r}")
        self.model, self.calib = model, as_calibration(calib)
        self.variants = VariantCache(
            model, space, backend=backend, calib=self.calib, cache_dir=cache_dir
        )
        self.replay = BlockReplay(model, space, replay_plans) if replay else None
        self.space = space
        self._installed: list[str | None] = [None] * len(space)  # None = original weight
        self._refs: dict[Piece, RefRow] = {}
        self._depth = 0
        self.calls = 0

    def __call__(self, solution: Any, *, tokens: int | None = None) -> float:
        import torch

        choice = self._check(solution)
        pieces = self.pieces(tokens)
        self.calls += 1
        num = den = 0.0
        try:
            with torch.no_grad(), eval_mode(self.model):
                missing = [p for p in pieces if p not in self._refs]
                unbuilt = [i for i, k in enumerate(choice) if not self.variants.has(i, k)]
                if missing or unbuilt:  # both need the original weights in place
                    self._install([None] * len(self.space))
                    for p in missing:
                        self._refs[p] = self._reference(p)
                    for i in unbuilt:
                        self.variants.get(i, choice[i])
                self._install(list(choice))
                for p in pieces:
                    z_ref, lse, pos_w = self._refs[p]
                    if self.replay is not None and self.replay.enabled:
                        logits = self.replay.run(p, choice, lambda p=p: self._logits(p))
                    else:
                        logits = self._logits(p)
                    kl = kl_rows(z_ref, lse, logits)
                    num += float((kl * pos_w.double()).sum())
                    den += float(pos_w.double().sum())
        finally:
            if self._depth == 0:
                self.restore()
        return num / max(den, 1e-30)

    def pieces(self, tokens: int | None) -> list[Piece]:
        """The calibration pieces holding the first ``tokens`` positions."""
        if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int)):
            raise ValueError(f"`tokens` must be an int >= 1 or None, got {tokens!r}")
        if tokens is not None and tokens < 1:
            raise ValueError(f"`tokens` must be an int >= 1 or None, got {tokens!r}")
        left = tokens
        out: list[Piece] = []
        for b, batch in enumerate(self.calib.batches):
            rows, cols = _ids(batch).shape[0], _ids(batch).shape[-1]
            if left is None or left >= rows * cols:
                out.append((b, 0, rows, cols))
                left = None if left is None else left - rows * cols
                if left == 0:
                    break
                continue
            full, rest = divmod(left, cols)
            if full:
                out.append((b, 0, full, cols))
            if rest:
                out.append((b, full, full + 1, rest))
            break
        return out

    def restore(self) -> None:
        """Put every original weight back (bit-exact)."""
        import torch

        with torch.no_grad():
            self._install([None] * len(self.space))

    def __enter__(self) -> KLEvaluator:
        self._depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.restore()

    # ------------------------------------------------------------------ internals
    def _check(self, solution: Any) -> tuple[str, ...]:
        from ..search.solution import Solution

        if not isinstance(solution, Solution):
            raise TypeError(f"`solution` must be a Solution, got {type(solution).__name__}")
        if not solution.success:
            raise ValueError(f"cannot evaluate a plan with status {solution.status.value}")
        if [u.name for u in solution.space.units] != [u.name for u in self.space.units]:
            raise ValueError("`solution` is for another search space than this evaluator's")
        return solution.choice

    def _install(self, keys: list[str | None]) -> None:
        for i, key in enumerate(keys):
            if key != self._installed[i]:
                src = self.variants.originals[i] if key is None else self.variants.get(i, key)
                self.variants.view(i).copy_(src)
                self._installed[i] = key

    def _batch(self, piece: Piece) -> Any:
        b, r0, r1, cols = piece
        batch = self.calib.batches[b]
        ids = _ids(batch)
        if (r0, r1, cols) == (0, ids.shape[0], ids.shape[-1]):
            return batch
        if not isinstance(batch, Mapping):
            return batch[r0:r1, :cols]
        return {k: _cut(v, ids.shape, r0, r1, cols) for k, v in batch.items()}

    def _logits(self, piece: Piece) -> torch.Tensor:
        return output_logits(self.calib.forward(self.model, self._batch(piece)))

    def _reference(self, piece: Piece) -> RefRow:
        return reference_row(
            self._batch(piece), self._logits(piece), f"calibration batch {piece[0]}"
        )


def _ids(batch: Any) -> torch.Tensor:
    return batch["input_ids"] if isinstance(batch, Mapping) else batch


def _cut(v: Any, shape: tuple[int, ...], r0: int, r1: int, cols: int) -> Any:
    """Rows ``r0:r1`` (and the first ``cols`` columns when ``v`` is ``[rows, cols, ...]``)."""
    import torch

    if not isinstance(v, torch.Tensor) or v.dim() == 0 or v.shape[0] != shape[0]:
        return v
    if v.dim() >= 2 and v.shape[1] == shape[-1]:
        return v[r0:r1, :cols]
    return v[r0:r1]
