#!/usr/bin/env bash
# Regenerates the TLS test fixtures (a private CA, a server certificate for localhost/127.0.0.1,
# a client certificate, and an unrelated CA). Test-only keys: never use them anywhere else.
set -euo pipefail
cd "$(dirname "$0")"
days=36500
ec() { openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out "$1"; }
ca() { # name cn
  ec "$1.key"
  openssl req -x509 -new -key "$1.key" -sha256 -days $days -subj "/CN=$2" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$1.pem"
}
leaf() { # name cn san eku
  ec "$1.key"
  openssl req -new -key "$1.key" -subj "/CN=$2" -out "$1.csr"
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\nsubjectAltName=%s\n' "$4" "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -sha256 -days $days \
    -extfile "$1.ext" -out "$1.pem"
  rm "$1.csr" "$1.ext"
}
ca ca "shardtally test CA"
ca other-ca "some other CA"
leaf server "localhost" "DNS:localhost,IP:127.0.0.1" serverAuth
leaf client "gateway-test" "DNS:gateway-test" clientAuth
rm -f ca.srl ca.key other-ca.key
