"""The conversion layer's shared pieces: one Q8_0 dequantizer per layout, and imports
that point one way (formats <- io <- quant <- conversion/interop <- cli)."""
import pathlib
import re

import gguf
import numpy as np
import pytest

from qllama.formats.llama2c import QTensor, dequantize_q80
from qllama.quant.types import TYPES, BlockTensor, dequantize_rows

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "qllama"


@pytest.mark.parametrize("gs", [1, 3, 4, 32])
def test_dequantize_q80_ranges_are_slices_of_the_whole(gs):
    rng = np.random.default_rng(gs)
    numel = 12 * gs
    q = rng.integers(-127, 128, numel).astype(np.int8)
    s = rng.random(numel // gs).astype(np.float32)
    whole = QTensor(q, s, (numel,), gs).dequantize()
    assert np.array_equal(whole, (q.reshape(-1, gs).astype(np.float32) * s[:, None]).reshape(-1))
    for start in range(0, numel, 5):
        for stop in range(start, numel + 1, 7):
            assert np.array_equal(dequantize_q80(q, s, gs, start, stop), whole[start:stop])


@pytest.mark.parametrize("name", ["q8_0", "q4_0", "q4_k", "q6_k", "f16"])
def test_block_tensor_rows_are_gguf_pys(name):
    t = TYPES[name]
    x = np.random.default_rng(0).standard_normal((6, 256)).astype(np.float32)
    data = t.quantize(x, 1).reshape(-1)
    bt = BlockTensor(t, x.shape, data)
    want = gguf.quants.dequantize(data.reshape(6, -1), t.gguf).astype(np.float32)
    for start, stop in ((0, 6), (1, 4), (5, 6)):
        assert np.array_equal(dequantize_rows(bt, start, stop), want[start:stop])


def _imports(folder: str) -> set[str]:
    """The modules outside `folder` that its modules import (relative imports)."""
    found = set()
    for path in (PACKAGE / folder).glob("*.py"):
        found |= {m.group(1) for m in re.finditer(r"^\s*from \.\.([\w.]+)", path.read_text(), re.M)}
    return found


def test_io_knows_no_format():
    assert not {m for m in _imports("io") if m.startswith("formats")}


def test_formats_need_io_only_for_the_opener():
    assert {m for m in _imports("formats") if m.startswith("io")} == {"io.inputs"}
