"""Dialogs and full screens of the TUI. Dialogs return typed results (`ModalScreen[T]`).

Long because: it holds every dialog of the TUI, each one small and on its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import (Button, Footer, Input, Label, Log, OptionList, ProgressBar, Select,
                             SelectionList, Static)
from textual.widgets.option_list import Option

from .client import ClientError, PodbayClient, start_pairing, wait_for_pairing


class Confirm(ModalScreen[bool]):
    BINDINGS = [Binding("y", "answer(True)", "yes", id="confirm.yes"),
                Binding("n,escape", "answer(False)", "no", id="confirm.no")]

    def __init__(self, question: str):
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question, id="question")
            with Horizontal(classes="buttons"):
                yield Button("Yes (y)", variant="error", id="yes")
                yield Button("No (n)", id="no")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


@dataclass(frozen=True)
class WorkspaceForm:
    name: str
    options: dict[str, Any]


class NewWorkspace(ModalScreen[WorkspaceForm | None]):
    """Name, image, profile (with free counts and why a choice is unavailable), volumes."""

    BINDINGS = [Binding("escape", "cancel", "cancel", id="form.cancel"),
                Binding("ctrl+s", "submit", "start", id="form.submit")]

    def __init__(self, catalog: dict, volumes: list[dict], me: dict, *, name: str = "",
                 current: dict | None = None, editing: bool = False):
        super().__init__()
        self.catalog, self.volume_list, self.me = catalog, volumes, me
        self.initial_name, self.current, self.editing = name, current or {}, editing

    def compose(self) -> ComposeResult:
        quota, usage = self.me["quota"], self.me["usage"]
        left = quota["gpu_units"] - usage["gpu_units"]
        team = f"team {self.me['team']}" if self.me.get("team") else "no team"
        images = self.catalog["images"]
        default_image = self.current.get("image") or next((i["name"] for i in images if i["default"]), images[0]["name"])
        with Vertical(classes="dialog wide"):
            yield Label("Edit workspace (it restarts; your home is kept)" if self.editing else "New workspace",
                        classes="title")
            yield Label(f"{team}: {left:.2f} of {quota['gpu_units']:g} GPU units left, "
                        f"{usage['workspaces']} of {quota['workspaces_per_user']} workspaces", id="quota")
            yield Input(value=self.initial_name, placeholder="name (letters, digits, -)", id="name",
                        disabled=self.editing)
            yield Select([(i["display_name"], i["name"]) for i in images], value=default_image,
                         allow_blank=False, id="image")
            yield Label("GPU profile")
            options = []
            for p in self.catalog["profiles"]:
                free = "always" if p["free"] < 0 else f"{p['free']}/{p['total']} free"
                text = f"{p['id']:<14} {free:<12} {p['gpu_units_text']:>5} units"
                if p["kind"] == "shared":
                    text += "  (no memory isolation)"
                if not p["available"]:
                    text += f"  — {p['reason']}"
                options.append(Option(text, id=p["id"], disabled=not p["available"]
                                      and p["id"] != self.current.get("profile")))
            yield OptionList(*options, id="profile")
            yield Label("Volumes")
            chosen = set(self.current.get("volumes") or [])
            yield SelectionList[str](*[(f"{v['name']}  ~/{v['mount_path'].removeprefix('~/')} "
                                        f"({'ro' if v['read_only'] else 'rw'})", v["name"], v["name"] in chosen)
                                       for v in self.volume_list], id="volumes")
            with Horizontal(classes="buttons"):
                yield Button("Restart" if self.editing else "Start", variant="primary", id="start")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        profiles = self.query_one("#profile", OptionList)
        want = self.current.get("profile", "cpu")
        for i, p in enumerate(self.catalog["profiles"]):
            if p["id"] == want:
                profiles.highlighted = i

    def action_cancel(self) -> None:
        self.dismiss(None)

    def action_submit(self) -> None:
        name = self.query_one("#name", Input).value.strip()
        if not name:
            self.notify("Give the workspace a name.", severity="warning")
            return
        profiles = self.query_one("#profile", OptionList)
        if profiles.highlighted is None:
            self.notify("Pick a GPU profile.", severity="warning")
            return
        option = profiles.get_option_at_index(profiles.highlighted)
        if option.disabled:
            self.notify(f"{option.id} cannot be taken now: {option.prompt}", severity="warning")
            return
        self.dismiss(WorkspaceForm(name, {
            "image": self.query_one("#image", Select).value,
            "profile": option.id,
            "volumes": list(self.query_one("#volumes", SelectionList).selected),
        }))

    @on(Button.Pressed, "#start")
    def _start(self) -> None:
        self.action_submit()

    @on(Button.Pressed, "#cancel")
    def _cancel(self) -> None:
        self.dismiss(None)


class SpawnProgress(ModalScreen[bool]):
    """JupyterHub's progress events as a bar, until ready (True) or failed (False)."""

    BINDINGS = [Binding("escape", "close", "hide", id="progress.hide")]

    def __init__(self, client: PodbayClient, name: str):
        super().__init__()
        self.client, self.ws_name = client, name

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(f"Starting {self.ws_name}…", classes="title")
            yield ProgressBar(total=100, show_eta=False, id="bar")
            yield Label("", id="message")

    def on_mount(self) -> None:
        self.follow()

    @work(exclusive=True, group="progress")
    async def follow(self) -> None:
        message = self.query_one("#message", Label)
        try:
            async for event in self.client.progress(self.ws_name):
                self.query_one("#bar", ProgressBar).update(progress=event.get("progress", 0))
                message.update(event.get("message", ""))
                if event.get("failed"):
                    self.app.notify(f"{self.ws_name} failed to start: {event.get('message', '')}",
                                    severity="error", timeout=15)
                    self.dismiss(False)
                    return
                if event.get("ready"):
                    self.app.notify(f"{self.ws_name} is ready (o opens JupyterLab)")
                    self.dismiss(True)
                    return
        except ClientError as e:
            self.app.notify(str(e), severity="error")
            self.dismiss(False)

    def action_close(self) -> None:
        self.dismiss(False)


@dataclass(frozen=True)
class JobForm:
    body: dict[str, Any]


class SubmitJob(ModalScreen[JobForm | None]):
    BINDINGS = [Binding("escape", "cancel", "cancel", id="job.cancel"),
                Binding("ctrl+s", "submit", "submit", id="job.submit")]

    def __init__(self, workspace: str, client: PodbayClient | None = None):
        super().__init__()
        self.workspace, self.client = workspace, client

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Label(f"Move a training run from {self.workspace} to the training pool", classes="title")
            yield Label("Same image, volumes and home directory as the workspace.")
            yield Label("", id="job-gpus")
            yield Input(placeholder="command, e.g. python train.py --epochs 3", id="job-command")
            yield Input(value="1", placeholder="GPUs", id="gpus", type="integer")
            yield Input(value=f"{self.workspace}-train", placeholder="job name", id="jobname")
            with Horizontal(classes="buttons"):
                yield Button("Submit", variant="primary", id="submit")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        if self.client is not None:
            self._standing()

    @work(group="job-gpus")
    async def _standing(self) -> None:
        # The team's job GPUs as whoever enforces them says (a Slurm account's limit).
        from .fmt import job_gpus

        try:
            me = await self.client.me()
        except ClientError:
            return
        self.query_one("#job-gpus", Label).update(f"Team {me['team'] or '(none)'} job GPUs: {job_gpus(me)}")

    def action_cancel(self) -> None:
        self.dismiss(None)

    def action_submit(self) -> None:
        import shlex

        try:
            command = shlex.split(self.query_one("#job-command", Input).value)
        except ValueError as e:
            self.notify(f"The command does not parse: {e}", severity="warning")
            return
        if not command:
            self.notify("Give the command to run.", severity="warning")
            return
        gpus = self.query_one("#gpus", Input).value or "1"
        self.dismiss(JobForm({"name": self.query_one("#jobname", Input).value.strip(), "command": command,
                              "gpus": int(gpus), "from_workspace": self.workspace}))

    @on(Input.Submitted)
    def _enter(self, event: Input.Submitted) -> None:
        event.stop()  # the app has prompts of its own that listen for Submitted
        self.action_submit()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.action_submit() if event.button.id == "submit" else self.dismiss(None)


