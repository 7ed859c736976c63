"""The docker backend for real: a Docker engine, the registry-free workspace image that
`podbay images build` makes, workspaces spawned through JupyterHub's REST API as
containers, and training jobs as containers.

There is no GPU here. The test setup starts dockerd with tests/gpu-shim on its PATH, which
stands in for NVIDIA's runtime hook: dockerd then accepts GPU device requests, puts the
requested IDs into the container's NVIDIA_VISIBLE_DEVICES and runs the hook, which records
what it was asked for. Everything else (containers, mounts, users, networking) is real.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import yaml
import pytest

from tests.standins.dcgm_exporter import Exporter
from tests.harness import browser_login, claimed, DOCKER_CONFIG, DOCKER_TEST_PREFIXES, end, http_client, Hub, hub_on, IMAGE, real_browser, require, ROOT, wait_job


PREFIX = DOCKER_TEST_PREFIXES[0]
SHIM_LOG = Path("/run/podbay-gpu-shim")
NETWORK = f"{PREFIX}-net"
# The host-network hub's: its job ids start at 1 too, and must not name the other hub's containers.
HOST_PREFIX = DOCKER_TEST_PREFIXES[1]

pytestmark = pytest.mark.hub


@pytest.fixture(scope="module")
def dhub(tmp_path_factory, image):
    # The docker test config, with GPU utilisation from a DCGM exporter stand-in: every GPU
    # busy unless a test says otherwise, and an idle rule for gpu-1 workspaces.
    cfg = yaml.safe_load(DOCKER_CONFIG.read_text())
    exporter = Exporter([g["uuid"] for n in cfg["nodes"] for g in n["gpus"] if not g.get("mig")], default=100.0)
    for im in cfg["images"]:
        if im.get("build"):
            im["build"] = str((DOCKER_CONFIG.parent / im["build"]).resolve())
    cfg["usage"] = {"source": {"type": "dcgm", "urls": [exporter.url]}, "interval": 1}
    cfg["idle"] = {"rules": [{"profiles": ["gpu-1"], "below": 5, "after": "14s", "warn_before": "10s",
                              "action": "release-gpu"}]}
    # --keep-workspaces, so that a restart can be tested; the docker fixture removes what is left.
    h = hub_on(cfg, tmp_path_factory.mktemp("dockerhub"), keep_workspaces=True)
    h.exporter = exporter
    yield h
    h.stop()
    exporter.close()


def container_of(hub: Hub, docker, user: str, name: str) -> dict:
    ledger = hub.book()
    try:
        alloc = ledger.get(f"workspace:{user}/{name}")
    finally:
        ledger.dispose()
    assert alloc is not None and alloc.ref.get("container"), f"no container recorded for {user}/{name}"
    return docker.api.inspect_container(alloc.ref["container"])


def sh(docker, container: str, script: str) -> tuple[int, str]:
    exec_id = docker.api.exec_create(container, ["sh", "-c", script])
    out = docker.api.exec_start(exec_id).decode(errors="replace")
    return docker.api.exec_inspect(exec_id)["ExitCode"], out



def test_image_is_registry_free_and_matches_the_hub(docker, image):
    import jupyterhub

    out = docker.containers.run(IMAGE, ["sh", "-c", "id; echo $HOME; jupyterhub-singleuser --version; "
                                        "python -c 'import jupyterlab; print(jupyterlab.__version__)'"],
                                network_mode="none", remove=True).decode()
    lines = out.split("\n")
    assert lines[0] == "uid=1000(jovyan) gid=100(users) groups=100(users)"
    assert lines[1] == "/home/jovyan"
    assert lines[2] == jupyterhub.__version__
    ls = subprocess.run([sys.executable, "-m", "podbay.hub.cli", "images", "ls", "--config", str(DOCKER_CONFIG)],
                        capture_output=True, text=True)
    assert ls.returncode == 0, ls.stderr
    rows = {line.split()[0]: line.split(None, 2)[2] for line in ls.stdout.splitlines()}
    assert rows == {"base": "present", "pytorch": "missing (no build folder)", "broken": "present"}, ls.stdout
    # Nothing of the base came from a registry: its history starts at the imported root.
    assert docker.images.get("podbay/debian-root:bookworm").id in {
        layer["Id"] for layer in docker.api.history(IMAGE)}


def test_cpu_workspace_is_a_container_with_volumes_and_no_gpu(dhub, docker):
    (dhub.data_dir / "volumes" / "imagenet" / "README").write_text("imagenet sample\n")
    r = dhub.start_server("alice", "cpu", {"profile": "cpu", "image": "base", "volumes": ["imagenet", "scratch"]})
    assert r.status_code in (201, 202), r.text
    c = container_of(dhub, docker, "alice", "cpu")
    cid = c["Id"]
    assert c["Config"]["Image"] == IMAGE
    assert c["HostConfig"]["NetworkMode"] == NETWORK
    assert not c["HostConfig"].get("PortBindings")
    assert not c["HostConfig"].get("DeviceRequests")
    assert not (SHIM_LOG / f"{cid}.json").exists(), "a CPU workspace must not ask the runtime for GPUs"

    code, out = sh(docker, cid, "id -un; id -u; id -g; echo \"NV=$NVIDIA_VISIBLE_DEVICES CUDA=[$CUDA_VISIBLE_DEVICES]\"")
    assert out.split("\n")[:4] == ["jovyan", "1000", "100", "NV=void CUDA=[]"], out
    code, out = sh(docker, cid, "cat ~/data/imagenet/README && touch ~/data/imagenet/x")
    assert code != 0 and "imagenet sample" in out and "Read-only file system" in out, out
    code, out = sh(docker, cid, "echo shared > ~/data/scratch/from-alice && cat ~/data/scratch/from-alice")
    assert code == 0 and "shared" in out, out
    assert (dhub.data_dir / "volumes" / "scratch" / "from-alice").read_text() == "shared\n"

    # Reachable through the proxy, at its own address on the workspace network.
    with http_client(headers={"Authorization": f"token {dhub.token('alice')}"}) as http:
        status = http.get(f"{dhub.url}/user/alice/cpu/api/status", timeout=30)
    assert status.status_code == 200, status.text
    env = dict(e.split("=", 1) for e in c["Config"]["Env"])
    assert urlparse(env["JUPYTERHUB_SERVICE_URL"]).port == 8888
    assert urlparse(env["JUPYTERHUB_API_URL"]).hostname == network_of(docker)["gateway"]
    assert listening(docker, cid) == {("0.0.0.0", 8888)}
    dhub.stop_server("alice", "cpu")


def network_of(docker, name: str = None) -> dict:
    net = docker.api.inspect_network(name or NETWORK)
    (ipam,) = net["IPAM"]["Config"]
    return {"gateway": ipam["Gateway"], "subnet": ipam["Subnet"], "internal": net["Internal"],
            "options": net["Options"], "labels": net["Labels"]}


def listening(docker, container: str) -> set[tuple[str, int]]:
    """The TCP sockets a container listens on, (address, port), from its own /proc/net/tcp;
    not Docker's own DNS resolver, which every container on a user-defined network has at
    127.0.0.11."""
    code, out = sh(docker, container, "cat /proc/net/tcp /proc/net/tcp6")
    found = set()
    for line in out.splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[3] == "0A" and ":" in fields[1]:
            addr, port = fields[1].split(":")
            if len(addr) == 8:
                ip = ".".join(str(b) for b in reversed(bytes.fromhex(addr)))
            else:
                ip = "::" if set(addr) == {"0"} else addr
            if ip != "127.0.0.11":
                found.add((ip, int(port, 16)))
    return found


def test_on_a_shared_origin_browser_approval_and_job_output_on_pages_are_off(dhub):
    """Workspaces of several people on the hub's own origin (no subdomain_host): what a page of
    one could turn into another's credential or action is off, and the hub said so at start."""
    navigate = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document", "Sec-Fetch-Site": "none"}
    r = httpx.get(f"{dhub.url}/services/podbay/pair", headers=navigate, timeout=30)
    assert r.status_code == 403 and "podbay login --paste" in r.text and "subdomain_host" in r.text
    script = {"Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty", "Sec-Fetch-Site": "same-origin"}
    r = httpx.get(f"{dhub.url}/services/podbay/pages/jobs/1/logs", headers=script, timeout=30)
    assert r.status_code == 403 and "podbay job logs" in r.text
    assert "no c.JupyterHub.subdomain_host" in dhub.log_path.read_text()
    # The command line is told at once and asks for a token (podbay login --paste) instead.
    assert httpx.post(f"{dhub.url}/services/podbay/api/v1/pairings", json={}, timeout=30).status_code == 404


