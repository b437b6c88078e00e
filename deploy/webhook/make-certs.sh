#!/bin/sh
# The webhook's serving certificate without cert-manager: a private CA and a certificate it signs for the
# Service's names, with openssl. Writes into OUT_DIR (default ./sidecar-agent-webhook-certs):
#   ca.crt ca.key tls.crt tls.key   the CA and the serving pair (keys readable by the owner only)
#   secret.yaml                      the kubernetes.io/tls Secret that deploy/webhook/webhook.yaml mounts
#   cabundle-patch.json              a JSON Patch setting caBundle in both entries of mutatingwebhook.yaml
# Then:
#   kubectl apply -f OUT_DIR/secret.yaml
#   kubectl apply -f deploy/webhook/mutatingwebhook.yaml
#   kubectl patch mutatingwebhookconfiguration sidecar-agent --type=json --patch-file OUT_DIR/cabundle-patch.json
# To renew, run it again with the same OUT_DIR before tls.crt expires and apply secret.yaml: the CA in OUT_DIR
# is kept, so caBundle stays valid and the webhook loads the new pair without a restart. Keep ca.key safe.
#
# Usage: make-certs.sh [OUT_DIR] [DAYS]   (DAYS: the serving certificate's lifetime, default 365)
set -eu

out=${1:-./sidecar-agent-webhook-certs}
days=${2:-365}
service=sidecar-agent-webhook
namespace=sidecar-agent
secret=sidecar-agent-webhook-tls

command -v openssl >/dev/null || { echo "make-certs.sh: needs openssl" >&2; exit 2; }
case $days in ''|*[!0-9]*) echo "make-certs.sh: DAYS must be a number of days, got '$days'" >&2; exit 2;; esac
mkdir -p "$out"
umask 077

if [ ! -f "$out/ca.key" ] || [ ! -f "$out/ca.crt" ]; then
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -sha256 -days 3650 \
    -subj "/CN=sidecar-agent webhook CA" -keyout "$out/ca.key" -out "$out/ca.crt" 2>/dev/null
fi

names="DNS:$service.$namespace.svc,DNS:$service.$namespace.svc.cluster.local"
openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -sha256 \
  -subj "/CN=$service.$namespace.svc" -keyout "$out/tls.key" -out "$out/tls.csr" 2>/dev/null
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\nbasicConstraints=CA:FALSE\n' \
  "$names" > "$out/tls.ext"
openssl x509 -req -sha256 -days "$days" -in "$out/tls.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" \
  -CAcreateserial -extfile "$out/tls.ext" -out "$out/tls.crt" 2>/dev/null
rm -f "$out/tls.csr" "$out/tls.ext" "$out/ca.srl"

b64() { openssl base64 -A -in "$1"; }
cat > "$out/secret.yaml" <<YAML
apiVersion: v1
kind: Secret
metadata:
  name: $secret
  namespace: $namespace
type: kubernetes.io/tls
data:
  ca.crt: $(b64 "$out/ca.crt")
  tls.crt: $(b64 "$out/tls.crt")
  tls.key: $(b64 "$out/tls.key")
YAML
bundle=$(b64 "$out/ca.crt")
cat > "$out/cabundle-patch.json" <<JSON
[{"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": "$bundle"},
 {"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": "$bundle"}]
JSON
echo "make-certs.sh: wrote $out/secret.yaml and $out/cabundle-patch.json (certificate valid $days days)" >&2
