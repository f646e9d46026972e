"""Where the server and the token come from: flags, then LLMEC_SERVER / LLMEC_TOKEN, then the config file."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):  # noqa: UP036 (the CLI supports 3.10)
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_SERVER = "http://127.0.0.1:8000"


class ConfigError(Exception):
    pass


def config_path() -> Path:
    if os.environ.get("LLMEC_CONFIG"):
        return Path(os.environ["LLMEC_CONFIG"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "llmec" / "config.toml"


@dataclass
class Config:
    server: str
    token: str | None
    source: str


def read_file(path: Path | None = None) -> dict:
    path = path or config_path()
    if not path.exists():
        return {}
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"Cannot read {path}: {error}") from error


def load(server: str | None = None, token: str | None = None) -> Config:
    stored = read_file()
    resolved_server = server or os.environ.get("LLMEC_SERVER") or stored.get("server") or DEFAULT_SERVER
    resolved_token = token or os.environ.get("LLMEC_TOKEN") or stored.get("token")
    source = "flags" if token else "LLMEC_TOKEN" if os.environ.get("LLMEC_TOKEN") else str(config_path())
    return Config(server=resolved_server.rstrip("/"), token=resolved_token or None, source=source)


def save(server: str, token: str, path: Path | None = None) -> Path:
    """Write the config file readable by its owner only (it holds a secret)."""
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    # JSON string escaping is valid TOML basic-string escaping for these values.
    text = f"server = {json.dumps(server)}\ntoken = {json.dumps(token)}\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)
    return path
