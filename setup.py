"""Build the Cython modules under qllama/_kernels/ with -O3 and OpenMP, and into the
engine every CPU variant of its kernels, each C file compiled with its own target
flags (kernels.h). The engine picks the best variant at run time, so the build is
portable: nothing is compiled for the build machine's CPU. QLLAMA_NATIVE=1 adds
-march=native to everything else (only to compare with a native build).

A variant whose flags the compiler does not know (an old gcc without -mavxvnni) is
left out of the build with a warning; the others still run.
"""
import os
import platform
from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

KERNELS = Path("qllama/_kernels")
# Every file of C, and the arithmetic is as written: no implicit FMA contraction, so
# each variant rounds where its source says and results do not depend on the build.
C_FLAGS = ["-O3", "-fno-math-errno", "-ffp-contract=off"]
NATIVE = os.environ.get("QLLAMA_NATIVE", "0") not in ("", "0")

# (macro that tells cpu.c the variant is in, source, target flags), per architecture
VARIANTS = {
    "x86_64": [
        ("QLLAMA_HAVE_AVX2", "arch/x86/avx2.c", ["-mavx2", "-mfma", "-mf16c"]),
    ],
    "aarch64": [],
}


def machine() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


class BuildVariants(build_ext):
    """Compiles each kernel variant with its own flags and links it into the engine."""

    def build_extension(self, ext):
        if ext.name == "qllama._kernels.engine":
            from distutils.errors import CompileError
            for macro, source, flags in VARIANTS.get(machine(), []):
                try:
                    objects = self.compiler.compile(
                        [str(KERNELS / source)], output_dir=self.build_temp,
                        include_dirs=[str(KERNELS)], extra_postargs=C_FLAGS + ["-fPIC"] + flags)
                except CompileError:
                    self.warn(f"{source}: the compiler does not take {' '.join(flags)}; "
                              "that kernel variant is left out of this build")
                    continue
                ext.extra_objects.extend(objects)
                ext.define_macros.append((macro, "1"))
        super().build_extension(ext)


def extension(pyx: Path) -> Extension:
    sources = [str(pyx)]
    if pyx.stem == "engine":
        sources += [str(KERNELS / "generic.c"), str(KERNELS / "cpu.c")]
    return Extension(
        f"qllama._kernels.{pyx.stem}", sources,
        include_dirs=[np.get_include(), str(KERNELS)],
        extra_compile_args=C_FLAGS + ["-fopenmp"] + (["-march=native"] if NATIVE else []),
        extra_link_args=["-fopenmp"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )


setup(
    ext_modules=cythonize(
        [extension(pyx) for pyx in sorted(KERNELS.glob("*.pyx"))],
        compiler_directives={"language_level": 3},
        build_dir="build/cython",
        nthreads=os.cpu_count() or 1,
    ),
    cmdclass={"build_ext": BuildVariants},
)
