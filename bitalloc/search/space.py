"""The search space: which units are searched and which formats each may take.

A :class:`Unit` is one weight tensor found by its fully qualified name (FQN) from
``model.named_modules()``. Units in the same tie group must take the same format (a fused
runtime kernel such as q/k/v or gate/up reads them as one matrix).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .formats import QuantFormat, parse_formats

if TYPE_CHECKING:
    from torch import nn

SPACE_VERSION = 1
MAX_DIM = 1 << 31  # no weight dimension is larger; also keeps numel exact in float64
EMBEDDINGS = "re:(.*\\.)?(embed|wte|wpe|embeddings)(\\..*)?"
LM_HEAD = "re:(.*\\.)?lm_head"
DEFAULT_EXCLUDE = (LM_HEAD, EMBEDDINGS)


@dataclass(frozen=True, slots=True)
class Unit:
    """One searchable weight, or one slice of output channels of a weight.

    Args:
        name: unique id; the module's FQN (``model.layers.0.self_attn.q_proj``) for a whole
            weight, ``FQN[start:stop]`` for a channel slice.
        shape: shape of the searched weight (slice), ``(out, in[, kh, kw])``.
        allowed: keys of the formats this unit may take (a subset of the space's formats).
        tie: tie-group label; units sharing a label must share a format. ``None`` = free.
        channels: ``(start, stop)`` output rows of the module's weight this unit covers;
            ``None`` = the whole weight.
        shares: FQN of the module that owns this unit's weight when the weight is tied
            (the same tensor): a causal LM's tied ``lm_head`` shares ``model.embed_tokens``'s,
            so quantizing the unit quantizes the token embedding too, and files that store the
            tensor once (GGUF ``token_embd.weight``) name it by this module. ``None`` = its own.
        embedding: the weight is a lookup table (an ``nn.Embedding``, ``[vocab, dim]``): rows
            are read by index, never multiplied, so it has no input statistics and only
            targets that store quantized embeddings (llama.cpp) take it.
    """

    name: str
    shape: tuple[int, ...]
    allowed: tuple[str, ...]
    tie: str | None = None
    channels: tuple[int, int] | None = None
    shares: str | None = None
    embedding: bool = False

    def __post_init__(self) -> None:
        shape = self.shape
        if (
            not isinstance(shape, (tuple, list))
            or not shape
            or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in shape)
            or not all(0 < d <= MAX_DIM for d in shape)
        ):
            raise ValueError(
                f"unit {self.name!r}: `shape` must be whole numbers in 1..{MAX_DIM}, got {shape!r}"
            )
        object.__setattr__(self, "shape", tuple(int(d) for d in shape))
        if self.channels is not None:
            start, stop = (int(c) for c in self.channels)
            if not 0 <= start < stop or stop - start != self.shape[0]:
                raise ValueError(
                    f"unit {self.name!r}: `channels` {self.channels} must be a (start, stop) "
                    f"slice of {self.shape[0]} rows"
                )
            object.__setattr__(self, "channels", (start, stop))

    @property
    def fqn(self) -> str:
        """FQN of the module that owns the weight."""
        return self.name if self.channels is None else self.name.rsplit("[", 1)[0]

    @property
    def tensor_fqn(self) -> str:
        """FQN of the module whose weight a checkpoint stores for this unit (:attr:`shares`
        when the weight is tied, else :attr:`fqn`)."""
        return self.shares or self.fqn

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "shape": list(self.shape),
            "allowed": list(self.allowed),
            "tie": self.tie,
        }
        if self.channels is not None:
            d["channels"] = list(self.channels)
        if self.shares is not None:
            d["shares"] = self.shares
        if self.embedding:
            d["embedding"] = True
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Unit:
        return cls(
            name=str(d["name"]),
            shape=tuple(_whole(s) for s in d["shape"]),
            allowed=tuple(str(a) for a in d["allowed"]),
            tie=d.get("tie"),
            channels=tuple(d["channels"]) if d.get("channels") is not None else None,
            shares=None if d.get("shares") is None else str(d["shares"]),
            embedding=d.get("embedding", False) is True,
        )


def _whole(x: Any) -> Any:
    """``x`` as int when it is a whole number (``64`` or ``64.0``); anything else is returned
    unchanged for :class:`Unit` to refuse (``64.7``, ``"64"``, ``1e30``)."""
    if isinstance(x, float) and x.is_integer() and abs(x) <= MAX_DIM:
        return int(x)
    return x


@dataclass(frozen=True, slots=True)
class SearchSpace:
    """Units x formats. Column ``j`` of every table/cost matrix is ``formats[j]``.

    Example:
        >>> space = SearchSpace.from_model(model, ["int2-g128", "int4-g128"], tie="auto")
        >>> space.mask.shape == (len(space), 2)
        True
    """

    units: tuple[Unit, ...]
    formats: tuple[QuantFormat, ...]

    def __post_init__(self) -> None:
        if not self.units:
            raise ValueError("the search space is empty: no unit matched `include`/`exclude`")
        names = [u.name for u in self.units]
        if len(set(names)) != len(names):
            raise ValueError("duplicate unit names in the search space")
        by_key = {f.key: f for f in self.formats}
        for u in self.units:
            bad = set(u.allowed) - set(by_key)
            if bad:
                raise ValueError(f"unit {u.name!r} allows formats {sorted(bad)} not in the space")
            for key in u.allowed:
                reason = by_key[key].unsupported_reason(u.shape)
                if reason:
                    raise ValueError(
                        f"unit {u.name!r} allows {key}, which it cannot take: {reason}"
                    )
            if not u.allowed:
                why = [r for f in self.formats if (r := f.unsupported_reason(u.shape))]
                raise ValueError(
                    f"unit {u.name!r} (shape {u.shape}) can take none of the formats "
                    f"{[f.key for f in self.formats]}; add a per-channel ('-pc') format or "
                    "exclude it" + (f" ({'; '.join(why)})" if why else "")
                )
        self._check_ties()

    def _check_ties(self) -> None:
        for label, members in self.tie_groups().items():
            common = set(self.units[members[0]].allowed)
            for i in members[1:]:
                common &= set(self.units[i].allowed)
            if not common:
                raise ValueError(f"tie group {label!r} has no format allowed for all its units")

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return len(self.units)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(u.name for u in self.units)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(f.key for f in self.formats)

    @property
    def numel(self) -> int:
        """Total number of weights over all units."""
        return sum(u.numel for u in self.units)

    @property
    def mask(self) -> np.ndarray:
        """Boolean ``[n_units, n_formats]``: True where the unit may take the format."""
        col = {k: j for j, k in enumerate(self.keys)}
        m = np.zeros((len(self.units), len(self.formats)), dtype=bool)
        for i, u in enumerate(self.units):
            m[i, [col[k] for k in u.allowed]] = True
        return m

    def nbytes_matrix(self) -> np.ndarray:
        """Exact bytes ``[n_units, n_formats]`` (int64; 0 where not allowed)."""
        mask = self.mask
        out = np.zeros(mask.shape, dtype=np.int64)
        for i, u in enumerate(self.units):
            for j, f in enumerate(self.formats):
                if mask[i, j]:
                    out[i, j] = f.nbytes(u.shape)
        return out

    def index(self, name: str) -> int:
        for i, u in enumerate(self.units):
            if u.name == name:
                return i
        raise KeyError(name)

    def tie_groups(self) -> dict[str, list[int]]:
        """Tie label -> unit indices (only labels with at least one unit)."""
        groups: dict[str, list[int]] = {}
        for i, u in enumerate(self.units):
            if u.tie is not None:
                groups.setdefault(u.tie, []).append(i)
        return groups

    def fingerprint(self) -> str:
        import hashlib
        import json

        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    # ------------------------------------------------------------------ serialization
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": SPACE_VERSION,
            "formats": list(self.keys),
            "units": [u.to_dict() for u in self.units],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SearchSpace:
        if not isinstance(d, Mapping) or "units" not in d or "formats" not in d:
            raise ValueError("search space JSON needs 'units' and 'formats'")
        return cls(
            units=tuple(Unit.from_dict(u) for u in d["units"]), formats=parse_formats(d["formats"])
        )

    # ------------------------------------------------------------------ discovery
    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        formats: Sequence[str | QuantFormat] | str | None = None,
        *,
        include: Sequence[str] | str = (),
        exclude: Sequence[str] | str | None = None,
        tie: Sequence[str] | str | None = None,
        channel_group: int | None = None,
        example_input: Any = None,
        backend: Any = None,
        target: Any = None,
        lm_head: bool = False,
        embeddings: bool = False,
    ) -> SearchSpace:
        """Discover the units of ``model`` (every ``nn.Linear`` and ``nn.Conv{1,2,3}d``; with
        ``embeddings``, every ``nn.Embedding`` too).

        Args:
            model: the network; units are named by ``model.named_modules()``.
            formats: format keys or :class:`QuantFormat`; each unit allows those its shape
                supports (``in_features % group_size == 0``, and ``in_features % M == 0`` for
                N:M sparse formats; see :meth:`QuantFormat.unsupported_reason`).
            include: patterns a unit must match (any); empty = all. ``"re:..."`` is a regex
                (full match), anything else a glob such as ``"*.mlp.*"``.
            exclude: patterns to drop; ``None`` = embeddings and ``lm_head``.
            tie: ``"auto"`` (units that read the same input tensor in one forward pass share a
                format; see :mod:`bitalloc.search.ties`) or regex patterns whose first capture
                group is the tie key, e.g. ``r"re:(.*)\\.(q|k|v)_proj"``.
            channel_group: split every weight into units of this many output channels
                (``FQN[start:stop]``; the last slice takes the remainder), for per-channel
                allocation across layers (MixLLM). Cannot be combined with ``tie``.
            example_input: a batch for the ``tie="auto"`` forward pass (default: 8 random
                token ids when the model has ``config.vocab_size``).
            backend: a backend instance; each unit keeps only the formats it can build
                (:meth:`for_backend`; e.g. ``gptq`` builds 2-D weights only).
            target: ``"llama.cpp"`` or ``"compressed-tensors"``
                (:data:`bitalloc.search.targets.TARGETS`): ``formats`` defaults to the target's
                menu and must be formats it stores; each unit keeps those its rows can hold
                (llama.cpp K-quants need rows that are a multiple of 256). Targets that fuse
                q/k/v and gate/up default to ``tie="auto"``.
            lm_head: search the output projection too (the default ``exclude`` without
                ``lm_head``). When its weight is tied to the token embedding, as in SmolLM2,
                the unit is that one tensor (:attr:`Unit.shares`): its format is the
                embedding's too, and a GGUF stores it once as ``token_embd.weight``.
            embeddings: search the token (and position) embedding tables, ``nn.Embedding``
                modules whose weight no ``nn.Linear`` shares (:attr:`Unit.embedding`; a tied
                one is the ``lm_head`` unit). Their rows are quantized along the embedding
                dimension, as llama.cpp stores ``token_embd.weight``. Only targets that store
                quantized embeddings take them (llama.cpp).
        """
        from .discovery import discover

        for arg, value in (("lm_head", lm_head), ("embeddings", embeddings)):
            if not isinstance(value, bool):
                raise TypeError(f"`{arg}` must be a bool, got {value!r}")
        if lm_head or embeddings:
            if exclude is not None:
                flag = "lm_head" if lm_head else "embeddings"
                raise ValueError(
                    f"`{flag}=True` replaces the default `exclude` (embeddings and lm_head); "
                    f"pass `exclude` or `{flag}`, not both"
                )
            exclude = tuple(
                p for p, keep in ((LM_HEAD, lm_head), (EMBEDDINGS, embeddings)) if not keep
            )

        t = None
        if target is not None:
            from .targets import get_target

            t = get_target(target)
            formats = t.menu(formats)
            if t.fused and tie is None and channel_group is None:
                tie = "auto"
        elif formats is None:
            raise ValueError("`formats` is required without a `target`, e.g. ['int4-g128']")
        units = discover(
            model,
            parse_formats(formats),
            include=include,
            exclude=exclude,
            tie=tie,
            channel_group=channel_group,
            example_input=example_input,
            embeddings=embeddings,
        )
        tables = [u for u in units if u.embedding]
        if t is not None and tables and not t.embeddings:
            raise ValueError(
                f"target {t.name!r} stores no quantized embedding ({tables[0].fqn}); "
                "search it without `embeddings`"
            )
        tied = [u for u in units if u.shares is not None]
        if t is not None and tied and not t.tied:
            raise ValueError(
                f"target {t.name!r} would quantize {tied[0].fqn} apart from "
                f"{tied[0].shares}, whose weight it shares (tied); search it without `lm_head`"
            )
        space = cls(units=units, formats=parse_formats(formats))
        return space if backend is None else space.for_backend(backend)

    def for_backend(self, backend: Any) -> SearchSpace:
        """This space with each unit's formats cut to those ``backend`` can build
        (``backend.supports(unit, fmt)``, e.g. a backend instance from
        ``bitalloc.backends.BACKENDS``). ValueError naming the first unit left with none."""
        import dataclasses

        by_key = {f.key: f for f in self.formats}
        units = []
        for u in self.units:
            allowed = tuple(k for k in u.allowed if backend.supports(u, by_key[k]))
            if not allowed:
                raise ValueError(
                    f"backend {getattr(backend, 'name', type(backend).__name__)!r} cannot build "
                    f"unit {u.name!r} (shape {u.shape}) in any of {list(u.allowed)}; exclude "
                    "it or use another backend"
                )
            units.append(u if allowed == u.allowed else dataclasses.replace(u, allowed=allowed))
        return (
            self
            if units == list(self.units)
            else SearchSpace(units=tuple(units), formats=self.formats)
        )

    def restrict(self, names: Iterable[str]) -> SearchSpace:
        """A sub-space with only ``names`` (order kept)."""
        keep = set(names)
        return SearchSpace(
            units=tuple(u for u in self.units if u.name in keep), formats=self.formats
        )
