"""SensitivityTable: validation and bit-exact npz round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bitalloc.search.formats import parse_formats
from bitalloc.search.space import SearchSpace, Unit
from bitalloc.search.table import TABLE_VERSION, SensitivityTable

FORMATS = parse_formats(["int2-g64", "int4-g64", "int8-pc"])


def make_table() -> SensitivityTable:
    space = SearchSpace(
        units=(
            Unit("a", (64, 128), ("int2-g64", "int4-g64", "int8-pc")),
            Unit("b", (32, 96), ("int8-pc",)),
        ),
        formats=FORMATS,
    )
    rng = np.random.default_rng(0)
    values = rng.lognormal(size=(2, 3))
    return SensitivityTable(
        space=space,
        values=values,
        estimator="fisher",
        meta={"model": "toy", "n": np.int64(3), "shape": (1, 2)},
    )


def test_not_allowed_entries_become_inf() -> None:
    table = make_table()
    assert np.isinf(table.values[1, :2]).all() and np.isfinite(table.values[0]).all()
    assert not table.values.flags.writeable
    assert table["a", "int4-g64"] == table.values[0, 1]


def test_save_load_round_trip(tmp_path) -> None:  # noqa: ANN001
    table = make_table()
    path = table.save(tmp_path / "sub" / "table.npz")
    loaded = SensitivityTable.load(path)
    assert loaded.values.tobytes() == table.values.tobytes()  # bit-exact, inf included
    assert loaded.space == table.space and loaded.estimator == "fisher"
    assert loaded.meta == {"model": "toy", "n": 3, "shape": [1, 2]}
    header = table.header()
    assert header["version"] == TABLE_VERSION and header["space"] == table.space.to_dict()
    json.dumps(header)
    assert [p.name for p in path.parent.iterdir()] == ["table.npz"]  # no stray temp file


def test_rejects_nan_inf_and_bad_shape() -> None:
    table = make_table()
    bad = np.array(table.values)
    bad[0, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        SensitivityTable(space=table.space, values=bad, estimator="x")
    bad[0, 1] = np.inf
    with pytest.raises(ValueError, match="inf entries for allowed"):
        SensitivityTable(space=table.space, values=bad, estimator="x")
    with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
        SensitivityTable(space=table.space, values=np.zeros((3, 2)), estimator="x")


def test_load_garbage(tmp_path) -> None:  # noqa: ANN001
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read sensitivity table"):
        SensitivityTable.load(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="cannot read sensitivity table"):
        SensitivityTable.load(tmp_path / "missing.npz")
    header = np.frombuffer(json.dumps({"version": 99}).encode(), dtype=np.uint8)
    np.savez(tmp_path / "v99.npz", values=np.zeros((1, 1)), header=header)
    with pytest.raises(ValueError, match="unsupported version"):
        SensitivityTable.load(tmp_path / "v99.npz")


@pytest.mark.parametrize(
    "case", ["empty", "truncated", "no-header", "list-header", "plain-npy", "bad-space"]
)
def test_load_refuses_every_malformed_file_with_value_error(tmp_path, case) -> None:  # noqa: ANN001
    """Issue 11 D7: never BadZipFile, EOFError, KeyError, AttributeError or TypeError."""
    path = tmp_path / "t.npz"
    good = tmp_path / "good.npz"
    make_table().save(good)

    def header(obj) -> np.ndarray:  # noqa: ANN001
        return np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8)

    if case == "empty":
        path.write_bytes(b"")
    elif case == "truncated":
        path.write_bytes(good.read_bytes()[:-100])
    elif case == "no-header":
        np.savez(path, values=np.zeros((2, 3)))
    elif case == "list-header":
        np.savez(path, values=np.zeros((2, 3)), header=header([1, 2]))
    elif case == "plain-npy":
        with open(path, "wb") as f:
            np.save(f, np.zeros((2, 3)))
    else:
        bad = {**make_table().header(), "space": {"units": "nope"}}
        np.savez(path, values=np.zeros((2, 3)), header=header(bad))
    with pytest.raises(ValueError, match=r"sensitivity table .*t\.npz"):
        SensitivityTable.load(path)
