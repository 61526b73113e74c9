"""llmctl's verbs: one click group talking to the control socket."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import click

from . import render
from .client import DEFAULT_SOCKET, Client, ClientError, DaemonError, default_socket
from .follow import follow


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


def _client(ctx: click.Context) -> Client:
    return Client(ctx.obj["socket"])


def _run(fn: Callable[[], None]) -> None:
    """Run a verb; any client error is one line on stderr and exit 1."""
    try:
        fn()
    except DaemonError as exc:
        click.echo(f"llmctl: {exc}", err=True)
        sys.exit(1)
    except ClientError as exc:
        click.echo(f"llmctl: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--socket", "socket_path", metavar="PATH",
              help="llmd's control socket (default: $LLMD_SOCKET, then "
                   f"$XDG_RUNTIME_DIR/llmd/control.sock if it exists, then {DEFAULT_SOCKET}).")
@click.pass_context
def main(ctx: click.Context, socket_path: str | None) -> None:
    """Control llmd: load and unload models, see what runs."""
    ctx.obj = {"socket": socket_path or default_socket(os.environ)}


@main.command()
@click.argument("name", required=False)
@json_option
@click.pass_context
def status(ctx: click.Context, name: str | None, as_json: bool) -> None:
    """Show the daemon's status, or one model's."""
    def go() -> None:
        with _client(ctx) as c:
            data = c.call("GET", "/status", params={"model": name} if name else None)
        if as_json:
            _print_json(data)
        else:
            click.echo(render.model(data) if name else render.status(data))
    _run(go)


@main.command()
@json_option
@click.pass_context
def ps(ctx: click.Context, as_json: bool) -> None:
    """List models with their state, port, pid and requests in flight."""
    def go() -> None:
        with _client(ctx) as c:
            models = c.call("GET", "/ps")["models"]
        if as_json:
            _print_json(models)
        else:
            click.echo(render.ps(models))
    _run(go)


@main.command()
@click.argument("name")
@click.option("--no-wait", is_flag=True, help="Return at once instead of waiting for the load.")
@json_option
@click.pass_context
def load(ctx: click.Context, name: str, no_wait: bool, as_json: bool) -> None:
    """Load a model and wait until it is loaded (or failed), showing its progress."""
    def go() -> None:
        with _client(ctx) as c:
            if no_wait:
                model = c.call("POST", "/load", json={"model": name, "wait": False})
            else:
                with _Progress(as_json) as shown:
                    model_id = follow(c, "load", name, shown)
                model = c.call("GET", "/status", params={"model": model_id})
                if model["status"].get("failed"):
                    raise DaemonError(503, f"model '{model_id}' failed to load: "
                                           f"{model['status'].get('reason')}")
                if model["state"] == "unloaded":
                    raise DaemonError(503, f"{model_id}: unloaded before it was ready")
                if model["state"] != "loaded":  # draining meanwhile: loads again once stopped
                    model = c.call("POST", "/load", json={"model": model_id, "wait": True})
        if as_json:
            click.echo(json.dumps(model) if not no_wait else json.dumps(model, indent=2))
        elif no_wait:
            click.echo(f"{model['id']}: {render.state(model)}")
        else:
            click.echo(f"{model['id']}: loaded (pid {model.get('pid')}, port {model.get('port')})")
    _run(go)


class _Progress:
    """Shows each progress step: a bar on a terminal, JSON lines with --json, else nothing."""

    def __init__(self, as_json: bool, quiet: bool = False) -> None:
        self.as_json = as_json
        self.bar = not quiet and not as_json and sys.stderr.isatty()
        self.drawn = False

    def __enter__(self) -> _Progress:
        return self

    def __call__(self, model_id: str, load: dict[str, Any]) -> None:
        if self.as_json:
            click.echo(json.dumps({"model": model_id, **load}))
        elif self.bar:
            width = shutil.get_terminal_size().columns - 1
            click.echo("\r" + render.progress(load)[:width].ljust(width), nl=False, err=True)
            self.drawn = True

    def __exit__(self, *exc: object) -> None:
        if self.drawn:
            click.echo("", err=True)


@main.command()
@click.argument("name", required=False)
@click.option("--all", "every", is_flag=True, help="Unload every model that is loaded or loading.")
@click.option("--force", is_flag=True, help="Cancel requests in flight instead of waiting.")
@click.option("--no-wait", is_flag=True, help="Return at once instead of waiting for the stop.")
@json_option
@click.pass_context
def unload(ctx: click.Context, name: str | None, every: bool, force: bool, no_wait: bool,
           as_json: bool) -> None:
    """Unload a model (or --all) once its requests in flight are done (or at once with --force)."""
    if every == (name is not None):
        raise click.UsageError("name one model, or use --all")

    def go() -> None:
        with _client(ctx) as c:
            names = [name] if name is not None else [
                m["id"] for m in c.call("GET", "/ps")["models"]
                if m.get("state", "unloaded") != "unloaded"]
            # Every stop starts at once; then each is waited for.
            models = [c.call("POST", "/unload", json={"model": n, "force": force, "wait": False})
                      for n in names]
            for model in models:
                if model.get("state") == "draining" and model.get("leases") and not as_json:
                    click.echo(f"{model['id']}: draining ({model.get('leases', 0)} requests in "
                               "flight; --force cancels them)", err=True)
            if not no_wait:
                models = [c.call("POST", "/unload", json={"model": n, "force": force})
                          for n in names]
        if as_json:
            _print_json(models if every else models[0])
        elif every and not models:
            click.echo("no model is loaded")
        else:
            for model in models:
                click.echo(f"{model['id']}: {render.state(model)}")
    _run(go)


@main.command()
@click.argument("name")
@click.option("-n", "--lines", default=100, show_default=True, help="How many lines.")
@click.option("-f", "--follow", is_flag=True,
              help="Keep printing new lines as they come, across restarts, until interrupted.")
@json_option
@click.pass_context
def logs(ctx: click.Context, name: str, lines: int, follow: bool, as_json: bool) -> None:
    """Show the last lines a model's llama-server printed."""
    def go() -> None:
        with _client(ctx) as c:
            if follow:
                for event in c.stream("/logs", {"model": name, "lines": lines, "follow": 1}):
                    click.echo(json.dumps(event) if as_json else event["line"])
                return
            data = c.call("GET", "/logs", params={"model": name, "lines": lines})
        if as_json:
            _print_json(data)
        else:
            for line in data["lines"]:
                click.echo(line)
    _run(go)


