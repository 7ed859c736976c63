"""`podbay tui`: k9s for GPU workspaces.

`:ws`, `:jobs`, `:gpu`, `:vol` switch views; `/` filters (regex, `!` inverts); `?` shows
the keys of the view; `esc` goes back; `r` refreshes. Only the visible view refreshes
itself, in a worker, so typing is never blocked by the network. Every failure ends in a
notification that says what to do (`_report`), never in a crash.

Long because: it is one Textual App, whose bindings, views and workers belong to one class;
the views and the dialogs live in views.py and screens.py.
"""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.widgets import ContentSwitcher, Footer, Input, Label

from .client import AuthError, ClientError, Forbidden, HubUnavailable, PodbayClient, Refused, Workspace
from .views import CapacityView, JobsView, SecretsView, UsageView, View, VolumesView, WorkspacesView

if TYPE_CHECKING:
    from .screens import Connect, JobForm, WorkspaceForm

# The dialogs (screens.py) are imported where each first opens: the first paint waits for none.

VIEWS = {"ws": WorkspacesView, "jobs": JobsView, "gpu": CapacityView, "vol": VolumesView, "sec": SecretsView,
         "usage": UsageView}
ALIASES = {"ws": "ws", "workspaces": "ws", "jobs": "jobs", "job": "jobs", "j": "jobs", "gpu": "gpu",
           "gpus": "gpu", "capacity": "gpu", "cap": "gpu", "vol": "vol", "volumes": "vol", "v": "vol",
           "sec": "sec", "secrets": "sec", "usage": "usage", "u": "usage"}

VIEW_KEYS = {
    "ws": [("n", "new workspace"), ("o", "open JupyterLab"), ("c", "connect VS Code"), ("e", "edit profile/volumes"),
           ("s", "stop"), ("ctrl+d", "delete"), ("t", "move a job to the training pool"), ("d", "details")],
    "jobs": [("l", "logs"), ("d", "details"), ("ctrl+d", "cancel")],
    "gpu": [],
    "vol": [],
    "sec": [("n", "set a secret"), ("ctrl+d", "remove")],
    "usage": [],
}
COMMON_KEYS = [(":", "command (:ws :jobs :gpu :vol :sec :usage)"), ("/", "filter (regex, ! inverts)"), ("r", "refresh"),
               ("esc", "back / clear filter"), ("?", "this help"), ("q", "quit")]


class PodbayApp(App):
    CSS_PATH = "podbay.tcss"
    TITLE = "podbay"
    BINDINGS = [
        Binding("colon", "command", "command", key_display=":", id="app.command"),
        Binding("slash", "filter", "filter", id="app.filter"),
        Binding("question_mark", "help", "help", id="app.help"),
        Binding("r", "refresh", "refresh", id="app.refresh"),
        Binding("escape", "back", "back", show=False, id="app.back"),
        Binding("q", "quit", "quit", id="app.quit"),
        Binding("n", "new", "new", id="ws.new"),
        Binding("o", "open", "open", id="ws.open"),
        Binding("c", "connect", "connect", id="ws.connect"),
        Binding("e", "edit", "edit", id="ws.edit"),
        Binding("s", "stop", "stop", id="ws.stop"),
        Binding("t", "train", "to training", id="ws.train"),
        Binding("l", "logs", "logs", id="job.logs"),
        Binding("d", "details", "details", id="view.details"),
        Binding("h", "holders", "who holds what", id="gpu.holders"),
        Binding("ctrl+d", "delete", "delete", id="view.delete"),
    ]

    def __init__(self, url: str, token: str | None, *, client: PodbayClient | None = None,
                 refresh_interval: float = 5.0, exit_after_first_paint: bool = False, clock=None,
                 service_url: str | None = None):
        super().__init__()
        # No token: the app opens on the login screen.
        self.logged_in = token is not None
        self.client = client or PodbayClient(url, token or "", service_url=service_url)
        self.refresh_interval = refresh_interval
        self.exit_after_first_paint = exit_after_first_paint
        self.history: list[str] = []
        self.current = "ws"
        self.clock = clock

    def compose(self) -> ComposeResult:
        yield Label(f"podbay  {self.client.url}", id="topbar")
        with ContentSwitcher(initial="ws", id="views"):
            # The other views are made when first shown: the first paint waits for none of them.
            yield self._new_view("ws")
        yield Input(placeholder=":ws :jobs :gpu :vol", id="command", classes="prompt")
        yield Input(placeholder="/filter (regex, ! inverts)", id="filter", classes="prompt")
        yield Footer()

    def on_mount(self) -> None:
        # Kept as attributes: queries run against the active screen, which may be a dialog.
        self.command_box = self.query_one("#command", Input)
        self.filter_box = self.query_one("#filter", Input)
        self.command_box.display = False
        self.filter_box.display = False
        self.view.focus()
        self.set_interval(self.refresh_interval, self.load_view)
        if not self.logged_in:
            self.login("Not logged in.")
            return
        self.load_view()
        self.whoami()

    def login(self, reason: str) -> None:
        """The login screen, once at a time; a new login reloads everything."""
        from .screens import Login
        if any(isinstance(s, Login) for s in self.screen_stack):
            return

        def done(token: str | None) -> None:
            if token is None:
                if not self.logged_in:
                    self.exit()
                return
            self.logged_in = True
            self.client.use_token(token)
            self.whoami()
            self.load_view()

        self.push_screen(Login(self.client.url, reason), done)

    # --- data ---------------------------------------------------------------------------

    @property
    def view(self) -> View:
        return self.screen_stack[0].query_one(f"#{self.current}", View)

    @work(exclusive=True, group="refresh")
    async def load_view(self) -> None:
        """Refresh the visible view only; the others wait until they are shown."""
        if not self.logged_in:
            return
        view = self.view
        try:
            data = await view.load(self.client)
        except ClientError as e:
            self._report(e)
            return
        try:
            shown = self.view
        except NoMatches:  # the app closed while the answer came: its screens are gone
            return
        if view is shown:
            view.show(data)
            self.sub_title = f"{view.title} ({len(data)})" + (f"  /{view.filter}" if view.filter else "")
        if self.exit_after_first_paint:
            self.call_after_refresh(self.exit)
            return
        if self.current == "ws":
            await self._notices()

    async def _notices(self) -> None:
        """An idle GPU's warning, once, where the person looks (the notices of podbay's
        service; an older portal without them says nothing)."""
        try:
            notes = await self.client.notices()
        except ClientError:
            return
        seen = self.__dict__.setdefault("_seen_notices", set())
        for n in notes:
            key = (n["workspace"], n["kind"], n["at"])
            if key in seen:
                continue
            seen.add(key)
            self.notify(n["message"], title="GPU idle" if n["kind"] == "warning" else "Idle GPU rule",
                        severity="warning" if n["kind"] == "warning" else "information", timeout=30)

    @work(group="whoami")
    async def whoami(self) -> None:
        try:
            model = await self.client.whoami()
            self.screen_stack[0].query_one("#topbar", Label).update(f"podbay  {self.client.url}  user: {model['name']}")
        except ClientError as e:
            self._report(e)

    def _report(self, e: Exception) -> None:
        """The one place where failures become words."""
        if isinstance(e, AuthError):
            self.notify(f"{e}", title="Not logged in", severity="error", timeout=10)
            if self.logged_in:
                self.login("Your login expired or was revoked: log in again.")
        elif isinstance(e, HubUnavailable):
            self.notify(f"{e}", title="Hub unreachable", severity="error", timeout=8)
        elif isinstance(e, Forbidden):
            self.notify(str(e), title="Forbidden", severity="error")
        elif isinstance(e, Refused):
            title = {403: "Quota", 503: "No capacity"}.get(e.status, "Refused")
            self.notify(str(e), title=title, severity="warning", timeout=10)
        else:
            self.notify(str(e), severity="error")

    # --- navigation ---------------------------------------------------------------------------

    def _new_view(self, key: str) -> View:
        return VIEWS[key](id=key, **({"clock": self.clock} if self.clock else {}))

    async def switch(self, key: str, remember: bool = True) -> None:
        if key == self.current:
            return
        switcher = self.screen_stack[0].query_one(ContentSwitcher)
        if not switcher.query_children(f"#{key}"):
            view = self._new_view(key)
            view.display = False  # until the switcher shows it
            await switcher.mount(view)
        if remember:
            self.history.append(self.current)
        self.current = key
        switcher.current = key
        self.view.focus()
        self.sub_title = self.view.title
        self.load_view()

    def action_command(self) -> None:
        box = self.command_box
        box.display = True
        box.value = ""
        # Focus now, not after a refresh: a fast ":jobs" must not leave "jobs" to the table
        # (where o and s are verbs).
        self.set_focus(box)

    def action_filter(self) -> None:
        box = self.filter_box
        box.display = True
        box.value = self.view.filter
        self.set_focus(box)

    @on(Input.Submitted, "#command")
    async def _run_command(self, event: Input.Submitted) -> None:
        word = event.value.strip().lstrip(":").lower()
        event.input.display = False
        if word in ("q", "quit"):
            self.exit()
            return
        if word not in ALIASES:
            self.notify(f"unknown command :{word}; try :ws :jobs :gpu :vol :sec :usage", severity="warning")
            self.view.focus()
            return
        await self.switch(ALIASES[word])
        self.view.focus()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.view.filter = event.value
        self.view.show(self.view.data)

    @on(Input.Submitted, "#filter")
    def _filter_done(self, event: Input.Submitted) -> None:
        event.input.display = False
        self.view.focus()

    async def action_back(self) -> None:
        for box in (self.command_box, self.filter_box):
            if box.display:
                box.display = False
                self.view.focus()
                return
        if self.view.filter:
            self.view.filter = ""
            self.view.show(self.view.data)
        elif self.history:
            await self.switch(self.history.pop(), remember=False)

    def action_help(self) -> None:
        from .screens import Help
        self.push_screen(Help(self.view.title, VIEW_KEYS[self.current] + COMMON_KEYS))

    def action_refresh(self) -> None:
        self.load_view()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Verbs only where they mean something: none of them acts while a prompt is open."""
        if (self.command_box.has_focus or self.filter_box.has_focus) and action != "back":
            return False
        per_view = {"open": "ws", "connect": "ws", "edit": "ws", "stop": "ws", "train": "ws",
                    "logs": "jobs", "holders": "gpu"}
        if action in per_view:
            return self.current == per_view[action]
        if action == "new":
            return self.current in ("ws", "sec")
        if action == "delete":
            return self.current in ("ws", "jobs", "sec")
        return True

    # --- workspaces ---------------------------------------------------------------------------

    def _selected_ws(self) -> Workspace | None:
        ws = self.view.selected() if self.current == "ws" else None
        if ws is None:
            self.notify("No workspace selected; n makes one.", severity="warning")
        return ws

    @work(group="forms")
    async def action_new(self, name: str = "", current: dict | None = None, editing: bool = False) -> None:
        from .screens import NewWorkspace, SetSecret, SpawnProgress
        if self.current == "sec":
            secret = await self.push_screen_wait(SetSecret())
            if secret is not None:
                self._call(functools.partial(self.client.set_secret, secret.name), secret.value,
                           f"{secret.name} is set: workspaces and jobs you start from now on get it")
            return
        try:
            catalog, volumes, me = await asyncio.gather(self.client.catalog(), self.client.volumes(), self.client.me())
        except ClientError as e:
            self._report(e)
            return
        form: WorkspaceForm | None = await self.push_screen_wait(
            NewWorkspace(catalog, volumes, me, name=name, current=current, editing=editing))
        if form is None:
            return
        try:
            if editing:
                await self.client.stop_workspace(form.name)
            await self.client.start_workspace(form.name, form.options)
        except ClientError as e:
            self._report(e)
            self.load_view()
            return
        self.load_view()
        await self.push_screen_wait(SpawnProgress(self.client, form.name))
        self.load_view()

    def action_edit(self) -> None:
        from .screens import Confirm
        ws = self._selected_ws()
        if ws is None:
            return

        async def confirmed(ok: bool | None) -> None:
            if ok:
                self.action_new(ws.name, {"image": ws.image, "profile": ws.profile, "volumes": ws.volumes}, True)
        if ws.state == "ready":
            self.push_screen(Confirm(f"Editing restarts {ws.name} (your home is kept). Go on?"), confirmed)
        else:
            self.action_new(ws.name, {"image": ws.image, "profile": ws.profile, "volumes": ws.volumes}, True)

    def action_open(self) -> None:
        ws = self._selected_ws()
        if ws is None:
            return
        if ws.state != "ready":
            self.notify(f"{ws.name} is {ws.state}; e starts it again.", severity="warning")
            return
        url = self.client.lab_url(ws)
        import webbrowser

        opened = webbrowser.open(url) if _have_browser() else False
        self.copy_to_clipboard(url)
        self.notify(("Opened " if opened else "Copied: ") + url, timeout=15)

    def action_connect(self) -> None:
        ws = self._selected_ws()
        if ws is not None:
            self._connect(ws)

    @work(group="calls")
    async def _connect(self, ws: Workspace) -> None:
        from .ssh import host_alias

        try:
            info = await self.client.ssh_info()
        except ClientError as e:
            self._report(e)
            return
        host = host_alias(ws.name)
        link = f"vscode://vscode-remote/ssh-remote+{host}{info['home']}"
        server = self.client.server_url(ws)
        keys = (f"{info['keys']} SSH key(s) registered (podbay keys ls)" if info["keys"] else
                "No SSH key registered yet: podbay keys add (workspaces take no passwords)")
        running = "" if ws.state == "ready" else f"\n{ws.name} is {ws.state}: podbay ssh --start {ws.name} starts it.\n"
        text = (f"Connect to {ws.name}\n{running}\n"
                f"VS Code in the browser (code-server):\n  {server}vscode/\n\n"
                "Desktop VS Code, Remote-SSH (editor, terminal and debugger in the workspace):\n"
                "  1. w writes podbay's hosts into ~/.ssh/config (again after new workspaces)\n"
                f"  2. Remote-SSH: Connect to Host… → {host}, or open\n     {link}\n"
                f"  From a terminal: ssh {host}   (or: podbay ssh {ws.name})\n"
                f"  {keys}\n\n"
                "Desktop VS Code, Jupyter extension (notebooks on this workspace's kernels):\n"
                "  j makes a token for this workspace only, then Select Kernel → Existing JupyterHub Server\n\n"
                "s copy ssh · v copy the Remote-SSH link · j Jupyter token · w write ~/.ssh/config · esc close")
        from .screens import Connect
        self.push_screen(Connect(text, {"ssh": f"ssh {host}", "vscode": link},
                                 on_jupyter=lambda screen: self._jupyter_token(screen, ws),
                                 on_write=self._write_ssh_config))

    @work(group="calls")
    async def _jupyter_token(self, screen: Connect, ws: Workspace) -> None:
        try:
            made = await self.client.jupyter_token(ws.name)
        except ClientError as e:
            screen.show(str(e))
            return
        server = self.client.server_url(ws)
        self.copy_to_clipboard(f"{server}?token={made['token']}")
        screen.show(f"Jupyter extension → Existing JupyterHub Server:\n  URL       {server}\n"
                    f"  username  {self.client.user}\n  token     {made['token']}\n"
                    f"Copied as one URL (Existing Jupyter Server). It reaches {ws.name} only, until "
                    f"{(made.get('expires_at') or 'revoked')[:10]}.")

    @work(group="calls")
    async def _write_ssh_config(self, screen: Connect) -> None:
        from pathlib import Path

        from .ssh import config_block, write_config

        try:
            names = [w.name for w in await self.client.workspaces()]
            info = await self.client.ssh_info()
        except ClientError as e:
            screen.show(str(e))
            return
        path = Path("~/.ssh/config").expanduser()
        try:
            changed = await asyncio.to_thread(write_config, path, config_block(self.client.url, self.client.user,
                                                                              info["login"], names))
        except OSError as e:
            screen.show(f"Could not write {path}: {e.strerror}")
            return
        screen.show(f"{'Wrote' if changed else 'Already up to date:'} podbay's hosts in {path} "
                    f"({', '.join(f'podbay.{n}' for n in names)}).")

    def action_stop(self) -> None:
        ws = self._selected_ws()
        if ws is None:
            return
        self._call(self.client.stop_workspace, ws.name, f"{ws.name} stopped")

    @work(group="calls")
    async def _call(self, fn, arg, done) -> None:
        """Run one client call in a worker; `done` words its result for a notification."""
        try:
            result = await fn(arg)
            self.notify(done(result) if callable(done) else done)
        except ClientError as e:
            self._report(e)
        self.load_view()

    def action_train(self) -> None:
        from .screens import SubmitJob
        ws = self._selected_ws()
        if ws is None:
            return

        async def submitted(form: JobForm | None) -> None:
            if form is None:
                return
            try:
                job = await self.client.submit_job(form.body)
            except ClientError as e:
                self._report(e)
                return
            self.notify(f"job {job['id']} ({job['name']}) {job['state']} — :jobs to follow it")
        self.push_screen(SubmitJob(ws.name, self.client), submitted)

    # --- jobs and shared verbs ------------------------------------------------------------------

    def action_logs(self) -> None:
        from .screens import Logs
        job = self.view.selected()
        if job is None:
            self.notify("No job selected.", severity="warning")
            return
        self.push_screen(Logs(self.client, job))

    def action_holders(self) -> None:
        from .screens import Holders
        self.push_screen(Holders(self.client, self.client.user))

    def action_details(self) -> None:
        from .screens import Details
        item = self.view.selected()
        if item is None:
            return
        data = item.__dict__ if isinstance(item, Workspace) else item
        self.push_screen(Details(f"{self.view.title}: {self.view.key_of(item)}", data))

    def action_delete(self) -> None:
        from .screens import Confirm
        item = self.view.selected()
        if item is None:
            return
        if self.current == "ws":
            async def ok(yes: bool | None) -> None:
                if yes:
                    self._call(self.client.delete_workspace, item.name, f"{item.name} deleted")
            self.push_screen(Confirm(f"Delete workspace {item.name}? Its home directory is kept."), ok)
        elif self.current == "jobs":
            async def ok(yes: bool | None) -> None:
                if yes:
                    self._call(self.client.cancel_job, item["id"], lambda job: f"job {job['id']}: {job['state']}")
            self.push_screen(Confirm(f"Cancel job {item['id']} ({item['name']})?"), ok)
        elif self.current == "sec":
            async def ok(yes: bool | None) -> None:
                if yes:
                    self._call(self.client.delete_secret, item["name"], f"{item['name']} removed")
            self.push_screen(Confirm(f"Remove the secret {item['name']}? Running workspaces keep it until they stop."),
                             ok)

    async def on_unmount(self) -> None:
        await self.client.aclose()


def _have_browser() -> bool:
    import os
    import sys

    return bool(os.environ.get("BROWSER") or os.environ.get("DISPLAY") or sys.platform == "darwin")


__all__ = ["PodbayApp"]
