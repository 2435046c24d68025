"""Defaults written twice (to keep imports light) agree."""

from __future__ import annotations


def test_rtn_search_defaults_are_the_kernel_defaults() -> None:
    from bitalloc.backends import rtn
    from bitalloc.kernels import grid

    assert rtn.SEARCH_STEPS == grid.SEARCH_STEPS
    assert rtn.MIN_SHRINK == grid.MIN_SHRINK
    be = rtn.RtnBackend()
    assert (be.search_steps, be.min_shrink) == (grid.SEARCH_STEPS, grid.MIN_SHRINK)


def test_cli_default_formats_are_the_search_defaults() -> None:
    from bitalloc.cli._common import DEFAULT_FORMATS
    from bitalloc.search.oneshot import DEFAULT_FORMATS as API_FORMATS

    assert DEFAULT_FORMATS == ",".join(API_FORMATS)


def test_parse_tie_is_the_one_tie_parser() -> None:
    from bitalloc.defaults import parse_tie

    assert parse_tie("auto") == "auto" and parse_tie("none") is None
    assert parse_tie(r"re:(.*)\.(q|k)_proj,re:(.*)\.up") == [
        r"re:(.*)\.(q|k)_proj",
        r"re:(.*)\.up",
    ]
