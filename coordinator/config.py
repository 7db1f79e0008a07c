"""Cluster configuration: the ``metadata.dn`` section of ``cluster.yaml`` as one typed object.

Precedence, lowest first: the embedded defaults below, the file's ``metadata.dn`` section,
environment variables (``DN_NAMESPACE``, ``DN_SHARDS``, ``DN_STORE``, ``DN_LOG_URL``), then the
keyword overrides of :func:`coordinator.deploy` / ``dn up``. Unknown keys are an error, so a
typo never silently falls back to a default.

Keys are cluster keys (the fields of :class:`ClusterConfig`), engine settings (the fields of
:class:`dn.Settings`, under ``engine:`` in the file) or shell settings (the fields of
:class:`dn.settings.ShellSettings`: the client library's and the shard actors' tunables, under
``shell:``). Engine and shell settings may also be given at the top level, in the file or as
overrides, e.g. ``deploy(freeze_bytes=..., retry_s=...)``.

Invariants: ``store`` is made absolute when it is a local path (actors run in other working
directories); the engine's ``background`` setting is always False on a cluster (the shard actor
drives maintenance itself, see :mod:`shards.loop`).

Pure: no Ray, no I/O except reading the YAML file. Any caller, any thread.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from dn.errors import InvalidArgument
from dn.settings import Settings, ShellSettings

_ENGINE_KEYS = frozenset(f.name for f in fields(Settings))
_SHELL_KEYS = frozenset(f.name for f in fields(ShellSettings))
_SECTIONS = {"engine": _ENGINE_KEYS, "shell": _SHELL_KEYS}
_ENV = {
    "DN_NAMESPACE": "namespace",
    "DN_SHARDS": "shards",
    "DN_STORE": "store",
    "DN_LOG_URL": "log_url",
}


#: Parts of an environment variable's name that mark a secret (never put in a runtime env).
SECRET_NAME_PARTS = ("SECRET", "TOKEN", "PASSWORD", "PASSWD", "CREDENTIAL", "PRIVATE_KEY")


def is_secret_name(name: str) -> bool:
    """Whether an environment variable's name says it holds a secret."""
    upper = name.upper()
    return any(part in upper for part in SECRET_NAME_PARTS)


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """Everything a deployment needs. Every field is documented in ``cluster.yaml``."""

    #: Ray namespace holding the coordinator and shard actors.
    namespace: str = "dn"
    #: Number of shards; fixed when the cluster is first created in its store.
    shards: int = 4
    #: Object store URL: a directory, ``file:///path``, ``s3://bucket/prefix`` or ``memory://n``.
    store: str = "./data"
    #: Environment variables for the actors (e.g. ``AWS_ENDPOINT_URL``); secrets are refused
    #: (a runtime env is visible to anyone who can list tasks): nodes take credentials from
    #: their own environment or instance profile.
    env: dict[str, str] = field(default_factory=dict)
    #: CPUs reserved per shard actor (0: shards do not block task slots).
    shard_num_cpus: float = 0.0
    #: Concurrent calls one shard actor serves; concurrent writes share a log write.
    shard_max_concurrency: int = 64
    #: New shard actors a reshard starts at once (None: one per live Ray node). A start takes
    #: about two CPU-seconds from the node's writers (decision 0018, item 20).
    reshard_start_concurrency: int | None = None
    #: Largest clock difference assumed between nodes, in ms; each write waits it out.
    clock_skew_ms: int = 0
    #: Settings of each shard engine (see :class:`dn.Settings`).
    engine: Settings = field(default_factory=lambda: Settings(background=False))
    #: Settings of the clients and shard actors (see :class:`dn.settings.ShellSettings`).
    shell: ShellSettings = field(default_factory=ShellSettings)

    def __post_init__(self) -> None:
        if not isinstance(self.namespace, str) or not self.namespace:
            raise InvalidArgument("namespace must be a non-empty string")
        if type(self.shards) is not int or not 1 <= self.shards <= 4096:
            raise InvalidArgument(f"shards must be an int in 1..4096, got {self.shards!r}")
        if not isinstance(self.store, str) or not self.store:
            raise InvalidArgument("store must be a non-empty URL or path")
        if not isinstance(self.env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.env.items()
        ):
            raise InvalidArgument("env must map variable names to string values")
        secret = sorted(k for k in self.env if is_secret_name(k))
        if secret:
            raise InvalidArgument(
                f"env must not hold secrets ({', '.join(secret)}): Ray shows a runtime "
                "environment to anyone who can list tasks; give the nodes credentials in their "
                "own environment or an instance profile",
                variables=secret,
            )
        v = self.shard_num_cpus
        if not isinstance(v, int | float) or isinstance(v, bool) or v < 0:
            raise InvalidArgument(f"shard_num_cpus must be a number >= 0, got {v!r}")
        if type(self.shard_max_concurrency) is not int or self.shard_max_concurrency <= 0:
            raise InvalidArgument(
                f"shard_max_concurrency must be a positive int, got {self.shard_max_concurrency!r}"
            )
        v = self.reshard_start_concurrency
        if v is not None and (type(v) is not int or v <= 0):
            raise InvalidArgument(
                f"reshard_start_concurrency must be a positive int or null, got {v!r}"
            )
        if type(self.clock_skew_ms) is not int or self.clock_skew_ms < 0:
            raise InvalidArgument("clock_skew_ms must be an int >= 0")
        if not isinstance(self.engine, Settings):
            raise InvalidArgument("engine must be a dn.Settings")
        if not isinstance(self.shell, ShellSettings):
            raise InvalidArgument("shell must be a dn.settings.ShellSettings")
        if self.engine.background:
            object.__setattr__(self, "engine", self.engine.replace(background=False))
        if "://" not in self.store:
            object.__setattr__(self, "store", str(Path(self.store).expanduser().absolute()))

    # -- building ---------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> ClusterConfig:
        """A config from a ``metadata.dn``-shaped mapping (engine settings under ``engine``,
        shell settings under ``shell``, or either, for convenience, at the top level)."""
        values = dict(values or {})
        sections: dict[str, dict[str, Any]] = {}
        for name in _SECTIONS:
            section = values.pop(name, None)
            if section is not None and not isinstance(section, Mapping):
                raise InvalidArgument(f"{name} settings must be a mapping")
            sections[name] = dict(section or {})
        for key in list(values):
            for name, keys in _SECTIONS.items():
                if key in keys:
                    sections[name][key] = values.pop(key)
        known = {f.name for f in fields(cls)} - set(_SECTIONS)
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidArgument(f"unknown cluster settings: {', '.join(unknown)}")
        if "env" in values:
            values["env"] = {str(k): str(v) for k, v in (values["env"] or {}).items()}
        sections["engine"].setdefault("background", False)
        return cls(
            engine=Settings.from_dict(sections["engine"]),
            shell=ShellSettings.from_dict(sections["shell"]),
            **values,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data (picklable, YAML-able); ``from_dict(to_dict())`` round-trips."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _SECTIONS}
        out["env"] = dict(self.env)
        out["engine"] = self.engine.to_dict()
        out["shell"] = self.shell.to_dict()
        return out

    def replace(self, **overrides: Any) -> ClusterConfig:
        """A copy with ``overrides`` applied (engine and shell settings accepted at the top
        level too)."""
        values = self.to_dict()
        for key, value in overrides.items():
            section = next((n for n, keys in _SECTIONS.items() if key in keys), None)
            if section is not None:
                values[section][key] = value
            elif key in _SECTIONS:
                values[key].update(value or {})
            else:
                values[key] = value
        return ClusterConfig.from_dict(values)


def load_config(
    config: str | os.PathLike[str] | Mapping[str, Any] | ClusterConfig | None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ClusterConfig:
    """Resolve a config argument: None (embedded defaults), a path to a cluster-launcher
    YAML file (its ``metadata.dn`` section), a mapping, or a ClusterConfig."""
    if isinstance(config, ClusterConfig):
        base = config.to_dict()
    elif config is None:
        base = {}
    elif isinstance(config, Mapping):
        base = dict(config)
    else:
        base = read_yaml_section(Path(config))
    env = os.environ if environ is None else environ
    for var, key in _ENV.items():
        if env.get(var):
            base[key] = _env_value(var, key, env[var])
    cfg = ClusterConfig.from_dict(base)
    return cfg.replace(**dict(overrides or {})) if overrides else cfg


def _env_value(var: str, key: str, text: str) -> Any:
    """An environment variable's value for config key ``key``; InvalidArgument naming the
    variable when it is not of the key's type."""
    if key != "shards":
        return text
    try:
        return int(text)
    except ValueError:
        raise InvalidArgument(
            f"{var}={text!r} is not a number of shards (a positive integer)", variable=var
        ) from None


def read_yaml_section(path: Path) -> dict[str, Any]:
    """The ``metadata.dn`` mapping of a cluster-launcher file ({} when absent)."""
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise InvalidArgument(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidArgument(f"config file {path} must hold a mapping")
    section = (doc.get("metadata") or {}).get("dn") or {}
    if not isinstance(section, dict):
        raise InvalidArgument(f"metadata.dn in {path} must be a mapping")
    return dict(section)


__all__ = ["ClusterConfig", "load_config", "read_yaml_section"]
