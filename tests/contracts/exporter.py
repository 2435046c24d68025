"""Contract every registered exporter satisfies; subclass :class:`ExporterContract` to run it.

Parametrised over ``EXPORTERS.names()``, so a newly registered exporter is tested
automatically: ``check`` then ``fix`` then ``render`` then parse the written text back.
``fix`` never lowers a unit's code bits and leaves nothing for ``check`` to report; ``render``
refuses a plan ``check`` rejects; the file content parses back (by the exporter's ``suffix``)
to what ``render`` returned. The plans are random over a Llama-like space without a model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from bitalloc import QuantFormat, SearchSpace, Solution, Status, Unit
from bitalloc.backends.export import EXPORTERS, ExportViolations
from bitalloc.backends.export.base import Exporter

LAYER = (  # (suffix, out, in) of a Llama block with hidden h and MLP width m
    ("self_attn.q_proj", "h", "h"),
    ("self_attn.k_proj", "kv", "h"),
    ("self_attn.v_proj", "kv", "h"),
    ("self_attn.o_proj", "h", "h"),
    ("mlp.gate_proj", "m", "h"),
    ("mlp.up_proj", "m", "h"),
    ("mlp.down_proj", "h", "m"),
)
FORMATS = (
    "int2-g64",
    "int3-g64",
    "int4-g64",
    "int4-g64-sym",
    "int4-g128-sym",
    "int5-g64",
    "int6-g64",
    "int7-g64",
    "int8-pc-sym",
    "int4-g32-sym",
    "int3-g64-sym",
    "int4-g64-s2:4",
    "int4-g256-sym",
    "bf16",
)


def llama_space(layers: int = 2, h: int = 256, m: int = 512, kv: int = 128) -> SearchSpace:
    """A Llama-like space (no model): every format its shape supports, no ties."""
    dims = {"h": h, "m": m, "kv": kv}
    fmts = tuple(QuantFormat.parse(k) for k in FORMATS)
    units = []
    for i in range(layers):
        for suffix, out, inp in LAYER:
            shape = (dims[out], dims[inp])
            allowed = tuple(f.key for f in fmts if f.supports(shape))
            units.append(Unit(f"model.layers.{i}.{suffix}", shape, allowed))
    return SearchSpace(units=tuple(units), formats=fmts)


def _text_lines(text: str) -> list[tuple[str, str]]:
    """``pattern=type`` lines (a tensor-type file): each pattern must compile."""
    out = []
    for line in text.splitlines():
        pattern, sep, kind = line.rpartition("=")
        assert sep and pattern and kind, f"not a pattern=type line: {line!r}"
        re.compile(pattern)
        out.append((pattern, kind))
    return out


def _yaml(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


PARSERS: dict[str, Callable[[str], Any]] = {
    ".json": json.loads,
    ".yaml": _yaml,
    ".txt": _text_lines,
}
"""How the contract reads an exporter's file back, by its ``suffix``."""


def random_plans(space: SearchSpace, n: int, seed: int) -> list[Solution]:
    rng = np.random.default_rng(seed)
    return [
        Solution(
            space=space,
            choice=tuple(str(rng.choice(u.allowed)) for u in space.units),
            status=Status.FEASIBLE,
        )
        for _ in range(n)
    ]


class ExporterContract:
    """Properties every registered exporter must have."""

    @pytest.fixture(params=sorted(EXPORTERS.names()))
    def target(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    def make(self, target: str) -> Any:
        return EXPORTERS.get(target)

    def test_protocol(self, target: str) -> None:
        exp = self.make(target)
        assert isinstance(exp, Exporter) and type(exp).name == target
        assert type(exp).suffix in PARSERS, f"no parser for suffix {type(exp).suffix!r}"

    def test_check_fix_render_parse_back(self, target: str) -> None:
        exp = self.make(target)
        space = llama_space(layers=3)
        for sol in random_plans(space, 6, seed=0):
            fixed = exp.fix(sol)
            assert exp.check(fixed) == [], target
            assert fixed.space.names == sol.space.names
            for u, old, new in zip(space.units, sol.choice, fixed.choice):
                # code bits (a symmetric target may store fewer bytes: no zero points)
                assert QuantFormat.parse(new).bits >= QuantFormat.parse(old).bits, (u.name, new)
            rendered = exp.render(fixed)
            parsed = PARSERS[type(exp).suffix](exp.serialize(rendered))
            if isinstance(rendered, dict):
                assert parsed == rendered
            else:
                assert parsed == _text_lines(rendered) and parsed

    def test_fix_is_idempotent_and_keeps_clean_plans(self, target: str) -> None:
        exp = self.make(target)
        for sol in random_plans(llama_space(), 4, seed=1):
            fixed = exp.fix(sol)
            assert exp.fix(fixed).choice == fixed.choice
            if not exp.check(sol):
                assert fixed.choice == sol.choice

    def test_render_refuses_what_check_rejects(self, target: str) -> None:
        exp = self.make(target)
        rejected = [s for s in random_plans(llama_space(), 8, seed=2) if exp.check(s)]
        assert rejected, "no random plan breaks a rule; the check is not exercised"
        for sol in rejected:
            with pytest.raises(ExportViolations):
                exp.render(sol)

    def test_sparse_formats_are_refused(self, target: str) -> None:
        space = llama_space()
        choice = tuple(
            "int4-g64-s2:4" if u.name.endswith("mlp.down_proj") else "int4-g64-sym"
            for u in space.units
        )
        sol = Solution(space=space, choice=choice, status=Status.FEASIBLE)
        bad = [v for v in self.make(target).check(sol) if v.rule == "sparsity"]
        assert {v.unit for v in bad} == {
            "model.layers.0.mlp.down_proj",
            "model.layers.1.mlp.down_proj",
        }
