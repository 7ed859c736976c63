"""The fixtures: hubs, the browser, Docker, PostgreSQL, Slurm, each shared as widely as what
the tests check allows. What they are built from is tests/harness.py."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytest

from tests.harness import _sweep, DOCKER_CONFIG, end, free_port_block, have_proxy, Hub, IMAGE, real_browser, require, TEST_CONFIG


def pytest_addoption(parser):
    parser.addoption("--cpu-load", action="store_true",
                     help="run the timing tests (marker: timing) last, beside stress-ng keeping every core busy at "
                          "the suite's own priority, as on a shared CI runner or a laptop doing other work")


def pytest_sessionstart(session):
    # CI runs from a checkout private to its owner (.ci/run): a test that passes only where
    # the checkout is open to all would hide what a person's account cannot reach.
    from podbay.hub.doctor import closed_to_others
    from tests.harness import ROOT

    if os.environ.get("PODBAY_REQUIRE_ALL") and closed_to_others(ROOT) is None:
        pytest.exit(f"CI runs the tests from a folder only its owner may enter (.ci/run); {ROOT} is open to all",
                    returncode=4)


def pytest_collection_modifyitems(config, items):
    # The contract's restarts and deaths on the local engine are timing tests too (the other
    # engines' are not worth their cluster or image under load).
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if item.nodeid.startswith("tests/integration/test_contract.py") and params.get("engine") == "local" and \
                item.originalname in CONTRACT_TIMING:
            item.add_marker(pytest.mark.timing)

    # The docker tests last (the docker file, the contract suite's docker half): scripts/dev.sh
    # builds their image meanwhile. With --cpu-load the timing tests after them, beside the
    # load. A stable sort keeps each hub's tests together.
    def needs_the_image(item) -> bool:
        params = getattr(getattr(item, "callspec", None), "params", {})
        return item.nodeid.startswith("tests/integration/test_docker.py") or params.get("engine") == "docker"

    loaded = config.getoption("--cpu-load")
    items.sort(key=lambda item: (loaded and item.get_closest_marker("timing") is not None, needs_the_image(item)))


_load: subprocess.Popen | None = None
_load_tried = False


def _die_with_parent() -> None:
    # The load ends with this run, however it ends (killed, crashed): Linux's parent-death signal.
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """The CPU load starts with the first timing test (they run last with --cpu-load) and
    lasts to the end of the tests: one busy process per core, at the suite's own priority."""
    global _load, _load_tried
    if _load_tried or not item.config.getoption("--cpu-load") or item.get_closest_marker("timing") is None:
        return
    _load_tried = True
    cores = os.cpu_count() or 1
    if shutil.which("stress-ng") is None:
        words = "stress-ng is not installed (apt-get install stress-ng): the timing tests run without the load"
        if os.environ.get("PODBAY_REQUIRE_ALL"):
            pytest.exit(f"{words} — the test setup should have installed it", returncode=3)
        warnings.warn(pytest.PytestWarning(words))
        return
    # A time limit too, for a load that outlived its run all the same.
    _load = subprocess.Popen(["stress-ng", "--cpu", str(cores), "--timeout", "2h", "--quiet"],
                             stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    reporter = item.config.pluginmanager.get_plugin("terminalreporter")
    capture = item.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # said in the run's output, not the test's
            reporter.write_line(f"\nthe timing tests from here, beside stress-ng --cpu {cores}")


def _stop_load() -> None:
    global _load
    if _load is not None:
        end(_load)
        _load = None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item, nextitem):
    if nextitem is None:  # the last test: the run's own cleanup (Slurm, accounts, Docker) unloaded
        _stop_load()


def pytest_sessionfinish(session):
    _stop_load()


CONTRACT_TIMING = {"test_a_hub_restart_adopts_running_workspaces_and_jobs",
                   "test_a_workspace_that_dies_while_starting_fails_at_once_and_frees_its_devices"}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    require(have_proxy(), "configurable-http-proxy is not installed")
    h = Hub(config=TEST_CONFIG, data_dir=tmp_path_factory.mktemp("hub"), port=free_port_block())
    h.start()
    yield h
    h.stop()
    # Workspaces survive hub restarts by design (--keep-workspaces): end the ones left.
    ledger = h.book()
    for alloc in ledger.allocations():
        pid = alloc.ref.get("pid")
        if pid:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    ledger.dispose()


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server on a loopback port, for the ledger's production database."""
    import glob
    import pwd

    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    require(bool(bins), "PostgreSQL is not installed")
    bindir = Path(bins[-1])
    # Not under pytest's tmp dir: that is private to root, and the server runs as postgres.
    data = Path(tempfile.mkdtemp(prefix="podbay-pg-"))
    run_as: list[str] = []
    if os.getuid() == 0:  # initdb refuses to run as root
        owner = pwd.getpwnam("postgres")
        os.chown(data, owner.pw_uid, owner.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    port = free_port_block(1)
    subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(data / "db"), "--auth=trust", "-U", "podbay"],
                   check=True, capture_output=True)
    subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data / "db"), "-w", "-l", str(data / "log"),
                    "-o", f"-h 127.0.0.1 -p {port} -k {data}", "start"], check=True, capture_output=True)
    yield f"postgresql+psycopg://podbay@127.0.0.1:{port}/postgres"
    subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m", "fast", "stop"],
                   capture_output=True)
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def db_url(tmp_path):
    """An empty quota book's database: SQLite here; tests/integration/test_postgresql.py runs
    the same tests on PostgreSQL."""
    return f"sqlite:///{tmp_path / 'ledger.sqlite'}"


