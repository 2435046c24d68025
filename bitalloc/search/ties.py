"""Automatic tie groups: units that read the same input tensor.

Fused runtime kernels (q/k/v projection, gate/up in a gated MLP) multiply one activation by
the concatenation of several weights, so those weights must share a format. We find them with
one hooked forward pass: every unit's input tensor is identified by its storage pointer, shape
and stride; a bipartite networkx graph (unit -- input tensor) gives the groups as connected
components.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import networkx as nx

if TYPE_CHECKING:
    from torch import nn


def shared_input_groups(
    model: nn.Module, names: list[str], example: Any = None
) -> list[list[str]]:
    """Groups of unit names (in model order) whose modules read the identical input tensor."""
    import torch

    from .calibration import default_forward

    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise ValueError(f"units not found in the model: {missing[:5]}")
    if example is None:
        example = _example_input(model)
    graph = nx.Graph()
    graph.add_nodes_from(names)
    handles = []
    keep_alive: list[Any] = []  # holding every input stops the allocator reusing an address

    def hook(name: str):  # noqa: ANN202 - closure factory
        def fn(_mod: Any, args: tuple[Any, ...]) -> None:
            x = args[0]
            keep_alive.append(x)
            graph.add_edge(name, ("input", x.data_ptr(), tuple(x.shape), tuple(x.stride())))

        return fn

    try:
        for n in names:
            handles.append(modules[n].register_forward_pre_hook(hook(n)))
        with torch.no_grad():
            default_forward(model, example)
    finally:
        for h in handles:
            h.remove()
    order = {n: i for i, n in enumerate(names)}
    groups = []
    for comp in nx.connected_components(graph):
        members = sorted((c for c in comp if isinstance(c, str)), key=order.__getitem__)
        if members:
            groups.append(members)
    return sorted(groups, key=lambda g: order[g[0]])


def _example_input(model: nn.Module) -> Any:
    import torch

    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is None:
        raise ValueError(
            "tie='auto' needs `example_input` (a batch the model accepts) for this model"
        )
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, int(vocab), (1, 8), generator=gen)
