"""Build the Cython modules under qllama/_kernels/ with -O3 and OpenMP, and into the
engine every CPU variant of its kernels, each C file compiled with its own target
flags (kernels.h). The engine picks the best variant at run time, so the build is
portable: nothing is compiled for the build machine's CPU. QLLAMA_NATIVE=1 adds
-march=native to everything else (only to compare with a native build).

A variant whose flags the compiler does not know (an old gcc without -mavxvnni) is
left out of the build with a warning; the others still run.
"""
import json
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

# Kernel variants per architecture, {machine: [(name, source, target flags)]}, from the
# file tests/harness.py reads too. cpu.c learns which were built from QLLAMA_HAVE_<NAME>;
# the source from QLLAMA_VARIANT which table to define.
VARIANTS = {arch: [(v["name"], v["source"], v["flags"]) for v in variants]
            for arch, variants in json.loads((KERNELS / "variants.json").read_text()).items()
            if arch != "about"}


# One instruction of each variant: the compiler and the assembler must both know it.
X86 = "#include <immintrin.h>\n"
ARM = "#include <arm_neon.h>\n"
PROBES = {
    "avx2": X86 + "__m256i f(__m256i a) { return _mm256_maddubs_epi16(a, a); }",
    "avxvnni": X86 + "__m256i f(__m256i a) { return _mm256_dpbusd_avx_epi32(a, a, a); }",
    "avx512vnni": X86 + "__m512i f(__m512i a) { return _mm512_dpbusd_epi32(a, a, a); }",
    "amx": X86 + "void f(void) { _tile_release(); }",
    "neon": ARM + "int32x4_t f(int32x4_t a) { return vaddq_s32(a, a); }",
    "dotprod": ARM + "int32x4_t f(int32x4_t a, int8x16_t b) { return vdotq_s32(a, b, b); }",
}


def machine() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


class BuildVariants(build_ext):
    """Compiles each kernel variant with its own flags and links it into the engine."""

    def build_extension(self, ext):
        if ext.name == "qllama._kernels.engine":
            for name, source, flags in VARIANTS.get(machine(), []):
                if not self.compiler_takes(name, flags):
                    self.warn(f"the compiler does not take {' '.join(flags)}: kernel variant "
                              f"{name} is left out of this build")
                    continue
                ext.extra_objects.extend(self.compiler.compile(
                    [str(KERNELS / source)], output_dir=os.path.join(self.build_temp, name),
                    include_dirs=[str(KERNELS)], macros=[("QLLAMA_VARIANT", name)],
                    extra_postargs=C_FLAGS + ["-fPIC"] + flags))
                ext.define_macros.append((f"QLLAMA_HAVE_{name.upper()}", "1"))
        super().build_extension(ext)


    def compiler_takes(self, name: str, flags: list) -> bool:
        """Whether the compiler and assembler build one of the variant's instructions."""
        from setuptools.errors import CompileError
        probe = Path(self.build_temp) / f"probe_{name}.c"
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text(PROBES[name] + "\n")
        try:
            self.compiler.compile([str(probe)], output_dir=str(probe.parent / "probe"),
                                  extra_postargs=flags)
            return True
        except CompileError:
            return False


def extension(pyx: Path) -> Extension:
    sources = [str(pyx)]
    depends = [str(p) for p in (*KERNELS.glob("*.pxd"), *KERNELS.glob("*.pxi"), *KERNELS.glob("*.h"))]
    if pyx.stem == "engine":
        sources += [str(KERNELS / f) for f in ("driver.c", "generic.c", "cpu.c")]
        depends += [str(p) for p in (*KERNELS.rglob("*.c"), *(KERNELS / "arch").rglob("*.h"),
                                     KERNELS / "variants.json")]
    return Extension(
        f"qllama._kernels.{pyx.stem}", sources, depends=depends,
        include_dirs=[np.get_include(), str(KERNELS)],
        extra_compile_args=C_FLAGS + ["-fopenmp"] + (["-march=native"] if NATIVE else []),
        extra_link_args=["-fopenmp"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
        + ([("QLLAMA_NATIVE", "1")] if NATIVE else []),  # clones.h
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
