#!/usr/bin/env bash
# Installs what `make test` and `make demo` need and the machine lacks: Debian packages
# (openssl, curl, python3-venv, util-linux for setsid, prometheus for the promtool that
# tests the chart's alerts, umoci, skopeo and runc for the image, wrk for benchmarks). Go, Rust and
# Python themselves come with the machine; Go modules, crates and Python tools are fetched
# by the build steps that use them.
set -euo pipefail
missing=()
command -v openssl >/dev/null || missing+=(openssl)
command -v curl >/dev/null || missing+=(curl)
command -v setsid >/dev/null || missing+=(util-linux)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
command -v promtool >/dev/null || missing+=(prometheus)
# The image: assembled by umoci, read by skopeo, run by runc in its test.
command -v umoci >/dev/null || missing+=(umoci)
command -v skopeo >/dev/null || missing+=(skopeo)
command -v runc >/dev/null || missing+=(runc)
[[ -s /etc/ssl/certs/ca-certificates.crt ]] || missing+=(ca-certificates)
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
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The prometheus package is here only for promtool: never leave its server running
  # (on a systemd machine the package starts it, on port 9090).
  if [[ " ${missing[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null \
      && systemctl is-active --quiet prometheus 2>/dev/null; then
    "${sudo[@]}" systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi
