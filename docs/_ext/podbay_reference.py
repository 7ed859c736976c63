"""Reference pages generated from the code at each build, so they cannot drift from it:
podbay.yaml from its pydantic models (the comments above each field are its documentation),
the REST API from the service's OpenAPI document, the `podbay` command from its parser, and
the hub's settings from their traits. Written beside the hand-written pages in reference/
(ignored by git)."""

from __future__ import annotations

import ast
import contextlib
import inspect
import os
import tempfile
import textwrap
import types
import typing
from pathlib import Path

from pydantic import BaseModel

HERE = Path(__file__).resolve().parent.parent / "reference"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


@contextlib.contextmanager
def _environ(env: dict[str, str]):
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


# --- podbay.yaml --------------------------------------------------------------------


def field_comments(model: type) -> dict[str, str]:
    """The comment lines right above each field of a model's class body."""
    try:
        lines, _ = inspect.getsourcelines(model)
    except (OSError, TypeError):
        return {}
    source = textwrap.dedent("".join(lines))
    tree = ast.parse(source)
    text = source.splitlines()
    out = {}
    for node in tree.body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            comment, i = [], node.lineno - 2
            while i >= 0 and text[i].strip().startswith("#"):
                comment.insert(0, text[i].strip().lstrip("#").strip())
                i -= 1
            out[node.target.id] = " ".join(comment)
    return out


def _models_in(annotation) -> list[type]:
    found = []
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        found.append(annotation)
    for arg in typing.get_args(annotation):
        found += _models_in(arg)
    return found


def _type_name(annotation) -> str:
    """A type as a person reads it: list[Image], str | None, Literal['a', 'b']."""
    if isinstance(annotation, type):
        return annotation.__name__
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join("None" if a is type(None) else _type_name(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type_name(a) for a in args)}]"
    return str(annotation).replace("typing.", "")


def _default(field) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        return ""
    value = field.default
    if isinstance(value, BaseModel):
        return "(below)"
    if isinstance(value, dict) and any(isinstance(v, BaseModel) for v in value.values()):
        return ", ".join(f"`{k}`" for k in value)
    return f"`{value!r}`"


def podbay_yaml() -> str:
    from podbay.hub.config import config_model

    root = config_model()
    out = ["# podbay.yaml, field by field", "",
           "Generated from the models that validate it (`hub/config/models.py`, and each engine's "
           "`settings` under `hub/backends/`): a field's text is the comment above it in the code. "
           "`podbay config check FILE` checks a file against exactly this.", ""]
    seen: set[type] = set()
    todo = [("podbay.yaml", root)]
    while todo:
        where, model = todo.pop(0)
        if model in seen:
            continue
        seen.add(model)
        out += [f"## {where}", ""]
        if model.__doc__ and model is not root and not model.__doc__.startswith(model.__name__ + "("):
            out += [inspect.cleandoc(model.__doc__), ""]
        out += ["| field | type | default | what it is |", "|---|---|---|---|"]
        # A model made at run time (PodbayConfig with the engines' sections) has its
        # comments in the classes it is made from.
        comments = {}
        for cls in reversed(model.__mro__):
            if isinstance(cls, type) and issubclass(cls, BaseModel) and cls is not BaseModel:
                comments.update({k: v for k, v in field_comments(cls).items() if v})
        for name, field in model.model_fields.items():
            out.append(f"| `{name}` | `{_cell(_type_name(field.annotation))}` | {_cell(_default(field))} | "
                       f"{_cell(comments.get(name) or field.description or '')} |")
            for sub in _models_in(field.annotation):
                todo.append((f"{where} → {name}" if where != "podbay.yaml" else name, sub))
        out.append("")
    return "\n".join(out)


# --- the REST API -------------------------------------------------------------------


def openapi() -> dict:
    """The service's OpenAPI document, from an app made on the demo configuration."""
    from podbay.hub.backends import load
    from podbay.hub.jobs import JobManager
    from podbay.hub.portal import Portal
    from podbay.hub.service import HubClient, create_app

    with tempfile.TemporaryDirectory() as tmp:
        # The demo that ships in the package, never the builder's own PODBAY_CONFIG.
        demo = Path(inspect.getfile(Portal)).parent / "demo" / "podbay.yaml"
        portal = Portal.open(str(demo), f"sqlite:///{tmp}/book.db", tmp, "local")
        jobs = JobManager(portal, load("local").training(portal))
        app = create_app(portal, jobs, HubClient("http://127.0.0.1:9/hub/api/", "unused"))
        return app.openapi()


def _schema_name(schema: dict | None) -> str:
    if not schema:
        return ""
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if schema.get("type") == "array":
        return f"list of {_schema_name(schema.get('items'))}"
    return schema.get("type", "")


