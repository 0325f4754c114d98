#!/usr/bin/env bash
# Make a self-signed certificate and key for a LAN or a first test, valid for the names and
# addresses you give (localhost and 127.0.0.1 are always included):
#   certs/make_cert.sh chat.example.lan 192.168.1.20
# Writes certs/cert.pem and certs/key.pem (the key readable by you only). Browsers will warn
# that they do not know who signed it; for a public site use a real certificate (certs/README.md).
set -euo pipefail
dir="${CERT_DIR:-$(cd "$(dirname "$0")" && pwd)}"  # CERT_DIR writes elsewhere
days=${DAYS:-825}
names=(localhost 127.0.0.1 ::1 "$@")
san=""
for name in "${names[@]}"; do
  if [[ $name =~ ^[0-9.]+$ || $name == *:* ]]; then entry="IP:$name"; else entry="DNS:$name"; fi
  san="${san:+$san,}$entry"
done
common=${1:-localhost}
umask 077
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 -days "$days" \
  -keyout "$dir/key.pem" -out "$dir/cert.pem" -subj "/CN=$common" \
  -addext "subjectAltName=$san" -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,digitalSignature,keyCertSign" -addext "extendedKeyUsage=serverAuth" 2>/dev/null
chmod 600 "$dir/key.pem"
chmod 644 "$dir/cert.pem"
echo "wrote $dir/cert.pem and $dir/key.pem for: ${names[*]} (valid $days days)"
echo "the app serves HTTPS with them at its next start; to trust it on a device, import cert.pem there"