def test_home_survives_stop_start_and_recreation(dhub, docker):
    opts = {"profile": "cpu", "image": "base"}
    dhub.start_server("alice", "home", opts)
    first = container_of(dhub, docker, "alice", "home")["Id"]
    code, out = sh(docker, first, "echo 'my notebook' > ~/notes.txt")
    assert code == 0, out
    dhub.stop_server("alice", "home")
    with pytest.raises(Exception):
        docker.api.inspect_container(first)  # the container is gone, the home is not
    dhub.start_server("alice", "home", opts)
    second = container_of(dhub, docker, "alice", "home")["Id"]
    assert second != first
    code, out = sh(docker, second, "cat ~/notes.txt; stat -c %U ~/notes.txt")
    assert out.split("\n")[:2] == ["my notebook", "jovyan"], out
    # Another workspace of the same user shares the per-user home.
    dhub.start_server("alice", "home2", opts)
    code, out = sh(docker, container_of(dhub, docker, "alice", "home2")["Id"], "cat ~/notes.txt")
    assert out.strip() == "my notebook"
    dhub.stop_server("alice", "home")
    dhub.stop_server("alice", "home2")


def test_ssh_into_a_container_workspace_through_the_hub(dhub, docker, tmp_path_factory):
    """The image's sshd, as jovyan, behind the workspace's Jupyter server; the real OpenSSH
    client with `ProxyCommand podbay ssh-proxy` (tests/integration/test_ssh.py does all of it
    on the local backend)."""
    from tests.integration.test_ssh import Person, free_port, kernel_prints

    person = Person(dhub, tmp_path_factory.mktemp("alice-laptop"), "alice")
    assert person.podbay("login", dhub.url, "--token", dhub.new_token("alice")).returncode == 0
    assert person.podbay("keys", "add", f"{person.key}.pub").returncode == 0
    opts = {"profile": "mig-1g.10gb", "image": "base", "volumes": ["scratch"]}
    dhub.start_server("alice", "ssh", opts)
    try:
        r = person.podbay("ssh", *person.ssh_options(), "ssh", "--",
                          'id -un; echo "$HOME"; pwd; echo "$NVIDIA_VISIBLE_DEVICES"; ls -d ~/data/scratch')
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == ["jovyan", "/home/jovyan", "/home/jovyan",
                                         *claimed(dhub, "workspace:alice/ssh"), "/home/jovyan/data/scratch"]
        assert person.podbay("ssh-config", "--write").returncode == 0
        payload = tmp_path_factory.mktemp("payload") / "weights.bin"
        payload.write_bytes(bytes(range(256)) * 4096)
        scp = subprocess.run(["scp", "-F", str(person.config), *person.ssh_options(), str(payload),
                              "podbay.ssh:weights.bin"], capture_output=True, text=True, env=person.env, timeout=60)
        assert scp.returncode == 0, scp.stderr
        cid = container_of(dhub, docker, "alice", "ssh")["Id"]
        code, out = sh(docker, cid, "sha256sum < /home/jovyan/weights.bin; stat -c %U /home/jovyan/weights.bin")
        import hashlib

        assert out.split()[0] == hashlib.sha256(payload.read_bytes()).hexdigest() and out.split()[-1] == "jovyan"
        sh(docker, cid, "echo 'written in the container' > /home/jovyan/out.txt")
        back = payload.parent / "out.txt"
        scp = subprocess.run(["scp", "-F", str(person.config), *person.ssh_options(), "podbay.ssh:out.txt", str(back)],
                             capture_output=True, text=True, env=person.env, timeout=60)
        assert scp.returncode == 0 and back.read_text() == "written in the container\n", scp.stderr
        stranger = person.keygen("stranger")
        refused = person.podbay("ssh", "ssh", *person.ssh_options(stranger), "--", "true")
        assert refused.returncode == 1 and "not one you registered" in refused.stderr
        # A server on the workspace's own loopback, which nothing outside it can reach but the tunnel.
        inner, outer = free_port(), free_port()
        tunnel = subprocess.Popen(
            ["ssh", "-F", str(person.config), *person.ssh_options(), "-L", f"127.0.0.1:{outer}:127.0.0.1:{inner}",
             "podbay.ssh", f"cd ~ && exec python3 -m http.server {inner} --bind 127.0.0.1"],
            env=person.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline, got = time.monotonic() + 30, None
            while got is None and time.monotonic() < deadline:
                assert tunnel.poll() is None, tunnel.stderr.read().decode()
                try:
                    got = httpx.get(f"http://127.0.0.1:{outer}/weights.bin", timeout=5).content
                except httpx.HTTPError:
                    time.sleep(0.3)
            assert got == payload.read_bytes()
        finally:
            # Cleanup, not a check: ssh waits for its ProxyCommand, which waits up to websockets'
            # close timeout (10 s) for the hub's answer to its close, longer on a busy machine.
            end(tunnel, 60)
        # A new container after a restart: the host key is the one on the home.
        dhub.stop_server("alice", "ssh")
        dhub.start_server("alice", "ssh", opts)
        assert container_of(dhub, docker, "alice", "ssh")["Id"] != cid
        again = person.ssh("-o", "StrictHostKeyChecking=yes", "podbay.ssh", "cat ~/weights.bin | wc -c")
        assert again.returncode == 0 and again.stdout.strip() == str(len(payload.read_bytes())), again.stderr
        # VS Code's Jupyter extension, with the token podbay ws open --vscode prints.
        opened = person.podbay("ws", "open", "ssh", "--vscode")
        assert opened.returncode == 0, opened.stderr
        token = re.search(r"token\s+(\S+)", opened.stdout).group(1)
        assert kernel_prints(f"{dhub.url}/user/alice/ssh/", token, "import os; print(os.environ['NVIDIA_VISIBLE_DEVICES'])") \
            == ",".join(claimed(dhub, "workspace:alice/ssh"))
    finally:
        dhub.stop_server("alice", "ssh")


@pytest.mark.browser
def test_vscode_opens_on_the_home_in_a_real_browser(dhub, docker):
    # code-server came from npm with Node.js from PyPI (the image's build_args), and
    # jupyter-server-proxy serves it at /vscode/ inside the workspace, behind the hub.
    dhub.start_server("alice", "code", {"profile": "cpu", "image": "base"})
    cid = container_of(dhub, docker, "alice", "code")["Id"]
    code, out = sh(docker, cid, "echo 'print(1)' > ~/train.py && code-server --version")
    assert code == 0 and out.strip().splitlines()[-1].startswith("4.139.1 "), out

    with real_browser() as browser:
        page = browser.new_page()
        page.set_default_timeout(90_000)
        browser_login(page, dhub, "alice")
        # From JupyterLab's launcher, as a user finds it: the card opens VS Code in a new tab.
        page.goto(f"{dhub.url}/user/alice/code/lab")
        with page.expect_popup() as popup:
            page.locator(".jp-LauncherCard", has_text="VS Code").click()
        vscode = popup.value
        vscode.set_default_timeout(90_000)
        vscode.wait_for_url("**/user/alice/code/vscode/?folder=/home/jovyan")
        vscode.locator(".monaco-workbench").wait_for()
        # The explorer lists the home: the workbench talks to the server in the container
        # over its websocket, through the proxy.
        vscode.locator(".explorer-folders-view").get_by_text("train.py", exact=True).wait_for()
        # It started quiet: her home is trusted (no Restricted Mode, no trust prompt), no
        # welcome tab, no chat panel.
        assert vscode.get_by_text("Restricted Mode").count() == 0
        assert vscode.locator(".monaco-dialog-box").count() == 0
        assert not vscode.locator(".part.auxiliarybar").is_visible()
        assert vscode.locator(".tab", has_text="Welcome").count() == 0
    # code-server's node names its main thread, so look for it by its arguments.
    code, out = sh(docker, cid, "ps -eo user=,args=")
    processes = [line.split(None, 1) for line in out.strip().splitlines()]
    assert any("code-server/out/node/entry.js" in args and "--disable-workspace-trust" in args
               for _, args in processes), out
    # Seeded at her first start, in her own settings (hers to change, on her home).
    code, seeded = sh(docker, cid, "cat ~/.local/share/code-server/User/settings.json")
    assert code == 0 and '"chat.disableAIFeatures": true' in seeded, seeded
    assert {user for user, _ in processes} == {"jovyan"}, out
    dhub.stop_server("alice", "code")


def test_gpu_workspaces_get_exactly_their_claimed_devices(dhub, docker):
    dhub.start_server("alice", "mig", {"profile": "mig-1g.10gb", "image": "base"})
    dhub.start_server("alice", "full", {"profile": "gpu-1", "image": "base"})
    seen_addresses = set()
    for name in ("mig", "full"):
        devices = claimed(dhub, f"workspace:alice/{name}")
        assert len(devices) == 1
        c = container_of(dhub, docker, "alice", name)
        (request,) = c["HostConfig"]["DeviceRequests"]
        assert request["Driver"] == "nvidia" and request["DeviceIDs"] == devices
        assert request["Capabilities"] == [["gpu"]]
        # What the container runtime was handed (recorded by the stand-in hook).
        shim = SHIM_LOG / f"{c['Id']}.json"
        require(shim.exists(), "dockerd does not run the GPU stand-in hook (start it as scripts/dev.sh test does)")
        record = json.loads(shim.read_text())
        assert record["args"] == ["prestart"]
        assert record["env"]["NVIDIA_VISIBLE_DEVICES"] == devices[0]
        seen_addresses.add(c["NetworkSettings"]["Networks"][NETWORK]["IPAddress"])
    assert claimed(dhub, "workspace:alice/mig")[0].startswith("MIG-")
    assert claimed(dhub, "workspace:alice/full")[0].startswith("GPU-")
    assert len(seen_addresses) == 2, "each workspace has its own address on the workspace network"
    dhub.stop_server("alice", "mig")
    dhub.stop_server("alice", "full")
    assert claimed(dhub, "workspace:alice/mig") == [] and claimed(dhub, "workspace:alice/full") == []
    # A failed GPU start, then the same workspace without a GPU: no device request lingers.
    r = dhub.start_server("alice", "retry", {"profile": "gpu-1", "image": "broken"})
    assert r.status_code == 500, r.text
    dhub.start_server("alice", "retry", {"profile": "cpu", "image": "base"})
    c = container_of(dhub, docker, "alice", "retry")
    assert not c["HostConfig"].get("DeviceRequests"), c["HostConfig"].get("DeviceRequests")
    assert "NVIDIA_VISIBLE_DEVICES=void" in c["Config"]["Env"]
    dhub.stop_server("alice", "retry")


# --- isolation between users' workspaces -----------------------------------------------

# Run inside bob's workspace: what it can connect to. No redirects are followed: a 302 to
# the login page is an answer, not a way in.
PROBE = r"""
import json, os, socket, sys, urllib.error, urllib.request

class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None

opener = urllib.request.build_opener(NoRedirect)
out = {}
for name, t in json.loads(sys.argv[1]).items():
    try:
        if "resolve" in t:  # a name, through the container's resolver and Docker's own DNS
            out[name] = "resolved: " + socket.gethostbyname(t["resolve"])
        elif "raw" in t:  # a raw socket: ARP and spoofing games on the shared bridge
            socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()
            out[name] = "open"
        elif "url" in t:
            headers = t.get("headers", {})
            if t.get("workspace_token"):  # this workspace's own, as its terminal has it
                headers = {"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"]}
            with opener.open(urllib.request.Request(t["url"], headers=headers), timeout=10) as r:
                out[name] = [r.status, r.read(2000).decode(errors="replace")]
        else:
            socket.create_connection((t["host"], t["port"]), timeout=3).close()
            out[name] = "open"
    except urllib.error.HTTPError as e:
        out[name] = [e.code, ""]
    except ConnectionRefusedError:
        out[name] = "refused"
    except socket.gaierror:
        out[name] = "unresolved"
    except PermissionError:
        out[name] = "not permitted"
    except OSError as e:
        out[name] = "unreachable: %s" % e
print(json.dumps(out))
"""

ALICE_SECRET = "alice's private notes"
ALICE_LOOPBACK_PORT = 47001  # a server alice starts on 127.0.0.1 in her workspace
JOB_LOOPBACK_PORT = 47002  # and one her training job starts on 127.0.0.1 in its container


def _address(container: dict) -> str | None:
    return next((n["IPAddress"] for n in container["NetworkSettings"]["Networks"].values() if n.get("IPAddress")), None)


def _serve_on_loopback(docker, container: str, port: int) -> None:
    sh(docker, container, f"mkdir -p /tmp/srv && echo \"{ALICE_SECRET}\" > /tmp/srv/notes.txt && "
                          f"cd /tmp/srv && (python3 -m http.server --bind 127.0.0.1 {port} >/dev/null 2>&1 &)")
    deadline = time.monotonic() + 20
    while ("127.0.0.1", port) not in listening(docker, container):
        assert time.monotonic() < deadline, f"nothing listens on 127.0.0.1:{port}"
        time.sleep(0.2)


def cross_user_probe(hub: Hub, docker, prefix: str = PREFIX) -> dict:
    """alice starts a workspace, opens VS Code in it, starts a server on its loopback and a
    training job that does the same; bob, from a terminal in his own workspace, tries every
    way to them, and to the hub's own loopback services, that the issue's scan found."""
    hub.start_server("alice", "iso", {"profile": "cpu", "image": "base"})
    hub.start_server("bob", "iso", {"profile": "cpu", "image": "base"})
    alice, bob = container_of(hub, docker, "alice", "iso"), container_of(hub, docker, "bob", "iso")
    facts: dict = {"alice_network": alice["HostConfig"]["NetworkMode"], "bob_network": bob["HostConfig"]["NetworkMode"]}

    # alice's own way to VS Code: through the hub, with her login.
    with http_client(headers={"Authorization": f"token {hub.token('alice')}"}, timeout=120,
                      follow_redirects=True) as http:
        r = http.get(f"{hub.url}/user/alice/iso/vscode/")
        facts["alice_vscode"] = r.status_code
    code, ps = sh(docker, alice["Id"], "ps -eo args=")
    facts["code_server"] = next((line for line in ps.splitlines() if "code-server/out/node/entry.js" in line), "")
    if "--socket " in facts["code_server"]:
        socket_path = facts["code_server"].split("--socket ", 1)[1].split()[0]
        facts["code_server_socket"] = sh(docker, alice["Id"], f"stat -c '%a %U %F' {socket_path}")[1].strip()
    _serve_on_loopback(docker, alice["Id"], ALICE_LOOPBACK_PORT)
    facts["alice_listens"] = listening(docker, alice["Id"])

    headers = {"Authorization": f"token {hub.token('alice')}"}
    with http_client(base_url=f"{hub.url}/services/podbay/api/v1", headers=headers, timeout=30) as api:
        r = api.post("/jobs", json={"name": "listener", "image": "base", "gpus": 1, "command": [
            "python3", "-m", "http.server", "--bind", "127.0.0.1", str(JOB_LOOPBACK_PORT)]})
        assert r.status_code == 201, r.text
        job = wait_job(api, r.json()["id"], {"running"})
        (c,) = docker.api.containers(filters={"label": [f"podbay.prefix={prefix}", f"podbay.job={job['id']}"]})
        job_container = docker.api.inspect_container(c["Id"])
        facts["job_network"] = job_container["HostConfig"]["NetworkMode"]
        deadline = time.monotonic() + 20
        while ("127.0.0.1", JOB_LOOPBACK_PORT) not in listening(docker, c["Id"]):
            assert time.monotonic() < deadline, "the job's server did not start"
            time.sleep(0.2)

        alice_ip = _address(alice) or "127.0.0.1"
        alice_port = urlparse(dict(e.split("=", 1) for e in alice["Config"]["Env"])["JUPYTERHUB_SERVICE_URL"]).port
        job_ip = _address(job_container) or "127.0.0.1"
        bob_env = dict(e.split("=", 1) for e in bob["Config"]["Env"])
        hub_api = urlparse(bob_env["JUPYTERHUB_API_URL"])
        bob_token = hub.token("bob")
        targets = {
            "hub_api": {"url": f"{hub_api.scheme}://{hub_api.netloc}/hub/api"},
            # podbay's service, where a workspace's `podbay job submit` finds it.
            "service_as_bob": {"url": f"{bob_env['PODBAY_SERVICE_URL']}/services/podbay/api/v1/me",
                               "workspace_token": True},
            "service_without_token": {"url": f"{bob_env['PODBAY_SERVICE_URL']}/services/podbay/api/v1/me"},
            "alice_loopback": {"host": "127.0.0.1", "port": ALICE_LOOPBACK_PORT},
            "job_loopback": {"host": "127.0.0.1", "port": JOB_LOOPBACK_PORT},
            "alice_jupyter_with_bobs_token": {
                "url": f"http://{alice_ip}:{alice_port}/user/alice/iso/api/status",
                "headers": {"Authorization": f"token {bob_token}"}},
            "alice_jupyter_without_token": {"url": f"http://{alice_ip}:{alice_port}/user/alice/iso/api/status"},
            # The names DockerSpawner would give her workspace: they say whose it is.
            "alice_by_her_name": {"resolve": f"{prefix}-alice--iso"},
            "alice_by_her_user": {"resolve": f"{prefix}-alice"},
            "raw_socket": {"raw": True},
        }
        for what, port in (("proxy_api", hub.port + 2), ("podbay_service", hub.port + 3), ("public_proxy", hub.port)):
            for where in {"127.0.0.1", hub_api.hostname}:
                targets[f"{what}@{where}"] = {"host": where, "port": port}
        code, out = sh(docker, bob["Id"], f"python3 -c {shlex.quote(PROBE)} {shlex.quote(json.dumps(targets))}")
        assert code == 0, out
        facts["from_bob"] = json.loads(out.strip().splitlines()[-1])
        facts["bob_capabilities"] = sh(docker, bob["Id"], "grep -E '^Cap(Eff|Bnd)|^NoNewPrivs' /proc/1/status")[1]
        facts["alice_name"] = alice["Name"].lstrip("/")
        facts["alice_ip"], facts["job_ip"] = alice_ip, job_ip

        # Through the hub, with bob's own login: alice's workspace, and bob's own
        # jupyter-server-proxy pointed at her loopback server or her address.
        with http_client(headers={"Authorization": f"token {bob_token}"}, timeout=60) as http:
            facts["via_hub"] = {
                "alice_workspace": http.get(f"{hub.url}/user/alice/iso/api/status").status_code,
                "alice_vscode": http.get(f"{hub.url}/user/alice/iso/vscode/").status_code,
            }
            for name, path in (("bob_proxy_to_loopback", f"proxy/{ALICE_LOOPBACK_PORT}/notes.txt"),
                               ("bob_proxy_to_alice", f"proxy/{alice_ip}:{ALICE_LOOPBACK_PORT}/notes.txt"),
                               ("bob_proxy_to_job", f"proxy/{JOB_LOOPBACK_PORT}/")):
                r = http.get(f"{hub.url}/user/bob/iso/{path}")
                facts["via_hub"][name] = r.status_code
                facts["via_hub"][name + "_leaks"] = ALICE_SECRET in r.text
        api.delete(f"/jobs/{job['id']}")
    hub.stop_server("alice", "iso")
    hub.stop_server("bob", "iso")
    return facts


def test_users_workspaces_and_jobs_cannot_reach_each_other(dhub, docker):
    facts = cross_user_probe(dhub, docker)
    assert facts["alice_network"] == facts["bob_network"] == facts["job_network"] == NETWORK
    net = network_of(docker)
    # Created by podbay as the README says: containers apart where the engine enforces it.
    assert net["options"].get("com.docker.network.bridge.enable_icc") == "false"
    assert net["labels"]["podbay.prefix"] == PREFIX and not net["internal"]

    # alice's own VS Code works, through the hub; it runs on a unix socket only she can use.
    assert facts["alice_vscode"] == 200
    assert "--socket " in facts["code_server"] and "--port" not in facts["code_server"], facts["code_server"]
    assert facts["code_server_socket"] == "600 jovyan socket"
    # Nothing of hers listens on TCP but her Jupyter server and what she started on loopback.
    assert facts["alice_listens"] == {("0.0.0.0", 8888), ("127.0.0.1", ALICE_LOOPBACK_PORT)}

    seen = facts["from_bob"]
    assert seen["hub_api"][0] == 200, "workspaces reach the hub's API on the network's gateway"
    # ... and podbay's service there, as themselves only.
    assert seen["service_as_bob"][0] == 200 and json.loads(seen["service_as_bob"][1])["name"] == "bob"
    assert seen["service_without_token"][0] in (401, 403), seen["service_without_token"]
    # What alice and her job started on their loopback is theirs alone.
    assert seen["alice_loopback"] == seen["job_loopback"] == "refused", seen
    gateway = network_of(docker)["gateway"]
    for name, result in seen.items():
        if name.startswith(("proxy_api@", "public_proxy@", "podbay_service@127.0.0.1")):
            assert result != "open", (name, result)
    assert seen[f"podbay_service@{gateway}"] == "open"
    # Her Jupyter server is on the network (the hub must reach it): where the engine enforces
    # the network's inter-container rule bob cannot connect at all; where it does not (this
    # test engine has no iptables) the server answers him, but refuses him.
    for name, answers in (("alice_jupyter_with_bobs_token", {403}), ("alice_jupyter_without_token", {302, 403})):
        result = seen[name]
        assert (isinstance(result, str) and result != "open") or result[0] in answers, (name, result)
    assert ALICE_SECRET not in json.dumps(seen)
    # bob cannot find her workspace by a name that says whose it is, nor play with raw packets:
    # his workspace has no capability and gains none.
    assert "alice" not in facts["alice_name"], facts["alice_name"]
    assert seen["alice_by_her_name"] == seen["alice_by_her_user"] == "unresolved", seen
    assert seen["raw_socket"] == "not permitted", seen
    caps = dict(line.split(":", 1) for line in facts["bob_capabilities"].split("\n") if ":" in line)
    assert int(caps["CapEff"], 16) == int(caps["CapBnd"], 16) == 0 and caps["NoNewPrivs"].strip() == "1", caps

    via = facts["via_hub"]
    assert via["alice_workspace"] in (403, 404) and via["alice_vscode"] in (302, 403, 404), via
    assert not via["bob_proxy_to_loopback_leaks"] and not via["bob_proxy_to_alice_leaks"], via
    assert via["bob_proxy_to_loopback"] != 200 and via["bob_proxy_to_alice"] == 403, via
    assert via["bob_proxy_to_job"] != 200, via


def test_the_host_network_is_an_opt_in_that_says_what_it_exposes(docker, image, tmp_path):
    """The old setting, kept for a server with one user: the same probe then finds alice's
    loopback server from bob's workspace, which is why it is not the default (and shows
    that the probe above can fail). Then the upgrade: a hub restarted on the bridge network
    stops a workspace left running on the host's network and frees its GPU."""
    cfg = yaml.safe_load(DOCKER_CONFIG.read_text())
    cfg["docker"] = {"name_prefix": HOST_PREFIX, "network": {"mode": "host"}}
    hub = hub_on(cfg, tmp_path, keep_workspaces=True)
    config = hub.config
    try:
        facts = cross_user_probe(hub, docker, HOST_PREFIX)
        hub.start_server("alice", "legacy", {"profile": "gpu-1", "image": "base"})
        legacy = container_of(hub, docker, "alice", "legacy")["Id"]
        assert claimed(hub, "workspace:alice/legacy")
        hub.stop()
        assert "docker.network.mode is host. Every workspace and job shares this server's network" in \
            hub.log_path.read_text()
        assert facts["alice_network"] == facts["job_network"] == "host"
        assert facts["from_bob"]["alice_loopback"] == "open"
        assert facts["from_bob"]["job_loopback"] == "open"
        assert facts["via_hub"]["bob_proxy_to_loopback_leaks"], facts["via_hub"]
        # Even here VS Code is on a socket, not a port another workspace could find.
        assert "--socket " in facts["code_server"], facts["code_server"]

        del cfg["docker"]["network"]
        config.write_text(yaml.safe_dump(cfg))
        hub.start()
        assert f"stopping workspace:alice/legacy: its container is on the network 'host', not '{HOST_PREFIX}-net'" \
            in hub.log_path.read_text()
        assert not docker.api.containers(all=True, filters={"id": legacy})
        assert claimed(hub, "workspace:alice/legacy") == []
        with hub.api("alice") as api:
            deadline = time.monotonic() + 30
            while "legacy" in {n for n, s in api.get("/users/alice").json()["servers"].items() if s["ready"]}:
                assert time.monotonic() < deadline, "the hub still shows the stopped workspace as running"
                time.sleep(0.5)
    finally:
        hub.stop()


async def test_the_workspace_network_is_made_as_configured(docker):
    """podbay creates its network with inter-container traffic off, internal where
    outbound access is off, in the subnet asked for, and refuses one that differs."""
    from podbay.hub.backends.docker.settings import DockerSettings
    from podbay.hub.backends.docker.network import DockerNetworkError, ensure_network

    name = f"{PREFIX}-net-internal"
    settings = DockerSettings(name_prefix=PREFIX, network={"name": name, "outbound": False, "subnet": "10.213.7.0/24"})
    net = ensure_network(docker, settings)
    try:
        assert net == (name, "10.213.7.1", "10.213.7.0/24", True, True)
        inspected = network_of(docker, name)
        assert inspected["internal"] and inspected["options"]["com.docker.network.bridge.enable_icc"] == "false"
        assert ensure_network(docker.api, settings) == net, "a second call finds it as it is"
        for change, words in (({"outbound": True}, "is internal (no outbound access), but podbay.yaml says "
                                                    "docker.network.outbound: true"),
                              ({"outbound": False, "subnet": "10.213.8.0/24"}, "has the subnet 10.213.7.0/24")):
            other = DockerSettings(name_prefix=PREFIX, network={"name": name, **change})
            with pytest.raises(DockerNetworkError, match=re.escape(words)):
                ensure_network(docker, other)
        missing = DockerSettings(name_prefix=PREFIX, network={"name": f"{PREFIX}-absent", "create": False})
        with pytest.raises(DockerNetworkError, match="does not exist, and docker.network.create is false"):
            ensure_network(docker, missing)
        # A workspace on it reaches the host at the gateway, where the hub listens.
        with socket.socket() as server:
            server.bind((net.gateway, 0))
            server.listen()
            port = server.getsockname()[1]
            out = docker.containers.run(IMAGE, ["python3", "-c", f"import socket; socket.create_connection(('{net.gateway}', {port}), timeout=5); print('reached the hub')"],
                                        network=name, remove=True).decode()
        assert out.strip() == "reached the hub"
    finally:
        docker.api.remove_network(name)


def test_only_catalog_images_and_built_ones(dhub, docker):
    with dhub.api("alice") as api:
        r = api.post("/users/alice/servers/other", json={"user_options": {"profile": "gpu-1", "image": "ubuntu:latest"}})
        assert r.status_code == 400 and "unknown image 'ubuntu:latest'" in r.json()["message"]
        r = api.post("/users/alice/servers/unbuilt", json={"user_options": {"profile": "gpu-1", "image": "pytorch"}})
        assert r.status_code == 503, r.text
        assert "podbay images build pytorch" in r.json()["message"]
    assert claimed(dhub, "workspace:alice/unbuilt") == [], "a failed start must not keep its GPU"
    assert not docker.api.containers(all=True, filters={"name": f"{PREFIX}-alice--unbuilt"})


def test_a_workspace_that_dies_while_starting_fails_at_once_and_frees_its_gpu(dhub, docker):
    t0 = time.monotonic()
    r = dhub.start_server("alice", "doomed", {"profile": "mig-1g.10gb", "image": "broken"})
    elapsed = time.monotonic() - t0
    assert r.status_code == 500, r.text
    assert "container exited with status 0 while starting" in r.json()["message"]
    # The message proves the quick path (the slow one is the hub's own wait, which times out
    # after http_timeout, 60 s, in words of its own); the bound only rules that wait out.
    assert elapsed < 30, f"took {elapsed:.1f}s to report the failure"
    assert claimed(dhub, "workspace:alice/doomed") == []
    assert not docker.api.containers(all=True, filters={"name": f"{PREFIX}-alice--doomed"})


def test_hub_restart_keeps_running_containers_and_frees_dead_ones(dhub, docker):
    dhub.start_server("alice", "stays", {"profile": "gpu-1", "image": "base"})
    dhub.start_server("alice", "dies", {"profile": "mig-1g.10gb", "image": "base"})
    stays, dies = (container_of(dhub, docker, "alice", n)["Id"] for n in ("stays", "dies"))
    held = claimed(dhub, "workspace:alice/stays")
    dhub.stop()
    assert docker.api.inspect_container(stays)["State"]["Running"], "--keep-workspaces keeps containers"
    docker.api.kill(dies)
    dhub.start()
    assert claimed(dhub, "workspace:alice/dies") == [], "a container that died meanwhile frees its GPU"
    assert claimed(dhub, "workspace:alice/stays") == held
    assert dhub.wait_ready("alice", "stays")["ready"]
    assert container_of(dhub, docker, "alice", "stays")["Id"] == stays
    dhub.stop_server("alice", "stays")
    with dhub.api("alice") as api:
        deadline = time.monotonic() + 30
        while "dies" in api.get("/users/alice").json()["servers"] and time.monotonic() < deadline:
            api.delete("/users/alice/servers/dies")
            time.sleep(0.5)



def test_training_job_runs_as_a_container_and_cancels(dhub, docker):
    (dhub.data_dir / "volumes" / "imagenet").mkdir(parents=True, exist_ok=True)
    (dhub.data_dir / "volumes" / "imagenet" / "README").write_text("imagenet sample\n")
    dhub.start_server("alice", "train", {"profile": "cpu", "image": "base", "volumes": ["imagenet"]})
    sh(docker, container_of(dhub, docker, "alice", "train")["Id"], "mkdir -p ~/proj && echo 'lr=0.1' > ~/proj/cfg")
    headers = {"Authorization": f"token {dhub.token('alice')}"}
    with http_client(base_url=f"{dhub.url}/services/podbay/api/v1", headers=headers, timeout=30) as api:
        r = api.post("/jobs", json={
            "name": "resnet", "from_workspace": "train", "gpus": 1, "workdir": "proj",
            "command": ["sh", "-c", "id -un; pwd; cat cfg; cat ~/data/imagenet/README; "
                                    "echo NV=$NVIDIA_VISIBLE_DEVICES; echo CUDA=$CUDA_VISIBLE_DEVICES; "
                                    "echo TEAM=$PODBAY_TEAM VOLUMES=$PODBAY_VOLUMES; exit 3"]})
        assert r.status_code == 201, r.text
        job = wait_job(api, r.json()["id"], {"succeeded", "failed"})
        assert job["state"] == "failed" and job["exit_code"] == 3, job
        assert job["workdir"] == "/home/jovyan/proj"
        (device,) = job["devices"]
        logs = api.get(f"/jobs/{job['id']}/logs").text
        assert logs.split("\n")[:7] == ["jovyan", "/home/jovyan/proj", "lr=0.1", "imagenet sample", f"NV={device}",
                                         f"CUDA={device}", "TEAM=vision VOLUMES=imagenet"], logs
        assert not docker.api.containers(all=True, filters={"label": [f"podbay.prefix={PREFIX}", f"podbay.job={job['id']}"]})
        assert claimed(dhub, f"job:{job['id']}") == []

        r = api.post("/jobs", json={"name": "long", "image": "base", "gpus": 1,
                                    "command": ["sh", "-c", "echo started; sleep 600"]})
        job = wait_job(api, r.json()["id"], {"running"})
        (c,) = docker.api.containers(filters={"label": [f"podbay.prefix={PREFIX}", f"podbay.job={job['id']}"]})
        assert c["Labels"]["podbay.user"] == "alice"
        assert docker.api.inspect_container(c["Id"])["HostConfig"]["DeviceRequests"][0]["DeviceIDs"] == job["devices"]
        deadline = time.monotonic() + 10
        while "started" not in api.get(f"/jobs/{job['id']}/logs").text and time.monotonic() < deadline:
            time.sleep(0.2)
        r = api.delete(f"/jobs/{job['id']}")
        assert r.status_code == 200 and r.json()["state"] == "cancelled", r.text
        assert not docker.api.containers(all=True, filters={"id": c["Id"]}), "cancel removes the container"
        assert claimed(dhub, f"job:{job['id']}") == []
        assert "started" in api.get(f"/jobs/{job['id']}/logs").text, "output outlives the container"
    dhub.stop_server("alice", "train")


async def test_backend_finds_its_jobs_by_label_after_a_restart(docker, image, tmp_path):
    """A backend that knows nothing (a restarted service) adopts a job that was running,
    even one interrupted before its container id was recorded, and removes containers of
    jobs that are not active, which would otherwise hold GPUs the ledger calls free."""
    from podbay.hub.config import load_config
    from podbay.hub.training import JobSpec
    from podbay.hub.backends.docker.jobs import DockerBackend

    cfg = load_config(DOCKER_CONFIG)
    first = DockerBackend(cfg, tmp_path / "jobs", client=docker)
    spec = dict(user="alice", image="base", command=["sleep", "600"], workdir="/home/jovyan", env={})
    await first.submit(JobSpec(id=9001, name="adopted", **spec))
    await first.submit(JobSpec(id=9002, name="orphan", **spec))

    restarted = DockerBackend(cfg, tmp_path / "jobs", client=docker)
    statuses = await restarted.reconcile({9001: {"job_id": 9001}})
    assert statuses[9001].state == "running"
    assert not docker.api.containers(all=True, filters={"name": f"{PREFIX}-job-9002"})
    await restarted.cancel({"job_id": 9001})
    status = await restarted.status({"job_id": 9001})
    assert status.state == "exited" and status.exit_code in (137, 143)
    assert not docker.api.containers(all=True, filters={"name": f"{PREFIX}-job-9001"})


async def test_a_job_folder_left_by_an_earlier_run_is_not_the_new_jobs(docker, image, tmp_path):
    """Job ids start again after the service's database is reset, and the folders of the old
    jobs may still be there: the new job must not report the old one's exit or output."""
    from podbay.hub.config import load_config
    from podbay.hub.training import JobSpec
    from podbay.hub.backends.docker.jobs import DockerBackend

    backend = DockerBackend(load_config(DOCKER_CONFIG), tmp_path / "jobs", client=docker)
    old = tmp_path / "jobs" / "9003"
    old.mkdir(parents=True)
    (old / "exit_code").write_text("7")
    (old / "output.log").write_bytes(b"the old run\n")
    ref = {**await backend.submit(JobSpec(id=9003, name="again", user="alice", image="base", workdir="/home/jovyan",
                                          env={}, command=["sh", "-c", "echo the new run; sleep 600"])),
           "job_id": 9003}
    assert (await backend.status(ref)).state == "running"
    deadline = time.monotonic() + 30
    while backend.output_from(ref) != b"the new run\n":
        assert time.monotonic() < deadline, backend.output_from(ref)
        await asyncio.sleep(0.2)
    await backend.cancel(ref)
    assert (await backend.status(ref)).exit_code in (137, 143)
    assert backend.output_from(ref) == b"the new run\n"


async def test_a_running_jobs_output_is_streamed_once_and_read_from_offsets(docker, image, tmp_path, monkeypatch):
    """Followers poll a running job's output from their offsets: the engine sends it once,
    into the job's spool, and is not asked for all of it again on each poll, and a restarted
    service reads on from the same offsets."""
    from podbay.hub.config import load_config
    from podbay.hub.training import JobSpec
    from podbay.hub.backends.docker.jobs import DockerBackend

    whole_reads, logs = [], docker.api.logs

    def spy(container, *args, **kwargs):
        if not kwargs.get("stream"):
            whole_reads.append(container)
        return logs(container, *args, **kwargs)

    monkeypatch.setattr(docker.api, "logs", spy)
    cfg = load_config(DOCKER_CONFIG)
    backend = DockerBackend(cfg, tmp_path / "jobs", client=docker)
    script = 'i=0; while [ $i -lt 3000 ]; do echo "line $i"; i=$((i+1)); done; echo half; sleep 3; echo end'
    ref = {**await backend.submit(JobSpec(id=9004, name="chatty", user="alice", image="base", workdir="/home/jovyan",
                                          env={}, command=["sh", "-c", script])), "job_id": 9004}
    expected = b"".join(b"line %d\n" % i for i in range(3000)) + b"half\nend\n"

    async def read_until(reader, got: bytes, end: bytes) -> bytes:
        deadline = time.monotonic() + 30
        while not got.endswith(end):
            assert time.monotonic() < deadline, got[-200:]
            got += reader.output_from(ref, len(got))
            await asyncio.sleep(0.02)
        return got

    got = await read_until(backend, b"", b"half\n")
    # The service restarts (a backend that knows nothing, its own folder here so that the
    # first one's stream cannot write into it): its readers go on from their offsets.
    restarted = DockerBackend(cfg, tmp_path / "restarted", client=docker)
    got = await read_until(restarted, got, b"end\n")
    assert got == expected
    assert whole_reads == [], "a running job's whole output was asked for again"

    deadline = time.monotonic() + 30
    while (status := await restarted.status(ref)).state == "running":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
    assert status.exit_code == 0
    assert restarted.output_from(ref) == expected and restarted.output_from(ref, len(expected) - 4) == b"end\n"
    assert not (tmp_path / "restarted" / "9004" / "output.live").exists()


async def test_jobs_wait_while_docker_is_down_and_start_when_it_is_back(docker, image, tmp_path, monkeypatch):
    from podbay.hub.jobs import JobManager, JobRequest
    from podbay.hub.portal import Portal
    from podbay.hub.backends.docker.jobs import DockerBackend

    portal = Portal.open(DOCKER_CONFIG, f"sqlite:///{tmp_path / 'ledger.sqlite'}", tmp_path)
    manager = JobManager(portal, DockerBackend(portal.cfg, tmp_path / "jobs"))
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    job = manager.submit("alice", [], JobRequest(name="patient", command=["echo", "ran once"], gpus=1))
    await manager.tick()
    waiting = manager.get(job.id)
    assert waiting.state == "queued" and "Docker is not reachable" in waiting.message, waiting
    assert portal.book.get(f"job:{job.id}") is None, "a waiting job holds no GPU"
    monkeypatch.delenv("DOCKER_HOST")
    deadline = time.monotonic() + 30
    while manager.get(job.id).state not in ("succeeded", "failed") and time.monotonic() < deadline:
        await manager.tick()
        await asyncio.sleep(0.2)
    done = manager.get(job.id)
    assert done.state == "succeeded", done
    assert (await manager.read_logs(job.id))[0] == b"ran once\n"
    portal.book.dispose()


def test_a_slice_made_on_request_reaches_the_container(docker, image, tmp_path):
    """A GPU whose MIG instances podbay makes per request (mig_on_request, the stand-in NVIDIA
    driver in the hub's process): the container is handed the MIG device made for it, and
    stopping it removes the instance."""
    from tests.standins import nvml as fake

    gpu = "GPU-0e000000-0000-4000-8000-000000000000"
    state = fake.write_state(tmp_path / "nvml.json", [fake.gpu(gpu, name="NVIDIA A100-SXM4-80GB", memory_mib=81920)])
    cfg = yaml.safe_load(DOCKER_CONFIG.read_text())
    cfg["images"][0]["build"] = str(ROOT / "images" / "base")
    cfg["nodes"] = [{"name": "dev-01", "pool": "dev", "gpus": [
        {"index": 0, "uuid": gpu, "model": "NVIDIA A100-SXM4-80GB", "memory_mib": 81920, "mig_on_request": True}]}]
    cfg["profiles"] = [{"id": "cpu"}, {"id": "mig-1g.10gb"}, {"id": "mig-3g.40gb"}]
    hub = hub_on(cfg, tmp_path, keep_workspaces=False, extra_env=fake.process_env(state))
    try:
        hub.start_server("alice", "slice", {"profile": "mig-3g.40gb", "image": "base"})
        [inst] = fake.instances(state)
        assert inst["start"] == 4 and claimed(hub, "workspace:alice/slice") == inst["uuids"]
        c = container_of(hub, docker, "alice", "slice")
        (request,) = c["HostConfig"]["DeviceRequests"]
        assert request["DeviceIDs"] == inst["uuids"]
        shim = SHIM_LOG / f"{c['Id']}.json"
        require(shim.exists(), "dockerd does not run the GPU stand-in hook (start it as scripts/dev.sh test does)")
        assert json.loads(shim.read_text())["env"]["NVIDIA_VISIBLE_DEVICES"] == inst["uuids"][0]
        hub.stop_server("alice", "slice")
        # The release (and its tidy) is the stop's last step: waited on as the driver reports it.
        deadline = time.monotonic() + 30
        while fake.instances(state) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert fake.instances(state) == []
    finally:
        hub.stop()


def test_homes_per_workspace_where_configured(docker, image, tmp_path):
    cfg = yaml.safe_load(DOCKER_CONFIG.read_text())
    cfg["docker"]["home_per_workspace"] = True
    cfg["images"][0]["build"] = str(ROOT / "images" / "base")
    hub = hub_on(cfg, tmp_path, keep_workspaces=False)
    try:
        opts = {"profile": "cpu", "image": "base"}
        hub.start_server("alice", "a", opts)
        hub.start_server("alice", "b", opts)
        a, b = (container_of(hub, docker, "alice", n) for n in ("a", "b"))
        homes = {n: next(m["Name"] for m in c["Mounts"] if m["Destination"] == "/home/jovyan") for n, c in (("a", a), ("b", b))}
        assert homes == {"a": f"{PREFIX}-home-alice--a", "b": f"{PREFIX}-home-alice--b"}
        sh(docker, a["Id"], "echo only-a > ~/mine.txt")
        code, _ = sh(docker, b["Id"], "test -e ~/mine.txt")
        assert code == 1, "workspace b must not see a's home"
        hub.stop_server("alice", "a")
        hub.start_server("alice", "a", opts)
        code, out = sh(docker, container_of(hub, docker, "alice", "a")["Id"], "cat ~/mine.txt")
        assert out.strip() == "only-a"
    finally:
        hub.stop()


def test_an_idle_gpu_container_is_restarted_on_cpu_with_its_home(dhub, docker):
    """The idle rule on the docker backend: a new container on the CPU profile, the same
    image, volumes and home volume; the GPU's claim released."""
    opts = {"profile": "gpu-1", "image": "base", "volumes": ["scratch"]}
    dhub.start_server("alice", "idlegpu", opts)
    gpu = claimed(dhub, "workspace:alice/idlegpu")
    first = container_of(dhub, docker, "alice", "idlegpu")
    assert gpu and first["HostConfig"]["DeviceRequests"][0]["DeviceIDs"] == gpu
    code, out = sh(docker, first["Id"], "echo 'before the release' > ~/idle-notes.txt")
    assert code == 0, out
    dhub.exporter.util[gpu[0]] = 0.0
    with http_client(base_url=f"{dhub.url}/services/podbay/api/v1",
                      headers={"Authorization": f"token {dhub.token('alice')}"}, timeout=30) as api:
        deadline = time.monotonic() + 30
        while not [n for n in api.get("/notices").json() if n["kind"] == "warning"] and time.monotonic() < deadline:
            time.sleep(0.3)
        # A terminal opened in the workspace now (a login shell, as JupyterLab's are) says so.
        exec_id = docker.api.exec_create(first["Id"], ["bash", "-lic", "true"], user="1000")
        login = docker.api.exec_start(exec_id).decode(errors="replace")
        assert "podbay: GPU idle: idlegpu (gpu-1) has used its GPU below 5%" in login, login
        # A command over SSH or VS Code's (not interactive) gets nothing extra.
        exec_id = docker.api.exec_create(first["Id"], ["bash", "-lc", "echo quiet"], user="1000")
        assert docker.api.exec_start(exec_id).decode(errors="replace").strip() == "quiet"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            done = [n for n in api.get("/notices").json() if n["kind"] == "release-gpu" and n["state"] == "done"]
            if done:
                break
            time.sleep(0.5)
        assert done and done[0]["workspace"] == "idlegpu", api.get("/notices").json()
    dhub.wait_ready("alice", "idlegpu")
    second = container_of(dhub, docker, "alice", "idlegpu")
    assert second["Id"] != first["Id"] and not second["HostConfig"].get("DeviceRequests")
    assert "NVIDIA_VISIBLE_DEVICES=void" in second["Config"]["Env"]
    code, out = sh(docker, second["Id"], "cat ~/idle-notes.txt; test -d ~/data/scratch && echo scratch-mounted")
    assert out.split("\n")[:2] == ["before the release", "scratch-mounted"], out
    assert claimed(dhub, "workspace:alice/idlegpu") == []
    dhub.stop_server("alice", "idlegpu")


def test_podbay_doctor_checks_the_engine_as_the_spawner_uses_it(docker, image, tmp_path):
    """The docker backend's `podbay doctor` against the real engine: it answers, the network,
    the images, the volumes' folders, and a throwaway container that asks for a GPU as the
    spawner does (here through the tests' GPU stand-in hook). A device driver the engine
    lacks and an image not built are reported with their fixes."""
    from podbay.hub.backends.docker.doctor import diagnose
    from podbay.hub.config import load_config

    data = yaml.safe_load(DOCKER_CONFIG.read_text())
    built = dict(data, images=[i for i in data["images"] if i["name"] != "pytorch"])  # the one never built
    (tmp_path / "podbay.yaml").write_text(yaml.safe_dump(built))
    healthy = asyncio.run(diagnose(load_config(tmp_path / "podbay.yaml", "docker")))
    assert [f for f in healthy if f.level == "fail"] == [], healthy
    assert any(f.what.startswith("a container gets GPU GPU-11111111-0000-4000-8000-000000000000") for f in healthy)
    data["docker"]["gpu_driver"] = "no-such-driver"
    (tmp_path / "podbay.yaml").write_text(yaml.safe_dump(data))
    broken = {f.what: f.fix for f in asyncio.run(diagnose(load_config(tmp_path / "podbay.yaml", "docker")))
              if f.level == "fail"}
    assert "images not built on this engine: pytorch (a start on them fails)" in broken, broken
    data["volumes"].append({"name": "gone", "source": str(tmp_path / "no-such-share")})
    (tmp_path / "podbay.yaml").write_text(yaml.safe_dump(data))
    broken = {f.what: f.fix for f in asyncio.run(diagnose(load_config(tmp_path / "podbay.yaml", "docker")))
              if f.level == "fail"}
    assert f"volume gone: its source {tmp_path / 'no-such-share'} is not a folder on this host" in broken, broken
    (driver,) = [w for w in broken if "device driver" in w]
    assert driver.startswith("Docker's engine has no 'no-such-driver' device driver") and "toolkit" in broken[driver]
