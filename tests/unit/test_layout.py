"""The TUI and the client stay free of jupyterhub (they run on laptops and in workspaces)."""

import subprocess
import sys


def test_tui_never_imports_jupyterhub():
    code = ("import sys, podbay.tui.app, podbay.tui.cli, podbay.tui.client; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('jupyterhub', 'sqlalchemy') or m.startswith('podbay.hub')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
