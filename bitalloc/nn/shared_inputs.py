"""Modules that read the identical input tensor, found with one hooked forward pass.

Every module's input tensor is identified by its storage pointer, shape and stride; a
bipartite networkx graph (module -- input tensor) gives the groups as connected components.
Every input is held until the pass ends, so the allocator cannot reuse an address and make
two different tensors look alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import networkx as nx

if TYPE_CHECKING:
    from torch import nn


def shared_input_groups(
    model: nn.Module, names: list[str], run: Callable[[], Any]
) -> list[list[str]]:
    """Groups of the module FQNs ``names`` (each group in ``names`` order, groups by their
    first member) whose modules read the same input tensor while ``run()`` runs the model once
    (under ``torch.no_grad``). ValueError naming the FQNs the model lacks."""
    import torch

    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise ValueError(f"units not found in the model: {missing[:5]}")
    graph = nx.Graph()
    graph.add_nodes_from(names)
    handles = []
    keep_alive: list[Any] = []

    def hook(name: str) -> Callable[[Any, tuple[Any, ...]], None]:
        def fn(_mod: Any, args: tuple[Any, ...]) -> None:
            x = args[0]
            keep_alive.append(x)
            graph.add_edge(name, ("input", x.data_ptr(), tuple(x.shape), tuple(x.stride())))

        return fn

    try:
        for n in names:
            handles.append(modules[n].register_forward_pre_hook(hook(n)))
        with torch.no_grad():
            run()
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
