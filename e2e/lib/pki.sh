#!/usr/bin/env bash
# Makes the test bed's PKI with openssl into $1 (idempotent): a CA, the apiserver's serving
# cert, an admin client cert (system:masters), the apiserver's kubelet client cert, a
# kubelet serving cert for virtual nodes on 127.0.0.1, the service-account key pair, and
# the aggregation layer's front-proxy CA and client cert (metrics-server trusts it).
set -euo pipefail
dir="$1"
mkdir -p "$dir"
cd "$dir"

openssl_quiet() { openssl "$@" 2>/dev/null; }

sign() { # sign NAME SUBJECT EXTENSIONS [CA]
  local name="$1" subject="$2" ext="$3" ca="${4:-ca}"
  openssl_quiet req -newkey rsa:2048 -nodes -keyout "$name.key" -out "$name.csr" -subj "$subject"
  printf '%b\n' "$ext" > "$name.ext"
  openssl_quiet x509 -req -in "$name.csr" -CA "$ca.crt" -CAkey "$ca.key" -CAcreateserial \
    -out "$name.crt" -days 3650 -extfile "$name.ext"
  rm -f "$name.csr" "$name.ext"
}

# Added after the first PKI existed: made on their own when missing.
if [[ ! -f front-proxy-client.crt ]]; then
  openssl_quiet req -x509 -newkey rsa:2048 -nodes -keyout front-proxy-ca.key -out front-proxy-ca.crt \
    -days 3650 -subj "/CN=spillway-testbed-front-proxy-ca"
  sign front-proxy-client "/CN=front-proxy-client" \
    "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth" front-proxy-ca
  chmod 600 ./*.key
fi

[[ -f done ]] && exit 0

openssl_quiet req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
  -subj "/CN=spillway-testbed-ca"

sign apiserver "/CN=kube-apiserver" \
  "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
sign admin "/O=system:masters/CN=testbed-admin" \
  "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth"
sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" \
  "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth"
sign kubelet "/CN=spillway-virtual-node" \
  "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost"
openssl_quiet genrsa -out sa.key 2048
openssl_quiet rsa -in sa.key -pubout -out sa.pub
chmod 600 ./*.key
touch done
