#!/usr/bin/env bash
# Build podbay's hub image from the repository root, trusting this host's CA bundle.
#   BASE   base image (default python:3.11-slim-bookworm; podbay/debian-root:bookworm,
#          made by `podbay images build base`, needs no registry)
#   TAG    image tag (default podbay/hub:latest)
#   DOCKERFILE  docker/Dockerfile (one GPU server) or docker/Dockerfile.k8s (the hub that the
#          Zero to JupyterHub chart runs; tag it podbay/hub-k8s:2026.11)
set -euo pipefail
cd "$(dirname "$0")/.."
ca=""
for f in "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
  if [ -n "$f" ] && [ -f "$f" ]; then ca="$f"; break; fi
done
rm -f docker/ca/host-ca.crt
[ -n "$ca" ] && cp "$ca" docker/ca/host-ca.crt
trap 'rm -f docker/ca/host-ca.crt' EXIT
# The build reaches Debian, npm and PyPI over the host's network: no bridge network.
docker build --network host -f "${DOCKERFILE:-docker/Dockerfile}" \
  --build-arg "BASE=${BASE:-python:3.11-slim-bookworm}" -t "${TAG:-podbay/hub:latest}" .
