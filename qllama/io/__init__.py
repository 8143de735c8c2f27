"""Files in and out: chunked reading of inputs (`chunks`), outputs that appear whole
or not at all (`atomic`), written in 2 MiB-aligned pieces (`blockwriter`)."""
