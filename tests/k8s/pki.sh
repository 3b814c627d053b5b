#!/usr/bin/env bash
# Throw-away PKI for the loopback-only test control plane (openssl only).
# Usage: pki.sh <dir>   (idempotent: a finished dir, marked by .done, is reused as is)
#
# Why a separate CA rather than self-signed leaves: rustls (kube-rs) rejects a leaf that is used as
# its own CA (UnknownIssuer), and needs the IP SAN 127.0.0.1 on the serving cert.
set -euo pipefail
D=${1:?usage: pki.sh <dir>}
mkdir -p "$D"; cd "$D"
[[ -f .done ]] && exit 0
days=3650
# 1. cluster CA: also the client CA of the apiserver and the CSR-signing CA of the controller-manager.
openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days $days \
  -keyout ca.key -out ca.crt -subj "/CN=test-cluster-ca" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
leaf() { # <name> <subject> <extendedKeyUsage> [subjectAltName]
  local n=$1 subj=$2 eku=$3 san=${4:-}
  openssl req -newkey rsa:2048 -nodes -sha256 -keyout "$n.key" -out "$n.csr" -subj "$subj" 2>/dev/null
  { echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    if [[ -n $san ]]; then echo "subjectAltName=$san"; fi; } > "$n.ext"
  openssl x509 -req -in "$n.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 \
    -days $days -extfile "$n.ext" -out "$n.crt" 2>/dev/null
  rm -f "$n.csr" "$n.ext"
}
# 2. apiserver serving cert: loopback, the in-cluster names, and the first IP of the service CIDR
#    (clients that resolve the `kubernetes` Service would otherwise fail hostname verification).
leaf apiserver "/CN=kube-apiserver" serverAuth \
  "IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:${SERVICE_IP:-10.96.0.1}"
# 3. client certs: CN = user name, O = group. kcm/scheduler get their own identities so the
#    bootstrap RBAC roles (not system:masters) govern them, as in a real cluster.
leaf admin      "/O=system:masters/CN=test-admin"                clientAuth
leaf kcm        "/CN=system:kube-controller-manager"              clientAuth
leaf scheduler  "/CN=system:kube-scheduler"                       clientAuth
leaf kwok       "/O=system:masters/CN=kwok-controller"            clientAuth
# 4. service-account token signing key pair (apiserver signs/verifies, kcm signs legacy tokens).
openssl genrsa -out sa.key 2048 2>/dev/null
openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
chmod 600 ./*.key
touch .done
