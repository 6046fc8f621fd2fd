#!/usr/bin/env bash
# Adds up the `test result:` lines cargo printed into the log files given and prints one
# closing line: "tests: N passed, N failed, N skipped".
set -euo pipefail
awk '/^test result:/ {
  for (i = 1; i <= NF; i++) {
    if ($(i+1) ~ /^passed/) p += $i
    if ($(i+1) ~ /^failed/) f += $i
    if ($(i+1) ~ /^ignored/) s += $i
  }
} END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$@"
