"""The documentation builds as CI builds it: every page, the reference generated from the code,
no warning (a broken reference, a page outside every table of contents, a bad heading)."""

import subprocess
import sys
from pathlib import Path


DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_the_docs_build_without_a_warning(tmp_path):
    done = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                           "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    built = {p.relative_to(tmp_path / "html").as_posix() for p in (tmp_path / "html").rglob("*.html")}
    assert {"index.html", "reference/podbay-yaml.html", "reference/rest-api.html", "reference/cli.html",
            "reference/hub-settings.html", "explanation/architecture.html"} <= built
    # The generated reference says what the code says: every route and every command is there.
    rest = (DOCS / "reference" / "rest-api.md").read_text()
    assert "`POST /services/podbay/api/v1/jobs`" in rest and "`GET /services/podbay/api/v1/catalog`" in rest
    cli = (DOCS / "reference" / "cli.md").read_text()
    assert "## `podbay k8s check`" in cli and "## `podbay job submit`" in cli


def test_every_podbay_yaml_field_says_what_it_is():
    import sys

    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        import podbay_reference
    finally:
        sys.path.remove(str(DOCS / "_ext"))
    rows = [line for line in podbay_reference.podbay_yaml().splitlines() if line.startswith("| `")]
    bare = [line.split("|")[1].strip() for line in rows if line.rstrip().endswith("|  |")]
    assert rows and not bare, f"fields with no comment above them in the models: {bare}"
