"""``bitalloc frontier`` on a local tiny model folder: files written, budgets syntax, exit 2."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from bitalloc.cli import main, parse_budgets
from bitalloc.search.frontier import Frontier
from bitalloc.search.solution import Status

FORMATS = "int2-g32,int3-g32,int4-g32,int8-g32"


def frontier_args(model: Path, out: Path, budgets: str, *extra: str) -> list[str]:
    return [
        "frontier",
        "--model",
        str(model),
        "--formats",
        FORMATS,
        "--budgets",
        budgets,
        "--n-samples",
        "4",
        "--seq-len",
        "32",
        "--no-cache",
        "-q",
        "--out",
        str(out),
        *extra,
    ]


def test_budget_syntax() -> None:
    assert parse_budgets("2.5:4.5:0.25") == [2.5 + 0.25 * i for i in range(9)]
    assert parse_budgets("3:4:0.3") == [3.0, 3.3, 3.6, 3.9]
    assert parse_budgets("4,3, 2.5:3:0.5") == [2.5, 3.0, 4.0]


@pytest.mark.parametrize("text", ["0:inf:1", "inf:inf:1", "3:4:nan", "inf", "2,-inf"])
def test_non_finite_budgets_are_refused_naming_the_flag(text: str) -> None:
    from bitalloc.cli._common import CliError

    with pytest.raises(CliError, match="--budgets must be finite numbers"):
        parse_budgets(text)


def test_frontier_writes_json_csv_png_with_measured_kl(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "front"
    text = tmp_path / "held-out.txt"
    text.write_text("The quick brown fox jumps over the lazy dog near the river bank. " * 40)
    args = frontier_args(tiny_model_dir, out, "2.0,3:5:1", "--text", str(text))
    assert main([*args, "--evaluate", "--windows", "2", "--eval-seq-len", "32"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["frontier.csv", "frontier.json", "frontier.png"]
    front = Frontier.load(out / "frontier.json")
    assert [p.meta["budget"]["value"] for p in front.points] == [2.0, 3.0, 4.0, 5.0]
    assert front.points[0].status is Status.INFEASIBLE  # below int2-g32's overhead: kept
    for p, m in zip(front.points[1:], front.measured[1:]):
        assert p.success and p.avg_bits <= p.meta["budget"]["value"]
        assert m["kl"] >= 0 and m["ppl"] > 1
    rows = list(csv.DictReader((out / "frontier.csv").open()))
    assert len(rows) == 4 and {"avg_bits", "predicted_loss", "kl", "ppl", "solver"} <= set(rows[0])
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "infeasible" in printed and "4 points solved" in printed


def test_frontier_nsga2_measures_the_points_at_the_budgets(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "nsga2"
    text = tmp_path / "held-out.txt"
    text.write_text("A small model reads a short text about rivers and hills. " * 40)
    args = frontier_args(tiny_model_dir, out, "3:4:0.5", "--solver", "nsga2", "--evaluate")
    opts = ["--option", "pop_size=8", "-O", "n_gen=3", "--text", str(text), "--windows", "1"]
    assert main([*args, *opts, "--eval-seq-len", "32"]) == 0
    front = Frontier.load(out / "frontier.json")
    assert len(front) >= 3 and all(p.avg_bits <= 4.0 for p in front.points)
    assert front.points[0].meta["solver_options"]["pop_size"] == 8
    measured = {p.choice for p, m in zip(front.points, front.measured) if "kl" in m}
    assert measured == {p.choice for p in front.at([3.0, 3.5, 4.0]).points}
    assert "kl" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("budgets", "extra", "message"),
    [
        ("2.5:4.5", (), "cannot parse '2.5:4.5'"),
        ("4:3:0.5", (), "start <= stop"),
        ("3:4:0", (), "step > 0"),
        ("three", (), "cannot parse 'three'"),
        ("0,3", (), "positive average bits"),
        ("3", ("--solver", "mip"), "unknown solver 'mip'"),
        ("3", ("--option", "bogus=1"), "unknown option(s) ['bogus']"),
        ("3", ("--option", "n_gen"), "KEY=VALUE"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(
    tiny_model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    budgets: str,
    extra: tuple[str, ...],
    message: str,
) -> None:
    out = tmp_path / "out"
    assert main(frontier_args(tiny_model_dir, out, budgets, *extra)) == 2
    err = capsys.readouterr().err
    assert "bitalloc frontier: error" in err and message in err
    assert not out.exists()