@main.command()
@click.pass_context
def events(ctx: click.Context) -> None:
    """Follow state changes as JSON lines until interrupted."""
    def go() -> None:
        with _client(ctx) as c:
            for event in c.events():
                click.echo(json.dumps(event), nl=True)
    _run(go)


@main.command()
@json_option
@click.pass_context
def reload(ctx: click.Context, as_json: bool) -> None:
    """Re-read the configuration and the models directory (like SIGHUP)."""
    def go() -> None:
        with _client(ctx) as c:
            result = c.call("POST", "/reload")
        if as_json:
            _print_json(result)
        else:
            for key in ("added", "removed", "changed"):
                if result.get(key):
                    click.echo(f"{key}: {', '.join(result[key])}")
            if not any(result.get(k) for k in ("added", "removed", "changed")):
                click.echo("reloaded: no model changed")
    _run(go)


@main.command()
@click.argument("name")
@click.option("-q", "--quiet", is_flag=True, help="Print only the result.")
@json_option
@click.pass_context
def pull(ctx: click.Context, name: str, quiet: bool, as_json: bool) -> None:
    """Download a hub model (owner/repo:QUANT or a configured hf model) without loading it."""
    def go() -> None:
        with _client(ctx) as c:
            with _Progress(as_json, quiet) as shown:
                model_id = follow(c, "pull", name, shown)
            model = c.call("GET", "/status", params={"model": model_id})
        if model["status"].get("failed"):
            raise DaemonError(503, f"{model['id']}: {model['status'].get('reason')}")
        if as_json:
            click.echo(json.dumps(model))
        else:
            click.echo(f"{model['id']}: on disk at {model.get('path')}")
    _run(go)


# `llmctl files`: needs no daemon, so no Client and no _run. Its module is imported when
# a files verb runs, keeping the other verbs' start-up as it was.

user_option = click.option("--user", is_flag=True,
                           help="The user set: the units for systemctl --user, installed "
                                "under ~/.config and ~/.local/share.")


def _files_run(fn: Callable[[], None]) -> None:
    """Run a files verb; an unknown file or a failed write is one line on stderr, exit 1."""
    from . import files as shipped
    try:
        fn()
    except shipped.FilesError as exc:
        click.echo(f"llmctl: {exc}", err=True)
        sys.exit(1)
    except OSError as exc:
        hint = " (run as root, or use --user)" if isinstance(exc, PermissionError) else ""
        click.echo(f"llmctl: {exc.filename or ''}: {exc.strerror or exc}{hint}", err=True)
        sys.exit(1)


@main.group()
def files() -> None:
    """List, print or install the systemd units, man pages and example configuration."""


@files.command("list")
@user_option
@json_option
def files_list(user: bool, as_json: bool) -> None:
    """List the shipped files and where install puts them."""
    from . import files as shipped
    where = shipped.destinations("user" if user else "system", Path("/"), os.environ)
    if as_json:
        _print_json([{"name": name, "path": str(path)} for name, path in where.items()])
    else:
        click.echo(render.table(["NAME", "INSTALLED AS"], list(where.items())))


@files.command("show")
@click.argument("name")
@user_option
def files_show(name: str, user: bool) -> None:
    """Print one shipped file exactly as shipped (NAME: as list names it, or llmd.socket)."""
    from . import files as shipped

    def go() -> None:
        click.echo(shipped.read(shipped.resolve(name, "user" if user else "system")), nl=False)
    _files_run(go)


@files.command("install")
@user_option
@click.option("--root", metavar="DIR", type=click.Path(file_okay=False, path_type=Path),
              help="Install the system set under DIR instead of / (for a package or image).")
@click.option("--force", is_flag=True, help="Replace files that differ from the shipped ones.")
@json_option
def files_install(user: bool, root: Path | None, force: bool, as_json: bool) -> None:
    """Copy the files to where systemd and man look for them."""
    from . import files as shipped

    def go() -> None:
        if user and root is not None:
            raise shipped.FilesError("--root is for the system set, not --user")
        scope: shipped.Scope = "user" if user else "system"
        done = shipped.install(scope, root or Path("/"), os.environ, force=force)
        if as_json:
            _print_json([{"name": p.name, "path": str(p.path), "action": p.action}
                         for p in done])
            return
        click.echo(render.table(["ACTION", "PATH"], [(p.action, p.path) for p in done]))
        if root is None:
            _files_next_steps(scope)
    _files_run(go)


def _files_next_steps(scope: str) -> None:
    """After a real install: a note when the service's ExecStart= names no program (llmd
    installed elsewhere, e.g. by pipx), then the commands that start the socket."""
    from . import files as shipped
    home = Path(os.environ.get("HOME") or Path.home())
    unit = "systemd/llmd.service" if scope == "system" else "systemd/user/llmd.service"
    program = shipped.exec_start(shipped.read(unit), home)
    if program is not None and not os.access(program, os.X_OK):
        here = Path(sys.executable).parent / "llmd"
        click.echo(f"llmctl: note: llmd.service runs {program}, which is not there; "
                   f"this llmd is {here} (`systemctl {'--user ' if scope == 'user' else ''}"
                   "edit llmd.service` sets ExecStart=)", err=True)
    if scope == "system":
        click.echo("next: systemd-sysusers && systemctl daemon-reload && "
                   "systemctl enable --now llmd.socket", err=True)
    else:
        click.echo("next: systemctl --user daemon-reload && "
                   "systemctl --user enable --now llmd.socket", err=True)