class Logs(Screen[None]):
    """A job's output: follows while the job runs; wrap and save to a file."""

    BINDINGS = [Binding("escape", "app.pop_screen", "back", id="logs.back"),
                Binding("f", "toggle_follow", "follow", id="logs.follow"),
                Binding("w", "toggle_wrap", "wrap", id="logs.wrap"),
                Binding("ctrl+s", "save", "save", id="logs.save")]

    def __init__(self, client: PodbayClient, job: dict):
        super().__init__()
        self.client, self.job = client, job
        self.following = True
        self.text = ""

    def compose(self) -> ComposeResult:
        yield Label(f"Logs of job {self.job['id']} ({self.job['name']}) — f follow, w wrap, ctrl+s save",
                    classes="title")
        yield Log(id="log", highlight=False, auto_scroll=True)
        yield Footer()

    def on_mount(self) -> None:
        self.stream()

    @work(exclusive=True, group="logs")
    async def stream(self) -> None:
        log = self.query_one("#log", Log)
        try:
            async for chunk in self.client.follow_logs(self.job["id"]):
                self.text += chunk
                log.write(chunk)
        except ClientError as e:
            self.app.notify(str(e), severity="error")

    def action_toggle_follow(self) -> None:
        self.following = not self.following
        self.query_one("#log", Log).auto_scroll = self.following
        self.notify("following" if self.following else "not following")

    def action_toggle_wrap(self) -> None:
        log = self.query_one("#log", Log)
        log.styles.text_wrap = "wrap" if log.styles.text_wrap != "wrap" else "nowrap"
        log.refresh()

    def action_save(self) -> None:
        path = Path.cwd() / f"job-{self.job['id']}-{self.job['name']}.log"
        path.write_text(self.text)
        self.notify(f"saved to {path}")


class Details(Screen[None]):
    BINDINGS = [Binding("escape", "app.pop_screen", "back", id="details.back")]

    def __init__(self, title: str, data: Any):
        super().__init__()
        self.heading, self.data = title, data

    def compose(self) -> ComposeResult:
        yield Label(self.heading, classes="title")
        with VerticalScroll():
            yield Static(json.dumps(self.data, indent=2, default=str), id="details")
        yield Footer()


class Holders(Screen[None]):
    """Who holds which GPU or slice, node by node: the capacity page's picture."""

    BINDINGS = [Binding("escape", "app.pop_screen", "back", id="holders.back"),
                Binding("r", "refresh", "refresh", id="holders.refresh")]

    def __init__(self, client: PodbayClient, me: str | None):
        super().__init__()
        self.client, self.me = client, me

    def compose(self) -> ComposeResult:
        yield Label("GPUs: who holds what (yours in blue, free in green)", classes="title")
        with VerticalScroll():
            yield Static("loading…", id="holders")
        yield Footer()

    def on_mount(self) -> None:
        self.action_refresh()

    @work(exclusive=True, group="holders")
    async def action_refresh(self) -> None:
        from .picture import picture

        try:
            drawn = picture(await self.client.gpus(), self.me)
        except ClientError as e:
            self.query_one("#holders", Static).update(f"cannot load: {e}")
            return
        self.query_one("#holders", Static).update(drawn)


