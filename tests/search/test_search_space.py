"""SearchSpace: JSON round trip, validation, discovery with include/exclude/tie, auto ties."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from bitalloc.search.formats import parse_formats
from bitalloc.search.space import SearchSpace, Unit

FORMATS = ["int4-g32", "int8-pc"]


def toy_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.ModuleDict(
        {
            "embed": nn.Embedding(10, 64),
            "attn": nn.ModuleDict(
                {
                    "q": nn.Linear(64, 64),
                    "k": nn.Linear(64, 32),
                    "v": nn.Linear(64, 32),
                    "o": nn.Linear(64, 64),
                }
            ),
            "mlp": nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64)),
            "conv": nn.Conv2d(4, 8, 3),
            "lm_head": nn.Linear(64, 10),
        }
    )


def test_discovery_defaults() -> None:
    space = SearchSpace.from_model(toy_model(), FORMATS)
    assert space.names == ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.0", "mlp.2", "conv")
    assert space.units[1].shape == (32, 64)
    conv = space.units[space.index("conv")]
    assert conv.shape == (8, 4, 3, 3) and conv.allowed == ("int8-pc",)  # 36 % 32 != 0
    assert space.units[0].allowed == ("int4-g32", "int8-pc")
    assert space.mask.tolist()[-1] == [False, True]
    assert all(u.tie is None for u in space.units)


def test_include_exclude() -> None:
    model = toy_model()
    assert SearchSpace.from_model(model, FORMATS, include=["attn.*"]).names == (
        "attn.q",
        "attn.k",
        "attn.v",
        "attn.o",
    )
    assert SearchSpace.from_model(model, FORMATS, include=r"re:mlp\.\d").names == (
        "mlp.0",
        "mlp.2",
    )
    names = SearchSpace.from_model(model, FORMATS, exclude=["re:.*conv.*", "attn.?"]).names
    assert names == ("mlp.0", "mlp.2", "lm_head")
    assert "lm_head" in SearchSpace.from_model(model, FORMATS, exclude=[]).names


def test_tie_regex() -> None:
    space = SearchSpace.from_model(toy_model(), FORMATS, tie=[r"re:(attn)\.(q|k|v)"])
    ties = {u.name: u.tie for u in space.units}
    assert ties["attn.q"] == ties["attn.k"] == ties["attn.v"] == "tie0:attn"
    assert ties["attn.o"] is None and ties["mlp.0"] is None
    assert space.tie_groups() == {"tie0:attn": [0, 1, 2]}
    single = SearchSpace.from_model(toy_model(), FORMATS, tie=[r"re:(attn)\.o"])
    assert single.tie_groups() == {}  # a group of one is no tie


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"tie": [r"re:attn\.(?:q|k)"]}, ValueError, "capture group"),
        ({"include": ["re:("]}, ValueError, "`include` pattern .* is not a valid regex"),
        ({"exclude": [3]}, TypeError, "`exclude` patterns must be strings"),
        ({"include": ["nothing*"]}, ValueError, "empty"),
    ],
)
def test_discovery_errors(kwargs: dict[str, object], exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        SearchSpace.from_model(toy_model(), FORMATS, **kwargs)


def test_unit_that_takes_no_format() -> None:
    with pytest.raises(ValueError, match="'conv'.*can take none of the formats"):
        SearchSpace.from_model(toy_model(), ["int4-g32"])


def test_json_round_trip_and_fingerprint() -> None:
    space = SearchSpace.from_model(toy_model(), FORMATS, tie=[r"re:(attn)\.(q|k|v)"])
    again = SearchSpace.from_dict(json.loads(json.dumps(space.to_dict())))
    assert again == space and again.fingerprint() == space.fingerprint()
    other = space.restrict(["attn.q", "mlp.0"])
    assert other.names == ("attn.q", "mlp.0") and other.fingerprint() != space.fingerprint()


@pytest.mark.parametrize(
    "units, match",
    [
        ((), "empty"),
        ((Unit("a", (64, 64), ("int8-pc",)), Unit("a", (64, 64), ("int8-pc",))), "duplicate"),
        ((Unit("a", (64, 64), ("int3-g64",)),), "not in the space"),
        ((Unit("a", (64, 64), ()),), "can take none"),
        (
            (
                Unit("a", (64, 64), ("int4-g32",), tie="t"),
                Unit("b", (64, 64), ("int8-pc",), tie="t"),
            ),
            "tie group 't' has no format",
        ),
    ],
)
def test_invalid_spaces(units: tuple[Unit, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SearchSpace(units=units, formats=parse_formats(FORMATS))


def test_from_dict_malformed() -> None:
    with pytest.raises(ValueError, match="'units' and 'formats'"):
        SearchSpace.from_dict({"units": []})


def test_auto_ties_on_tiny_llama() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(cfg).eval()
    space = SearchSpace.from_model(model, ["int4-g32", "int8-g32"], tie="auto")
    assert len(space) == 14 and "lm_head" not in space.names
    groups = sorted(
        sorted(space.names[i].split(".")[-1] for i in idx) for idx in space.tie_groups().values()
    )
    assert groups == [["gate_proj", "up_proj"]] * 2 + [["k_proj", "q_proj", "v_proj"]] * 2
    for i in range(2):
        assert (
            len(
                {
                    space.units[space.index(f"model.layers.{i}.{n}")].tie
                    for n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
                }
            )
            == 1
        )
        for lone in ("self_attn.o_proj", "mlp.down_proj"):
            assert space.units[space.index(f"model.layers.{i}.{lone}")].tie is None
    layer0 = {space.units[i].tie for i in range(7)} - {None}
    layer1 = {space.units[i].tie for i in range(7, 14)} - {None}
    assert len(layer0) == 2 and not layer0 & layer1


def test_for_backend_keeps_only_what_the_backend_builds() -> None:
    from bitalloc.backends import BACKENDS

    model = torch.nn.Sequential(
        torch.nn.Conv2d(64, 8, 1), torch.nn.Flatten(), torch.nn.Linear(64, 4)
    )
    space = SearchSpace.from_model(model, ["int4-g64", "int8-g64"])
    assert [u.name for u in space.units] == ["0", "2"]
    assert space.for_backend(BACKENDS.get("rtn")) == space  # rtn builds conv weights too
    with pytest.raises(ValueError, match=r"backend 'gptq' cannot build unit '0'"):
        SearchSpace.from_model(model, ["int4-g64", "int8-g64"], backend=BACKENDS.get("gptq"))

    class No4Bit:
        name = "no4"

        def supports(self, unit, fmt) -> bool:
            return fmt.bits != 4

    cut = space.for_backend(No4Bit())
    assert [u.allowed for u in cut.units] == [("int8-g64",), ("int8-g64",)]
    assert cut.formats == space.formats
