"""The `llmd` command."""

from __future__ import annotations

import logging
import os
import sys
from functools import partial
from pathlib import Path

import click
import trio

from llmd import __version__
from llmd.models import catalog
from llmd import config as config_mod
from llmd import daemon
from llmd.hub import download
from llmd import systemd
from llmd.errors import ConfigError


_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """`<N>name: message`: the journal reads the priority and stamps the time itself."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_PRIORITY.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def stderr_is_journal(env: dict[str, str] | os._Environ[str]) -> bool:
    """True when stderr is the stream $JOURNAL_STREAM names (device:inode)."""
    try:
        st = os.fstat(sys.stderr.fileno())
        return env.get("JOURNAL_STREAM", "") == f"{st.st_dev}:{st.st_ino}"
    except (OSError, ValueError):
        return False


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if stderr_is_journal(os.environ):
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per upstream request is noise


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Configuration file (default: $CONFIGURATION_DIRECTORY/llmd.toml, "
                   "then /etc/llmd/llmd.toml).")
@click.option("--listen", help="Router address HOST:PORT (default 127.0.0.1:8080).")
@click.option("--control-socket", help="Control socket path.")
@click.option("--models-dir", help="Directory scanned for *.gguf models.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.version_option(__version__, prog_name="llmd")
def main(config_path: Path | None, listen: str | None, control_socket: str | None,
         models_dir: str | None, log_level: str) -> None:
    """Route OpenAI-compatible requests to llama-server processes it loads on demand."""
    _setup_logging(log_level)
    overrides = {"listen": listen, "control_socket": control_socket, "models_dir": models_dir}

    def load() -> tuple[config_mod.Config, dict[str, catalog.ModelSpec]]:
        config = config_mod.load(config_path, overrides)
        cache = Path(config.hub_cache)
        listed = download.scan_cache(cache)
        if os.environ.get("LLAMA_CACHE"):  # llama.cpp's own downloads, same layout
            listed = {**download.scan_cache(Path(os.environ["LLAMA_CACHE"])), **listed}
        return config, catalog.build(config, partial(download.find_cached, cache), listed)

    try:
        config, specs = load()
    except ConfigError as exc:
        click.echo(f"llmd: {exc}", err=True)
        sys.exit(2)
    try:
        activation = systemd.listen_fds(os.environ)
    except systemd.ActivationError as exc:
        click.echo(f"llmd: {exc}", err=True)
        sys.exit(1)
    if activation.ignored:
        logging.getLogger("llmd").warning("%s", activation.ignored)
    for key in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        os.environ.pop(key, None)
    notifier = systemd.Notifier(os.environ)
    try:
        trio.run(daemon.run, config, specs, activation, notifier, load)
    except daemon.ListenError as exc:
        click.echo(f"llmd: {exc}", err=True)
        sys.exit(1)
    finally:
        notifier.close()


if __name__ == "__main__":
    main()
