"""Files in and out: the one opener of inputs (`inputs`), chunked reading of inputs
(`chunks`), outputs that appear whole or not at all (`atomic`), written in 2 MiB-aligned
pieces (`blockwriter`)."""
