"""Crash suite: every writing command SIGKILLed at each of its writes and at random points.

Each command runs in a child (tests/crash/harness.py) that is killed with SIGKILL at its K-th
file-system write under the run's folder (before the write happens), or a random few
milliseconds after it (inside what follows), for every K the command makes, plus
``BITALLOC_CRASH_CASES`` random kills (half a random 0.05-5 ms after a random write, half at a
random moment of the run). After every kill:

- each target is old (byte-identical to before the run) or complete (it loads); a set of
  files (a frontier) is all old or all new;
- the next, unkilled run succeeds, and afterwards the folder holds exactly the files of a
  clean run: no stale temp file or staged folder remains.

Study workers are crashed the same way in tests/studies/test_studies_crash.py.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.crash.harness import run

pytestmark = pytest.mark.slow

RANDOM_CASES = int(os.environ.get("BITALLOC_CRASH_CASES", "3"))
COMMON = ["--n-samples", "2", "--seq-len", "32", "--estimator", "weight_error"]


@dataclass(frozen=True)
class Writer:
    """A command, how to build its "old" and "new" outputs, and how to check a target."""

    name: str
    old: Callable[[Path, Path], list[str]]  # (root, model dir) -> argv
    new: Callable[[Path, Path], list[str]]
    targets: tuple[str, ...]  # paths under root
    complete: Callable[[Path], object]  # raises on an incomplete target
    one_set: bool = False  # the targets change together
    resumes: bool = False  # a later run continues a killed one (fewer writes)


def _plan_ok(path: Path) -> object:
    from bitalloc.search.solution import Solution

    return Solution.load(path)


def _table_ok(path: Path) -> object:
    from bitalloc.search.table import SensitivityTable

    return SensitivityTable.load(path)


def _packed_ok(path: Path) -> object:
    from bitalloc.backends.packed import read_packed

    return read_packed(path)


def _export_ok(path: Path) -> object:
    text = path.read_text()
    assert text.strip(), "empty export"
    return text


def _frontier_ok(path: Path) -> object:
    from bitalloc.search.frontier import Frontier

    if path.suffix == ".json":
        return Frontier.load(path)
    if path.suffix == ".png":
        assert path.read_bytes().startswith(b"\x89PNG") and path.read_bytes().endswith(
            b"IEND\xaeB`\x82"
        )
    else:
        assert path.read_text().startswith("avg_bits") or "," in path.read_text()
    return path


def _argv(template: str) -> Callable[[Path, Path], list[str]]:
    """``template`` with ``{root}`` and ``{model}`` filled in, split on spaces (pytest's
    temporary paths hold none)."""

    def argv(root: Path, model: Path) -> list[str]:
        return template.format(root=root, model=model, common=" ".join(COMMON)).split()

    return argv


def _search(bits: str) -> Callable[[Path, Path], list[str]]:
    return _argv(
        "search --model {model} {common} --avg-bits " + bits + " --solver ilp "
        "--out {root}/plan.json --table {root}/t.npz -q"
    )


def _evopress(generations: str) -> Callable[[Path, Path], list[str]]:
    return _argv(
        "search --model {model} {common} --avg-bits 4 --solver evopress --generations "
        + generations
        + " --offspring 4 --checkpoint {root}/ck.json --out {root}/evo.json -q"
    )


def _pack(bits: str) -> Callable[[Path, Path], list[str]]:
    return _argv("pack {root}/plan" + bits + ".json -o {root}/ckpt --model {model}")


def _frontier(budgets: str) -> Callable[[Path, Path], list[str]]:
    return _argv(
        "frontier --model {model} {common} --budgets " + budgets + " --out {root}/front -q"
    )


def _export(bits: str) -> Callable[[Path, Path], list[str]]:
    return _argv(
        "export {root}/plan" + bits + ".json --to llama.cpp -o {root}/types.txt --fix "
        "--save-plan {root}/fixed.json"
    )


WRITERS = {
    w.name: w
    for w in (
        Writer("search", _search("3"), _search("4"), ("plan.json", "t.npz"), _plan_ok),
        Writer(
            "evopress",
            _evopress("2"),
            _evopress("4"),
            ("ck.json", "evo.json"),
            _plan_ok,
            resumes=True,
        ),
        Writer("pack", _pack("3"), _pack("4"), ("ckpt",), _packed_ok),
        Writer(
            "frontier",
            _frontier("3:4:1"),
            _frontier("3:5:0.5"),
            ("front/frontier.json", "front/frontier.csv", "front/frontier.png"),
            _frontier_ok,
            one_set=True,
        ),
        Writer("export", _export("3"), _export("4"), ("types.txt", "fixed.json"), _export_ok),
    )
}


def _check(writer: Writer, path: Path) -> None:
    if path.name in ("plan.json", "evo.json", "fixed.json"):
        _plan_ok(path)
    elif path.suffix == ".npz":
        _table_ok(path)
    elif path.name == "ck.json":
        from bitalloc.search._io import read_json

        assert isinstance(read_json(path, "checkpoint"), dict)
    else:
        writer.complete(path)


def _identity(path: Path) -> tuple[int, int, str] | None:
    """Which file is at ``path``: atomic writes replace it with a new inode (staged while
    the old one is alive, so the numbers differ); in-place writes change its bytes."""
    if not path.is_file():
        return None
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()


def _listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def prepared(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the plans the pack/export writers read and a warm data cache."""
    root = tmp_path_factory.mktemp("crash-inputs")
    env = {"BITALLOC_CACHE_DIR": str(root / "cache")}
    for bits in ("3", "4"):
        argv = _search(bits)(root, tiny_model_dir)
        out = run(argv, root=root, cwd=root, env=env)
        assert out.exitcode == 0, out.log[-2000:]
        (root / "plan.json").rename(root / f"plan{bits}.json")
    (root / "t.npz").unlink()
    return root


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_sigkill_at_every_write_leaves_old_or_complete_targets(
    name: str, prepared: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    import shutil

    writer = WRITERS[name]
    root = tmp_path / "run"
    shutil.copytree(prepared, root)
    env = {"BITALLOC_CACHE_DIR": str(root / "cache")}
    old, new = writer.old(root, tiny_model_dir), writer.new(root, tiny_model_dir)
    first = run(new, root=root, cwd=root, env=env)
    assert first.exitcode == 0, first.log[-2000:]
    clean = run(old, root=root, cwd=root, env=env)
    assert clean.exitcode == 0, clean.log[-2000:]
    expected = _listing(root)
    rng = random.Random(f"crash-{name}")
    cases = [(k, 0.0) for k in range(first.events)]
    for i in range(RANDOM_CASES):  # just after a random write, or at a random moment
        if i % 2 == 0:
            cases.append((rng.randrange(first.events), rng.uniform(0.05, 5.0)))
        else:
            cases.append((-1, rng.uniform(0.0, 1000.0 * first.seconds)))
    killed = 0
    for k, delay in cases:
        before = {t: _identity(root / t) for t in writer.targets}
        out = run(new, root=root, cwd=root, env=env, kill_at=k, delay_ms=delay)
        assert out.exitcode in (0, -9), out.log[-2000:]
        killed += out.killed
        changed = [t for t in writer.targets if _identity(root / t) != before[t]]
        for t in changed:  # new content must be complete
            _check(writer, root / t)
        if writer.one_set:
            assert changed in ([], list(writer.targets)), f"kill at {k}+{delay:.1f} ms: {changed}"
        if writer.resumes and not out.killed:  # done: the next case starts a fresh run
            for t in writer.targets:
                (root / t).unlink()
    # every kill at a write landed (a resumed EvoPress run has fewer generations to write)
    assert killed >= (1 if writer.resumes else first.events)
    again = run(new, root=root, cwd=root, env=env)
    assert again.exitcode == 0, again.log[-2000:]
    for t in writer.targets:
        _check(writer, root / t)
    assert _listing(root) == expected, sorted(_listing(root) ^ expected)
    print(f"\ncrash {name}: {len(cases)} kill points, {killed} kills landed, 0 failures")