@pytest.fixture(scope="module")
def browser():
    with real_browser() as b:
        yield b


@pytest.fixture(scope="session")
def docker():
    from podbay.hub.backends.docker.images import DockerUnavailable, docker_client

    try:
        client = docker_client()
    except DockerUnavailable as e:
        require(False, str(e))
    _sweep(client)
    yield client
    _sweep(client)
    client.close()


@pytest.fixture(scope="session")
def image(docker):
    """The CPU base image, built the way an operator builds it: `podbay images build`.

    scripts/dev.sh starts that same command in the background before the tests, since
    code-server's native modules take minutes to compile, and names its output files in
    PODBAY_TEST_IMAGE_BUILD; these tests run last and wait for it."""
    started = os.environ.get("PODBAY_TEST_IMAGE_BUILD")
    if started:
        rc_file, deadline = Path(started + ".rc"), time.monotonic() + 1200
        while not rc_file.exists():
            assert time.monotonic() < deadline, f"the image build of scripts/dev.sh did not end: {started}.log"
            time.sleep(1)
        rc, output = int(rc_file.read_text()), Path(started + ".log").read_text()
    else:
        run = subprocess.run(
            [sys.executable, "-m", "podbay.hub.cli", "images", "build", "base", "--config", str(DOCKER_CONFIG)],
            capture_output=True, text=True, timeout=1200)
        rc, output = run.returncode, run.stdout + run.stderr
    assert rc == 0, output[-6000:]
    assert f"built base: {IMAGE}" in output
    return docker.images.get(IMAGE)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory, request):
    """A real Slurm cluster on the loopback (tests/standins/slurm_cluster.py), one for the whole run."""
    from tests.standins import slurm_cluster as sc

    missing = sc.missing_programs()
    require(not missing, f"Slurm's programs are not installed: {', '.join(missing)}")
    require(os.geteuid() == 0, "the test Slurm runs its daemons as root")
    # munged wants every folder above its socket open to all: not pytest's private ones.
    state = Path(tempfile.mkdtemp(prefix="podbay-slurm-"))
    state.chmod(0o755)
    cluster = sc.start(state / "cluster")
    yield cluster
    cluster.stop()
    if request.session.testsfailed:  # the daemons' logs, kept where pytest keeps its last runs
        shutil.copytree(state / "cluster" / "log", tmp_path_factory.getbasetemp() / "slurm-logs", dirs_exist_ok=True)
    shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm_people(slurm_cluster):
    """Real accounts for alice and bob (pbt-alice, pbt-bob) with homes on a folder the portal and
    the Slurm nodes share, the site's sudoers rules, their Slurm associations
    (tests/standins/slurm_cluster.py: people)."""
    from tests.standins import slurm_cluster as sc

    require(shutil.which("sudo") and shutil.which("useradd"), "sudo and useradd are not installed")
    # One place for every run, so that the accounts' homes stay where they are (usermod refuses
    # to move the home of an account with processes running).
    found = sc.people(slurm_cluster, Path("/var/tmp/podbay-tests/shared"))
    yield found
    found.remove()


@pytest.fixture
def kubernetes_installed(monkeypatch):
    """The kubernetes backend as an installed plugin (its entry point is not in pyproject.toml
    until it passes the contract suite)."""
    from importlib.metadata import EntryPoint

    from podbay.hub import backends
    from podbay.hub.config import config_model

    entry = EntryPoint("kubernetes", "podbay.hub.backends.kubernetes.plugin:KubernetesBackend", backends.GROUP)
    installed = {**backends.available(), "kubernetes": entry}
    monkeypatch.setattr(backends, "available", lambda: installed)
    config_model.cache_clear()
    yield
    config_model.cache_clear()


