# Variants: what this build compiled and what this CPU offers (qllama/kernels.py
# decides which one runs). Included by engine.pyx.

FEATURES = tuple(qllama_feature_names[i].decode() for i in range(qllama_n_features))  # bit i


def cpu_features():
    """The instruction sets this CPU and OS support, as names (cpu.h)."""
    cdef uint64_t bits = qllama_cpu_features()
    return [name for i, name in enumerate(FEATURES) if bits >> i & 1]


def compiled_variants():
    """[(name, [features it needs])] for every variant in this build."""
    cdef int n, i
    cdef const qllama_variant* v = qllama_variants(&n)
    return [(v[i].name.decode(), [f for j, f in enumerate(FEATURES) if v[i].needs >> j & 1])
            for i in range(n)]


def cpu_vendor():
    """x86 cpuid's vendor string ("GenuineIntel", "AuthenticAMD"), else ""."""
    cdef char v[13]
    qllama_cpu_vendor(v)
    return v[:12].split(b"\0")[0].decode("ascii", "replace")


def amx_permit():
    """Ask Linux for the AMX tile state (arch_prctl); True when granted."""
    return bool(qllama_amx_permit())


cdef const qllama_kernels* variant_table(str name) except NULL:
    """The table of a compiled variant this CPU runs: qllama/kernels.py chooses, and
    this check keeps the engine's own entry points (Weights, Kernels) from SIGILL."""
    cdef int n, i
    cdef const qllama_variant* v = qllama_variants(&n)
    for i in range(n):
        if v[i].name.decode() == name:
            if v[i].needs & ~qllama_cpu_features():
                raise ValueError(f"kernel variant {name!r} needs CPU features this CPU lacks")
            if name == "amx" and not qllama_amx_permit():
                raise ValueError("kernel variant 'amx': the OS refused the AMX tile state")
            return v[i].table
    raise ValueError(f"kernel variant {name!r} is not in this build")
