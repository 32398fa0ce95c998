#!/usr/bin/env bash
# System packages the tests need, from Debian: nginx (an HTTP server with Range support that
# the prefetch tests and benchmark download from). Idempotent: does nothing when present.
set -euo pipefail
if command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]]; then
  exit 0
fi
SUDO=()
[[ "$(id -u)" == 0 ]] || SUDO=(sudo)
echo "install-test-deps: installing nginx-light from Debian"
"${SUDO[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq nginx-light >/dev/null
