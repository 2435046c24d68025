"""The GGUF header size bitalloc computes is the file's: with alignment 1 the tensor data starts
right after the header, so the data offset gguf-py reads is the header's exact size."""

from __future__ import annotations

import numpy as np
import pytest

from bitalloc.backends.export import gguf_file as GF


@pytest.mark.parametrize("extra", [0, 1, 7, 31])
def test_header_bytes_are_the_data_offset(tmp_path, extra: int) -> None:
    import gguf

    path = tmp_path / "t.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_custom_alignment(1)
    w.add_string("bitalloc.note", "x" * extra)
    w.add_uint32("bitalloc.count", 7)
    w.add_tensor("blk.0.attn_q.weight", np.ones((4, 8), np.float32))
    w.add_tensor("output_norm.weight", np.ones(8, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    reader = gguf.GGUFReader(str(path))
    assert reader.alignment == 1
    assert GF._header(reader) == reader.data_offset
    assert GF._kv("bitalloc.note", "x" * extra) == 8 + 13 + 4 + 8 + extra
    assert GF._kv("bitalloc.count", 7) == 8 + 14 + 4 + 4
