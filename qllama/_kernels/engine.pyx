# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The Llama 2 forward pass, as llama2.c's run.c (fp32) and runq.c (Q8_0) compute it.

Data flow per block of T tokens at positions pos..pos+T-1:
token table -> x (T, dim) -> for each layer: rmsnorm -> q/k/v -> RoPE -> k, v into
the cache -> attention -> wo -> residual -> rmsnorm -> w1, w3 -> SwiGLU -> w2 ->
residual; then final rmsnorm -> classifier -> logits.

- `Weights`: the mapped tensors of one checkpoint (Config / TransformerWeights in
  run.c) and, for each matrix, the kernel that multiplies by it, planned once
  (`make_matrix`, driver.h) from the CPU variant's table (kernels.h). Sessions share it.
- `KVCache`: KV memory in pages; a sequence is a table of pages.
- `Workspace`: the scratch of forward passes (run.c's RunState less its cache);
  `Workspace.forward` runs a block of rows, of one sequence or many, each at its own
  position over its own pages: it validates its arguments, then runs the whole block
  in one `nogil` call.
- `State`: one sequence: a Workspace and a KV cache of one page.
- `Kernels`: a variant's kernels one by one, for checks and benchmarks.

Weights are pointers into the memory-mapped file: nothing is dequantized in full.
Each matmul reads a weight row once per block of tokens.

One extension module (every kernel variant is linked into it once), in files by job:
variants.pxi (what this build and CPU have), matrices.pxi (Weights, each matrix's
kernel), drivers.pxi (parallel matmuls, their inputs), kvcache.pxi (KVCache,
attention over pages), workspace.pxi (Workspace, State), kernel_checks.pxi (Kernels).
"""
from cython.parallel cimport prange
from libc.math cimport sqrtf
from libc.stdint cimport int8_t, int32_t, uint8_t, uint16_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset

from qllama._kernels.kernels cimport (qllama_acts, qllama_kernels, qllama_matrix,
                                      qllama_variant, qllama_variants,
                                      qllama_cpu_features, qllama_amx_permit, qllama_cpu_vendor,
                                      qllama_feature_names, qllama_n_features,
                                      qllama_f16_to_f32, qllama_plan, qllama_plan_matrix,
                                      qllama_packed_bytes, qllama_acts_init,
                                      qllama_acts_quantize, qllama_acts_pack, qllama_prepare,
                                      qllama_run_rows, qllama_dequantize_row,
                                      qllama_block_values, qllama_block_bytes, QLLAMA_Q80,
                                      QLLAMA_BF16, QLLAMA_N_TYPES)
from qllama._kernels.ops cimport rmsnorm, rope, rope_table, softmax

import numpy as np

from qllama.quant.types import TYPES, BlockTensor
from qllama.threads import MAX_THREADS

cdef extern from "activations.h" nogil:
    void qllama_swiglu(float* h, const float* g, Py_ssize_t n)
    void qllama_softmax(float* x, Py_ssize_t n)

cdef extern from "hugepages.h" nogil:
    void qllama_advise_huge(void* p, size_t bytes)
    void qllama_prefault(void* p, size_t bytes)


include "variants.pxi"
include "matrices.pxi"
include "drivers.pxi"
include "kvcache.pxi"
include "workspace.pxi"
include "kernel_checks.pxi"
