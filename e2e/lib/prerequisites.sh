#!/usr/bin/env bash
# Installs what `make test` and `make demo` need and the machine lacks: Debian packages
# (openssl, curl, python3-venv, util-linux for setsid, wrk for benchmarks). Go, Rust and
# Python themselves come with the machine; Go modules, crates and Python tools are fetched
# by the build steps that use them.
set -euo pipefail
missing=()
command -v openssl >/dev/null || missing+=(openssl)
command -v curl >/dev/null || missing+=(curl)
command -v setsid >/dev/null || missing+=(util-linux)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if [[ "${1:-}" == "--bench" ]]; then
  command -v wrk >/dev/null || missing+=(wrk)
fi
for tool in go cargo python3; do
  command -v "$tool" >/dev/null || { echo "prerequisites: $tool is not installed; install it first (see README)" >&2; exit 1; }
done
if (( ${#missing[@]} )); then
  echo "prerequisites: installing ${missing[*]}" >&2
  if [[ $(id -u) -eq 0 ]]; then sudo=(); else sudo=(sudo); fi
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi
