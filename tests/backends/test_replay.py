"""Block replay: the same KL as a full forward, bit for bit, with fewer block forwards."""

from __future__ import annotations

import numpy as np
import pytest

from bitalloc import SearchSpace, Solution, Status
from bitalloc.backends import KLEvaluator
from bitalloc.backends.replay import BlockReplay

FORMATS = ["int2-g32", "int3-g32", "int4-g32", "int8-pc"]


def plan(space: SearchSpace, choice) -> Solution:  # noqa: ANN001
    return Solution(space=space, choice=tuple(choice), status=Status.FEASIBLE)


def mutations(space: SearchSpace, n: int, seed: int) -> list[Solution]:
    """A parent, then children that each change two units of the current parent (and the
    parent moves on now and then), as an EvoPress run does."""
    rng = np.random.default_rng(seed)
    parent = [FORMATS[i % len(FORMATS)] for i in range(len(space))]
    plans = [plan(space, parent)]
    for step in range(n):
        child = list(parent)
        for i in rng.choice(len(space), size=2, replace=False):
            child[i] = FORMATS[int(rng.integers(len(FORMATS)))]
        plans.append(plan(space, child))
        if step % 4 == 3:
            parent = child
    return plans


@pytest.mark.parametrize("tokens", [None, 48])
def test_replay_gives_exactly_the_full_forward_kl(make_llama, tiny_calib, tokens) -> None:
    model = make_llama(layers=4)
    space = SearchSpace.from_model(model, FORMATS, tie=None)
    plans = mutations(space, 20, seed=0)
    full = KLEvaluator(model, tiny_calib, space, replay=False)
    with full:  # one session at a time: both evaluators swap weights of the same model
        want = [full(p, tokens=tokens) for p in plans]
    fast = KLEvaluator(model, tiny_calib, space)
    with fast:
        got = [fast(p, tokens=tokens) for p in plans]
    assert got == want  # bit for bit (the issue asks for 1e-6)
    stats = fast.replay.stats
    assert stats.skipped > 0 and stats.fraction_run < 0.8
    assert stats.run + stats.skipped == stats.calls * 4


def test_a_change_in_the_last_block_skips_every_earlier_block(make_llama, tiny_calib) -> None:
    model = make_llama(layers=3)
    space = SearchSpace.from_model(model, FORMATS, tie=None)
    base = [FORMATS[0]] * len(space)
    last = [i for i, u in enumerate(space.units) if u.fqn.startswith("model.layers.2.")]
    child = list(base)
    child[last[0]] = FORMATS[2]
    kl = KLEvaluator(model, tiny_calib, space)
    kl(plan(space, base), tokens=32)  # one piece: the first batch
    kl(plan(space, child), tokens=32)
    assert kl.replay.stats.history == [0, 2]
    kl(plan(space, child), tokens=32)  # identical plan: only the head runs
    assert kl.replay.stats.history[-1] == 3


def test_units_outside_blocks_force_a_full_forward(tiny_llama, tiny_calib) -> None:
    space = SearchSpace.from_model(tiny_llama, FORMATS, tie=None, exclude=("*embed*",))
    head = space.names.index("lm_head")
    base = [FORMATS[3]] * len(space)
    child = list(base)
    child[head] = FORMATS[1]
    replay = BlockReplay(tiny_llama, space)
    assert replay.first_change(tuple(base), tuple(child)) == 0
    assert replay.first_change(tuple(base), tuple(base)) == 2


def test_bad_keep_is_refused(tiny_llama) -> None:
    space = SearchSpace.from_model(tiny_llama, FORMATS, tie=None)
    with pytest.raises(ValueError, match="`keep` must be an int >= 1"):
        BlockReplay(tiny_llama, space, keep=0)
    with pytest.raises(TypeError, match="`replay` must be a bool"):
        KLEvaluator(tiny_llama, [], space, replay="yes")


def test_evopress_with_replay_equals_full_forwards(make_llama, tiny_calib) -> None:
    import bitalloc as ba

    model = make_llama(layers=3)
    space = SearchSpace.from_model(model, FORMATS, tie=None)
    table = ba.estimate(model, space, tiny_calib, "weight_error")
    solver = ba.solvers.EvoPressSolver(generations=4, offspring=4, selection=((2, 32), (1, 64)))
    runs = []
    for replay in (False, True):
        with KLEvaluator(model, tiny_calib, space, replay=replay) as kl:
            runs.append(solver.solve(table, ba.Budget.avg_bits(4.0), evaluate=kl))
            if replay:
                assert kl.replay.stats.skipped > 0
    a, b = runs
    assert a.choice == b.choice
    assert a.meta["history"] == b.meta["history"] and a.meta["fitness"] == b.meta["fitness"]
