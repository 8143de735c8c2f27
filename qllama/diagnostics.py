"""What this process uses, from /proc/self (Linux): peak resident memory for the
stats lines, and which mappings are backed by 2 MiB pages (benchmarks, tests)."""
from __future__ import annotations


def peak_rss_bytes() -> int:
    """This process's peak resident set (mapped weight pages included): VmHWM of its
    own address space; ru_maxrss would carry a parent's peak over fork and exec."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def mappings() -> list[tuple[int, int, dict]]:
    """This process's mappings from /proc/self/smaps: (start, end, {field: text}), the
    fields as "Rss", "FilePmdMapped", "VmFlags"; [] where there is no smaps."""
    out = []
    try:
        with open("/proc/self/smaps") as f:
            for line in f:
                key, _, value = line.partition(" ")
                if not key.endswith(":"):  # a mapping's first line: start-end perms ...
                    start, end = (int(a, 16) for a in key.split("-"))
                    out.append((start, end, {}))
                elif out:
                    out[-1][2][key[:-1]] = value.strip()
    except OSError:
        return []
    return out


def huge_page_bytes(buffer) -> int | None:
    """Bytes of the file mapping(s) under `buffer` (an ndarray) that are mapped with
    2 MiB pages now (FilePmdMapped); None where that is not known."""
    lo, found, total = buffer.ctypes.data, False, 0
    hi = lo + buffer.nbytes
    for start, end, fields in mappings():
        if start < hi and lo < end and "FilePmdMapped" in fields:
            found = True
            total += int(fields["FilePmdMapped"].split()[0]) * 1024
    return total if found else None


def peak_rss_mb() -> float:
    return peak_rss_bytes() / 2**20
