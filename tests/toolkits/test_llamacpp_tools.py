"""Finding, running and failing llama.cpp's tools: clear errors, no partial artifacts."""

from __future__ import annotations

import sys

import pytest

from bitalloc.toolkits import llamacpp


def test_missing_build_names_the_make_target(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(llamacpp.ENV_VAR, str(tmp_path / "nothing"))
    assert not llamacpp.is_built()
    with pytest.raises(llamacpp.ToolkitMissing, match="run `make llama-cpp`"):
        llamacpp.tool("llama-quantize")
    with pytest.raises(llamacpp.ToolkitMissing, match="libggml-base is not built"):
        llamacpp.library()
    with pytest.raises(ValueError, match="`name` must be one of llama-quantize"):
        llamacpp.tool("llama-server")


def test_the_build_is_present() -> None:
    """`make test` builds llama.cpp first; a missing build is a failure, not a skip."""
    assert llamacpp.is_built(), (
        f"llama.cpp is not built in {llamacpp.home()}; {llamacpp.MAKE_HINT}"
    )
    for name in llamacpp.TOOLS:
        assert llamacpp.tool(name).is_file()


def test_a_failing_tool_shows_its_last_lines_and_leaves_nothing(tmp_path) -> None:
    out = tmp_path / "model.gguf"
    script = "import sys\nfor i in range(40): print('line', i)\nsys.exit(3)"
    with pytest.raises(llamacpp.ToolFailed, match=r"exited with 3; last lines:\nline 20\n") as e:
        llamacpp.produce(out, lambda tmp: llamacpp.run([sys.executable, "-c", script]))
    assert "line 39" in str(e.value) and "line 19" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_a_tool_that_writes_nothing_leaves_nothing(tmp_path) -> None:
    out = tmp_path / "model.gguf"
    with pytest.raises(llamacpp.ToolFailed, match="wrote nothing"):
        llamacpp.produce(out, lambda tmp: llamacpp.run([sys.executable, "-c", "pass"]))
    assert list(tmp_path.iterdir()) == []


def test_a_real_tool_failure_is_reported(tmp_path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file")
    out = tmp_path / "out.gguf"
    with pytest.raises(llamacpp.ToolFailed, match="llama-quantize exited with"):
        llamacpp.produce(
            out,
            lambda tmp: llamacpp.run([llamacpp.tool("llama-quantize"), bad, tmp, "Q4_0", "1"]),
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf"]


def test_timeouts_and_missing_programs_are_tool_failures(tmp_path) -> None:
    with pytest.raises(llamacpp.ToolFailed, match="timed out after 0.5 s"):
        llamacpp.run([sys.executable, "-c", "import time; print('x'); time.sleep(5)"], timeout=0.5)
    with pytest.raises(llamacpp.ToolFailed, match="could not start"):
        llamacpp.run([tmp_path / "no-such-tool"])


def test_outputs_get_normal_permissions(tmp_path) -> None:
    import os

    out = tmp_path / "model.gguf"
    llamacpp.produce(out, lambda tmp: tmp.write_bytes(b"GGUF"))
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask
