"""podbay installed for every account, as a site installs it: what other accounts run.

The tests run from a checkout that may be private to its owner (a 0700 home, `mktemp -d`),
and with an editable install that maps `podbay` into that checkout. A workspace that becomes a
person, a pod that runs as the image's user, an sshd that runs as nobody never reach into
someone's checkout on a real site: they run podbay from where the site installed it for
everyone. This is that install, made once per test run:

- a virtual environment in a root-owned 0755 folder under /tmp, on a Python every account may
  run (this run's own where every folder above it is open to all, else the system's of the
  same version);
- the run's dependencies hard-linked into it from the checkout's .venv (copied where /tmp is
  another filesystem);
- podbay itself from a wheel built from a clean copy of the checkout's sources (`pip wheel`,
  its build backend fetched as any build does), installed as a user installs it, with its
  console scripts; the other distributions' console scripts (jupyterhub-singleuser)
  written for it as pip writes them.

Nothing in the checkout is opened to anyone.
"""

from __future__ import annotations

import atexit
import configparser
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VERSION = f"python{sys.version_info.major}.{sys.version_info.minor}"


def open_to_all(path: Path) -> bool:
    """Whether every account may reach `path`: what `podbay doctor` checks on a site."""
    from podbay.hub.doctor import closed_to_others

    return closed_to_others(path) is None


def _interpreter() -> Path:
    """A Python of this run's version that every account may run."""
    own = Path(getattr(sys, "_base_executable", sys.executable)).resolve()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    if open_to_all(own) and open_to_all(stdlib):
        return own
    system = Path("/usr/bin") / VERSION
    if system.exists() and open_to_all(system):
        return system
    raise RuntimeError(f"no {VERSION} that every account may run: {own} is in a private folder and "
                       f"{system} is not installed (apt-get install {VERSION}-venv)")


def _console_script(python: Path, module: str, attr: str) -> str:
    head = attr.split(".")[0]
    return (f"#!{python}\nimport sys\nfrom {module} import {head}\n"
            f"if __name__ == '__main__':\n    sys.exit({attr}())\n")


def build(dest: Path) -> Path:
    """Install podbay and this run's environment under `dest` (a new, empty folder); answer
    the install's Python."""
    # What is made here is for every account to read, whatever the run's own umask.
    umask = os.umask(0o022)
    try:
        return _build(dest)
    finally:
        os.umask(umask)


def _build(dest: Path) -> Path:
    dest.chmod(0o755)
    venv = dest / "venv"
    subprocess.run([str(_interpreter()), "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    site = venv / "lib" / VERSION / "site-packages"
    # The packages, and the data Jupyter finds under the prefix (the server extensions'
    # config in etc/jupyter, JupyterLab's assets in share/jupyter).
    for ours, theirs in ((Path(sysconfig.get_paths()["purelib"]), site),
                         (Path(sys.prefix) / "etc", venv / "etc"), (Path(sys.prefix) / "share", venv / "share")):
        if not ours.is_dir():
            continue
        theirs.mkdir(parents=True, exist_ok=True)
        # Hard links where the two share a filesystem (a few seconds, no space), else copies.
        if subprocess.run(["cp", "-al", f"{ours}/.", f"{theirs}/"], capture_output=True).returncode != 0:
            subprocess.run(["cp", "-a", f"{ours}/.", f"{theirs}/"], check=True, capture_output=True)
    # podbay as it is installed, not the editable finder into the checkout.
    for editable in site.glob("__editable__*podbay*"):
        editable.unlink()
    for meta in site.glob("podbay-*.dist-info"):
        shutil.rmtree(meta)
    python = venv / "bin" / "python"
    # Every distribution's console scripts, for this environment's Python (pip writes the same).
    for entry_points in site.glob("*.dist-info/entry_points.txt"):
        parser = configparser.ConfigParser(delimiters=("=",), interpolation=None)
        parser.optionxform = str  # script names keep their case
        try:
            parser.read_string(entry_points.read_text())
        except configparser.Error:
            continue
        if not parser.has_section("console_scripts"):
            continue
        for name, target in parser.items("console_scripts"):
            module, _, attr = target.strip().partition(":")
            script = venv / "bin" / name.strip()
            script.write_text(_console_script(python, module.strip(), attr.split("[")[0].strip()))
            script.chmod(0o755)
    with tempfile.TemporaryDirectory() as tmp:
        # From a copy of what the wheel is made of: a build in the checkout keeps setuptools'
        # build/ there, where a module deleted since would still go into the wheel.
        source, wheels = Path(tmp) / "source", Path(tmp) / "wheels"
        source.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(ROOT / name, source / name)
        for package in ("hub", "tui"):
            shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(source)],
                       check=True, capture_output=True, cwd=tmp)
        (wheel,) = wheels.glob("podbay-*.whl")
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-compile",
                        str(wheel)], check=True, capture_output=True)
    # configurable-http-proxy and the other programs the README's setup links beside Python.
    for program in ("configurable-http-proxy",):
        found = Path(sys.executable).parent / program
        if found.exists() and not (venv / "bin" / program).exists():
            (venv / "bin" / program).symlink_to(found.resolve())
    return python


@cache
def site_python() -> Path:
    """The site install's Python, made at its first use in this test run, removed at its end."""
    dest = Path(tempfile.mkdtemp(prefix="podbay-site-"))
    atexit.register(shutil.rmtree, dest, ignore_errors=True)
    python = build(dest)
    installed = python.parent.parent / "lib" / VERSION / "site-packages"
    needed = [python, python.parent / "jupyterhub-singleuser", installed / "podbay" / "hub" / "__init__.py",
              installed / "jupyterhub" / "__init__.py"]
    bad = [p for p in needed if not open_to_all(p)]
    assert not bad, f"the site install is not open to every account: {bad}"
    return python


if __name__ == "__main__":  # python -m tests.standins.site_install DEST: make one to look at
    target = Path(sys.argv[1])
    target.mkdir(parents=True)
    print(build(target))
    os.sync()