class Connect(ModalScreen[None]):
    """Both ways into a workspace from desktop VS Code (and a terminal), with the exact
    commands; keys copy them, make a Jupyter token, or write podbay's ~/.ssh/config block."""

    BINDINGS = [Binding("escape,enter", "dismiss", "close", id="connect.close"),
                Binding("s", "copy('ssh')", "copy ssh", id="connect.ssh"),
                Binding("v", "copy('vscode')", "copy Remote-SSH link", id="connect.vscode"),
                Binding("j", "jupyter", "Jupyter token", id="connect.jupyter"),
                Binding("w", "write_config", "write ~/.ssh/config", id="connect.write")]

    def __init__(self, text: str, copies: dict[str, str], on_jupyter, on_write):
        super().__init__()
        self.text, self.copies = text, copies
        self.on_jupyter, self.on_write = on_jupyter, on_write

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Static(self.text, id="connect")
            yield Static("", id="connect-result")
        yield Footer()

    def show(self, text: str) -> None:
        self.query_one("#connect-result", Static).update(text)

    def action_copy(self, what: str) -> None:
        value = self.copies[what]
        self.app.copy_to_clipboard(value)
        self.show(f"Copied: {value}")

    def action_jupyter(self) -> None:
        self.on_jupyter(self)

    def action_write_config(self) -> None:
        self.on_write(self)


class Help(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark", "dismiss", "close", id="help.close")]

    def __init__(self, title: str, keys: list[tuple[str, str]]):
        super().__init__()
        self.heading, self.keys = title, keys

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(f"Keys — {self.heading}", classes="title")
            yield Static("\n".join(f"{k:>8}  {d}" for k, d in self.keys), id="help")


class Login(ModalScreen[str | None]):
    """Log in without copying a token: the portal's code and link, approved in a browser
    (hub/service/pairing.py); dismissed with the new token (also stored, as `podbay login` does), or
    None when the person leaves."""

    BINDINGS = [Binding("escape", "cancel", "cancel", id="login.cancel"),
                Binding("r", "retry", "new code", id="login.retry")]

    def __init__(self, url: str, reason: str):
        super().__init__()
        self.url, self.reason = url, reason

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(f"Log in to {self.url}", classes="title")
            yield Label(self.reason, id="reason")
            yield Static("", id="code")
            yield Static("", id="link")
            yield Label("Asking the portal for a code…", id="status")

    def on_mount(self) -> None:
        self.pair()

    @work(exclusive=True, group="login")
    async def pair(self) -> None:
        import os
        import socket
        import webbrowser

        from .credentials import store

        status = self.query_one("#status", Label)
        try:
            started = await start_pairing(self.url, socket.gethostname())
            if started is None:
                status.update("This portal cannot pair a terminal: run `podbay login --paste` outside the TUI.")
                return
            link = f"{self.url}{started['verification_path']}"
            self.query_one("#code", Static).update(f"Code: {started['user_code']}")
            self.query_one("#link", Static).update(f"Open {link} in a browser, log in, enter the code and approve.")
            status.update("Waiting for the approval… (escape leaves)")
            if os.environ.get("BROWSER") or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
                webbrowser.open(link)
            record = await wait_for_pairing(self.url, started)
        except ClientError as e:
            status.update(f"{e}. Press r for a new code, escape to leave.")
            return
        store(self.url, record["token"])
        self.app.notify(f"Logged in as {record['user']}")
        self.dismiss(record["token"])

    def action_retry(self) -> None:
        self.pair()

    def action_cancel(self) -> None:
        self.dismiss(None)


@dataclass(frozen=True)
class SecretForm:
    name: str
    value: str = field(repr=False)


class SetSecret(ModalScreen[SecretForm | None]):
    """A secret's name and value; the value is typed hidden and never shown again."""

    BINDINGS = [Binding("escape", "cancel", "cancel", id="secret.cancel"),
                Binding("ctrl+s", "save", "save", id="secret.save")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Set a secret for your workspaces and jobs", classes="title")
            yield Input(placeholder="NAME (e.g. WANDB_API_KEY)", id="secret-name")
            yield Input(placeholder="value", password=True, id="secret-value")
            yield Label("ctrl+s saves, escape cancels", id="hint")

    def action_save(self) -> None:
        name = self.query_one("#secret-name", Input).value.strip()
        value = self.query_one("#secret-value", Input).value
        if not name or not value:
            self.query_one("#hint", Label).update("Give a name and a value.")
            return
        self.dismiss(SecretForm(name, value))

    @on(Input.Submitted, "#secret-value")
    def _submitted(self) -> None:
        self.action_save()

    def action_cancel(self) -> None:
        self.dismiss(None)
