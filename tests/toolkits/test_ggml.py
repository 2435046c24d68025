"""ggml's own quantizers through ctypes: the bytes and weights llama.cpp stores.

Needs llama.cpp built (``make llama-cpp``; ``make test`` builds it first). Without the build
these tests fail with the message naming that target; they are never skipped.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from bitalloc.search.formats import GGML_TYPES
from bitalloc.toolkits import ggml


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((6, 512)).astype(np.float32)


@pytest.mark.parametrize("name", list(GGML_TYPES))
def test_decode_equals_gguf_py_and_bytes_are_the_layout(rows, name) -> None:
    data = ggml.quantize(rows, name)
    t = GGML_TYPES[name]
    assert data.shape == (6, 512 // t.block * t.block_bytes)
    assert ggml.row_size(name, 512) == data.shape[1]
    ref = gguf.quants.dequantize(data.reshape(-1), gguf.GGMLQuantizationType[name.upper()])
    assert np.array_equal(ggml.dequantize(data, name, 512), ref.reshape(6, 512))


@pytest.mark.parametrize("name", list(GGML_TYPES))
def test_sqnr_matches_the_type(rows, name) -> None:
    w_hat = ggml.roundtrip(rows, name)
    sqnr = 10 * np.log10(np.square(rows).sum() / np.square(w_hat - rows).sum())
    floor = {2: 8.0, 3: 14.0, 4: 19.0, 5: 25.0, 6: 32.0, 8: 40.0}[GGML_TYPES[name].bits]
    assert sqnr > floor, (name, sqnr)


@pytest.mark.parametrize("name", ["q2_k", "q3_k", "q4_k", "q4_0", "iq4_nl", "iq4_xs"])
def test_imatrix_lowers_the_weighted_error(rows, name) -> None:
    imp = np.random.default_rng(1).gamma(0.5, 1.0, 512).astype(np.float32)
    plain = ggml.roundtrip(rows, name)
    weighted = ggml.roundtrip(rows, name, imp)
    assert not np.array_equal(plain, weighted)
    assert (np.square(weighted - rows) * imp).sum() < (np.square(plain - rows) * imp).sum()


def test_rows_are_independent(rows) -> None:
    """Permuting rows permutes the result (llama.cpp's q/k rope layout changes nothing)."""
    perm = np.random.default_rng(2).permutation(6)
    assert np.array_equal(ggml.roundtrip(rows[perm], "q4_k"), ggml.roundtrip(rows, "q4_k")[perm])


def test_bad_input_is_named(rows) -> None:
    with pytest.raises(ValueError, match="not a multiple of its block of 256"):
        ggml.quantize(rows[:, :288], "q4_k")
    with pytest.raises(ValueError, match="must be 2-D"):
        ggml.quantize(rows[0], "q4_0")
    with pytest.raises(ValueError, match="`imatrix` must be 512 finite floats"):
        ggml.quantize(rows, "q4_0", np.full(512, np.nan, np.float32))
    with pytest.raises(ValueError, match="unknown ggml type 'q7_k'"):
        ggml.quantize(rows, "q7_k")
    with pytest.raises(ValueError, match="not whole q4_0 rows"):
        ggml.dequantize(np.zeros(17, np.uint8), "q4_0", 512)
