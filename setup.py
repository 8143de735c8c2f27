"""Build the Cython kernels under qllama/_kernels/ with -O3 and OpenMP.

Native CPU flags (-march=native) by default; set QLLAMA_PORTABLE=1 for a build
that runs on any x86-64 / aarch64 machine of the same OS.
"""
import os
from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup


def compile_args():
    args = ["-O3", "-fopenmp", "-fno-math-errno"]
    if os.environ.get("QLLAMA_PORTABLE", "0") in ("", "0"):
        args.append("-march=native")
    return args


extensions = [
    Extension(
        f"qllama._kernels.{pyx.stem}",
        [str(pyx)],
        include_dirs=[np.get_include()],
        extra_compile_args=compile_args(),
        extra_link_args=["-fopenmp"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
    for pyx in sorted(Path("qllama/_kernels").glob("*.pyx"))
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": 3},
        nthreads=os.cpu_count() or 1,
    )
)