def rest_api() -> str:
    doc = openapi()
    out = ["# The REST API", "",
           f"Generated from the service's OpenAPI document ({doc['info']['title']} {doc['info']['version']}), "
           "which a running portal serves at `/services/podbay/api/v1/openapi.json` (and as pages at "
           "`…/api/v1/docs`). Authenticate with a JupyterHub token: `Authorization: token …`. "
           "Every error is JSON `{\"error\": code, \"message\": sentence}`.", ""]
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            out += [f"## `{method.upper()} {path}`", "", op.get("summary", ""), ""]
            if op.get("description"):
                out += [op["description"], ""]
            params = op.get("parameters") or []
            if params:
                out += ["| parameter | in | type | required |", "|---|---|---|---|"]
                for p in params:
                    out.append(f"| `{p['name']}` | {p['in']} | {_cell(_schema_name(p.get('schema')))} | "
                               f"{'yes' if p.get('required') else 'no'} |")
                out.append("")
            body = (op.get("requestBody") or {}).get("content", {}).get("application/json", {}).get("schema")
            if body:
                out += [f"Body: `{_schema_name(body)}`.", ""]
            for code, resp in op.get("responses", {}).items():
                if code.startswith("2"):
                    schema = (resp.get("content") or {}).get("application/json", {}).get("schema")
                    out += [f"Answers {code}" + (f" with `{_schema_name(schema)}`." if schema else "."), ""]
    out += ["## Schemas", ""]
    for name, schema in doc.get("components", {}).get("schemas", {}).items():
        props = schema.get("properties")
        if not props:
            continue
        out += [f"### {name}", "", "| field | type |", "|---|---|"]
        out += [f"| `{k}` | {_cell(_schema_name(v) or 'any')} |" for k, v in props.items()]
        out.append("")
    return "\n".join(out)


# --- the command line ---------------------------------------------------------------


def cli() -> str:
    import argparse

    from podbay.tui.cli import build_parser

    out = ["# The `podbay` command", "", "Generated from its parser: what `podbay … --help` says.", ""]

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or name != "podbay":
            out.extend([f"## `{name}`", "", "```text", parser.format_help().rstrip(), "```", ""])
        for action in subs:
            for sub_name, sub in action.choices.items():
                walk(sub, f"{name} {sub_name}")

    # Defaults that come from the environment are shown as a person's, not the builder's.
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PODBAY_", "XDG_"))}
    with _environ({**clean, "HOME": "~"}):
        parser = build_parser()
    parser.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=100)
    walk(parser, "podbay")
    return "\n".join(out)


# --- the hub's settings -------------------------------------------------------------


def hub_settings() -> str:
    from podbay.hub.hubconfig import Podbay
    from podbay.hub.spawner import PodbaySpawnerMixin

    out = ["# The hub's settings", "",
           "Generated from their traits. Set them in a `jupyterhub_config.py` (`c.Podbay.port = 8000`) "
           "or, on a cluster, in the chart's `hub.config` (`PodbaySpawnerMixin: {config_file: …}`).", ""]
    for cls in (Podbay, PodbaySpawnerMixin):
        out += [f"## {cls.__name__}", "", inspect.cleandoc(cls.__doc__ or ""), "",
                "| setting | type | default | what it is |", "|---|---|---|---|"]
        for name, trait in sorted(cls.class_traits(config=True).items()):
            default = trait.default_value_repr() if hasattr(trait, "default_value_repr") else repr(trait.default_value)
            out.append(f"| `c.{cls.__name__}.{name}` | {type(trait).__name__} | `{_cell(default)}` | "
                       f"{_cell(trait.help)} |")
        out.append("")
    return "\n".join(out)


def metrics() -> str:
    from podbay.hub.usage.metrics import METRICS

    out = ["# Metrics", "",
           "Generated from `podbay.hub.usage.metrics.METRICS`, which the collector builds its families "
           "from. Served at `/services/podbay/api/v1/metrics` in Prometheus' text format, to admins and "
           "to tokens with the `read:metrics` scope (a Prometheus scrape job sends one as a bearer "
           "token). Counters are read from the quota book, so a restart of the service loses none; "
           "`config/grafana-podbay.json` is a dashboard over them.", "",
           "| metric | type | labels | what it is |", "|---|---|---|---|"]
    for m in METRICS.values():
        shown = f"{m.name}_total" if m.kind == "counter" else m.name
        out.append(f"| `{shown}` | {m.kind} | {', '.join(f'`{x}`' for x in m.labels)} | {_cell(m.help)} |")
    return "\n".join(out)


PAGES = {"podbay-yaml.md": podbay_yaml, "rest-api.md": rest_api, "cli.md": cli, "hub-settings.md": hub_settings,
         "metrics.md": metrics}


def generate(_app=None) -> None:
    for name, make in PAGES.items():
        text = make().rstrip() + "\n"
        path = HERE / name
        if not path.exists() or path.read_text() != text:  # unchanged pages are not rebuilt
            path.write_text(text)


def setup(app):
    app.connect("builder-inited", generate)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
