#!/bin/sh
# Turns a framework image into a podbay workspace image. Run as root during `docker build`
# by every image under images/, NGC-derived or not:
#   - a venv at /opt/podbay that also sees the image's own packages (the NGC frameworks
#     live in the system site-packages), with jupyterhub-singleuser at the hub's version,
#     JupyterLab and, when code-server is there, jupyter-vscode-proxy;
#   - code-server (VS Code in the browser) from its release tarball, when asked for;
#   - the user jovyan (uid 1000, gid 100) with /home/jovyan, which podbay mounts as the
#     persistent home.
# GPU visibility is left to the container runtime (NVIDIA_VISIBLE_DEVICES per workspace).
#
# Environment: JUPYTERHUB_VERSION (required), CODE_SERVER_VERSION (optional),
# PODBAY_WHEELS (a folder of wheels: install with no index, for registry-free builds).
set -eu

: "${JUPYTERHUB_VERSION:?JUPYTERHUB_VERSION must be the hub's jupyterhub version}"
here="$(dirname "$0")"
if [ -f "$here/host-ca.crt" ]; then
  # Trust the build host's CA bundle: on networks with a TLS-inspecting proxy, PyPI and
  # GitHub are only reachable through it.
  export PIP_CERT="$here/host-ca.crt" SSL_CERT_FILE="$here/host-ca.crt"
fi

if ! python3 -m venv --system-site-packages /opt/podbay 2>/dev/null; then
  # Ubuntu-based images may lack ensurepip.
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
  rm -rf /opt/podbay && python3 -m venv --system-site-packages /opt/podbay
fi
pip_install() {
  if [ -n "${PODBAY_WHEELS:-}" ]; then
    /opt/podbay/bin/pip install --no-cache-dir --disable-pip-version-check --no-index \
      --find-links "$PODBAY_WHEELS" "$@"
  else
    /opt/podbay/bin/pip install --no-cache-dir --disable-pip-version-check "$@"
  fi
}
pip_install "jupyterhub==${JUPYTERHUB_VERSION}" jupyterlab

if [ -n "${CODE_SERVER_VERSION:-}" ]; then
  arch="$(uname -m | sed -e 's/x86_64/amd64/' -e 's/aarch64/arm64/')"
  url="https://github.com/coder/code-server/releases/download/v${CODE_SERVER_VERSION}/code-server-${CODE_SERVER_VERSION}-linux-${arch}.tar.gz"
  /opt/podbay/bin/python - "$url" <<'PY'
import sys, tarfile, urllib.request
with urllib.request.urlopen(sys.argv[1]) as r, tarfile.open(fileobj=r, mode="r|gz") as t:
    t.extractall("/opt", filter="data")
PY
  ln -sfn /opt/code-server-"${CODE_SERVER_VERSION}"-linux-"$arch" /opt/code-server
  ln -sf /opt/code-server/bin/code-server /usr/local/bin/code-server
  pip_install jupyter-vscode-proxy
fi

# Ubuntu 24.04 based images (NGC 24.xx and later) ship a user "ubuntu" with uid 1000.
existing="$(getent passwd 1000 | cut -d: -f1 || true)"
if [ -n "$existing" ] && [ "$existing" != jovyan ]; then
  userdel --remove "$existing" 2>/dev/null || userdel "$existing"
fi
getent group 100 >/dev/null || groupadd --gid 100 users
useradd --create-home --home-dir /home/jovyan --uid 1000 --gid 100 --shell /bin/bash jovyan
ln -sf /opt/podbay/bin/jupyterhub-singleuser /usr/local/bin/jupyterhub-singleuser
