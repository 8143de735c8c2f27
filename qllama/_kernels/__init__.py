"""Cython kernels. Each module has a thin Python-facing function that checks
shapes, and a `noexcept nogil` core that only computes."""
