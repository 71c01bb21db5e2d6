"""One configuration path: a TOML file plus environment overrides -> one frozen ``Config``.

Everything is validated while the object is built; a value that passes here is never
checked again later. A problem raises :class:`~dispatcher.errors.ConfigError` naming the
file, the key path (``sites[1].check.interval``) and what was expected.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from dispatcher.access import AdminToken, parse_tokens
from dispatcher.addresses import parse_address, points_at
from dispatcher.backends.sites import (
    CheckSpec,
    SiteSpec,
    check_base_url,
    check_pool_name,
    parse_check,
    parse_site,
)
from dispatcher.clientaddr import FORWARDED_HEADERS
from dispatcher.clientaddr import parse_networks as parse_proxies
from dispatcher.dns.config import DnsConfig, parse_dns
from dispatcher.errors import ConfigError, GeoDatabaseError, InvalidValue
from dispatcher.files import MAX_RULES_BYTES, printable, read_toml
from dispatcher.logsetup import LOG_FORMATS, LOG_LEVELS
from dispatcher.opsconfig import DEFAULT_AUDIT_RETENTION, anchor_tls, ops_settings
from dispatcher.placement.catalog import REGISTRY
from dispatcher.placement.geoip import check_database
from dispatcher.placement.locate import Locator
from dispatcher.placement.pool import PoolConfig
from dispatcher.placement.prefixes import Network, parse_networks
from dispatcher.session.cookies import CookieAttributes

REDIRECT_STATUSES = (301, 302, 303, 307, 308)
ALL_DOWN = ("sorry", "fail-open")
MAX_WORKERS = 64
#: ``database_url`` drivers the store can open (``postgres://`` is read as ``postgresql://``).
DATABASE_DRIVERS = ("sqlite", "sqlite+pysqlite", "postgresql", "postgresql+psycopg", "postgres")
MAX_PATH = 4096
#: 400 days: the longest cookie lifetime browsers honour (RFC 6265bis).
MAX_AFFINITY_LIFETIME = 400 * 86_400
ENVIRONMENT = "<environment>"
#: IP-location databases ``geoip_database`` may name (a City file and an ASN file, say).
MAX_GEOIP_DATABASES = 4

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class DispatcherSettings:
    listen: str = "127.0.0.1:8080"
    admin_listen: str = "127.0.0.1:8081"
    database_url: str = "sqlite:///farm.db"
    admin_tokens: tuple[AdminToken, ...] = ()
    secret_keys: tuple[str, ...] = ()
    redirect_status: int = 302
    default_pool: str = "default"
    load_max_age: float = 30.0
    retry_after: int = 30
    registry_refresh: float = 1.0
    access_log: bool = False
    log_level: str = "info"
    log_format: str = "text"
    rules: Path | None = None
    affinity: str = "off"
    affinity_lifetime: int = 3600
    affinity_netmask: int = 24
    affinity_netmask6: int = 64
    cookie_domain: str | None = None
    handoff_name: str = "dispatcher"
    handoff_lifetime: int = 30
    workers: int = 1
    max_request_head: int = 16 * 1024
    max_header_lines: int = 100
    head_timeout: float = 10.0
    keep_alive_timeout: float = 5.0
    max_connections: int = 10_000
    graceful_timeout: float = 10.0
    database_timeout: float = 5.0
    geoip_database: tuple[Path, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    forwarded_header: str = "x-forwarded-for"
    proxy_protocol: bool = False
    metrics_public: bool = False
    audit_retention: float = DEFAULT_AUDIT_RETENTION
    tls_certificate: Path | None = None
    tls_key: Path | None = None
    admin_tls_certificate: Path | None = None
    admin_tls_key: Path | None = None
    admin_tls_client_ca: Path | None = None


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration; ``source`` names the file it came from."""

    dispatcher: DispatcherSettings
    pools: Mapping[str, PoolConfig]
    sites: tuple[SiteSpec, ...]
    source: str = "<defaults>"
    base_dir: Path = field(default_factory=Path.cwd)
    networks: tuple[Network, ...] = ()
    dns: DnsConfig | None = None

    @property
    def rules_base_dir(self) -> Path:
        """Where relative map paths in rewrite rules point: the rule file's directory."""
        rules = self.dispatcher.rules
        return rules.parent if rules is not None else self.base_dir

    def pool_status(self, pool: str) -> int:
        """The redirect status for ``pool``: its own, or the dispatcher's."""
        override = self.pools[pool].redirect_status
        return override if override is not None else self.dispatcher.redirect_status

    def locator(self) -> Locator:
        """Where clients are: the prefix map (``[[networks]]``) and ``geoip_database`` (the
        files opened now; one that became unusable since validation is a ConfigError)."""
        try:
            return Locator(self.networks, [str(p) for p in self.dispatcher.geoip_database])
        except GeoDatabaseError as exc:
            where = "dispatcher.geoip_database"
            raise ConfigError(self.source, where, _geoip_expected(exc)) from None


# --- building -------------------------------------------------------------------------


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` and the ``FARM_*`` environment into a validated :class:`Config`."""
    file = Path(path)
    raw = read_toml(file, ConfigError)
    return build_config(raw, source=str(file), environ=environ, base_dir=file.resolve().parent)


def build_config(
    raw: Mapping[str, Any],
    *,
    source: str = "<config>",
    environ: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
) -> Config:
    """Validate a parsed TOML document (plus environment overrides) into a :class:`Config`."""
    env = os.environ if environ is None else environ
    try:
        return _build(raw, env, source, base_dir or Path.cwd())
    except InvalidValue as exc:
        raise ConfigError(source, printable(exc.field), printable(exc.message)) from None


def _build(raw: Mapping[str, Any], env: Mapping[str, str], source: str, base_dir: Path) -> Config:
    _only_keys(raw, "", {"dispatcher", "pools", "sites", "networks", "dns"})
    settings = _dispatcher_settings(_table(raw, "dispatcher"), env, source)
    settings = replace(
        settings,
        database_url=_anchor_sqlite(settings.database_url, base_dir),
        rules=base_dir / settings.rules if settings.rules else None,
        geoip_database=tuple(base_dir / path for path in settings.geoip_database),
    )
    if settings.rules is not None:
        _check_rules_file(settings.rules)
    settings = anchor_tls(settings, base_dir)
    networks = parse_networks(raw.get("networks", []))
    geoip_key = "FARM_GEOIP_DATABASE" if "FARM_GEOIP_DATABASE" in env else None
    _check_geoip(settings.geoip_database, geoip_key or "dispatcher.geoip_database")
    pools = _pools(_table(raw, "pools"), settings)
    if settings.default_pool not in pools:
        if settings.default_pool != "default":
            raise InvalidValue("dispatcher.default_pool", "the name of a pool under [pools]")
        default = PoolConfig("default", options=_options({}, "pools.default", "weighted", settings))
        pools = {"default": default, **pools}
    sites = _sites(raw.get("sites", []), pools)
    for index, site in enumerate(sites):
        check_not_self(site.base_url, settings, f"sites[{index}].base_url")
    for name, pool in pools.items():
        if pool.fallback != "sorry":
            check_not_self(pool.fallback, settings, f"pools.{name}.fallback")
    dns = None
    if "dns" in raw:
        dns = parse_dns(raw["dns"], pools, (settings.listen, settings.admin_listen))
    return Config(
        settings, pools, sites, source=source, base_dir=base_dir, networks=networks, dns=dns
    )


def _check_geoip(paths: tuple[Path, ...], field_name: str) -> None:
    """Each ``geoip_database`` file opens as a MaxMind DB (and is closed again)."""
    for path in paths:
        try:
            check_database(path)
        except GeoDatabaseError as exc:
            raise InvalidValue(field_name, _geoip_expected(exc)) from None


def _geoip_expected(exc: GeoDatabaseError) -> str:
    return f"a MaxMind DB file (.mmdb): {exc.path}: {exc.reason}"


def _check_rules_file(path: Path) -> None:
    """An existing ``rules`` path must be a regular file under the size cap (``stat`` only:
    nothing is opened, so a FIFO cannot block). A missing file is the loader's to report."""
    try:
        info = path.stat()
    except OSError:
        return
    if not stat.S_ISREG(info.st_mode):
        raise InvalidValue(
            "dispatcher.rules", f"a regular rule file ({path} is not a regular file)"
        )
    if info.st_size > MAX_RULES_BYTES:
        raise InvalidValue(
            "dispatcher.rules", f"a rule file of at most {MAX_RULES_BYTES} bytes ({path} is larger)"
        )


def _anchor_sqlite(url: str, base_dir: Path) -> str:
    """A relative SQLite path is relative to the config file's directory, not the CWD."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        return url
    path = url[len(prefix) :]
    if not path or path.startswith("/") or path.startswith(":memory:"):
        return url
    return prefix + str(base_dir / path)


def _dispatcher_settings(
    raw: Mapping[str, Any], env: Mapping[str, str], source: str
) -> DispatcherSettings:
    p = "dispatcher"
    _only_keys(raw, p, set(DispatcherSettings.__slots__))
    d = DispatcherSettings()
    values: dict[str, Any] = {
        "listen": _address(raw, p, "listen", d.listen),
        "admin_listen": _address(raw, p, "admin_listen", d.admin_listen),
        "database_url": _get(raw, p, "database_url", str, d.database_url, "a database URL"),
        "admin_tokens": parse_tokens(raw.get("admin_tokens", []), f"{p}.admin_tokens"),
        "secret_keys": _strings(raw, p, "secret_keys"),
        "redirect_status": _status(raw, p, "redirect_status", d.redirect_status),
        "default_pool": _get(raw, p, "default_pool", str, d.default_pool, "a pool name"),
        "load_max_age": _seconds(raw, p, "load_max_age", d.load_max_age, 0.1, 86_400.0),
        "retry_after": _whole(raw, p, "retry_after", d.retry_after, 0, 86_400),
        "registry_refresh": _seconds(raw, p, "registry_refresh", d.registry_refresh, 0.05, 3600.0),
        "access_log": _get(raw, p, "access_log", bool, d.access_log, "true or false"),
        "log_level": _choice(raw, p, "log_level", d.log_level, LOG_LEVELS),
        "log_format": _choice(raw, p, "log_format", d.log_format, LOG_FORMATS),
        "rules": _optional_path(raw, p, "rules", "the path of a rewrite rule file"),
        "affinity": _choice(raw, p, "affinity", d.affinity, ("off", "cookie", "network")),
        "affinity_lifetime": _whole(
            raw, p, "affinity_lifetime", d.affinity_lifetime, 1, MAX_AFFINITY_LIFETIME
        ),
        "affinity_netmask": _whole(raw, p, "affinity_netmask", d.affinity_netmask, 0, 32),
        "affinity_netmask6": _whole(raw, p, "affinity_netmask6", d.affinity_netmask6, 0, 128),
        "cookie_domain": _cookie_domain(raw, p),
        "handoff_name": _handoff_name(raw, p, d.handoff_name),
        "handoff_lifetime": _whole(raw, p, "handoff_lifetime", d.handoff_lifetime, 1, 60),
        "workers": _workers(raw, p, d.workers),
        "max_request_head": _whole(raw, p, "max_request_head", d.max_request_head, 1024, 1 << 20),
        "max_header_lines": _whole(raw, p, "max_header_lines", d.max_header_lines, 8, 1000),
        "head_timeout": _seconds(raw, p, "head_timeout", d.head_timeout, 0.1, 300.0),
        "keep_alive_timeout": _seconds(
            raw, p, "keep_alive_timeout", d.keep_alive_timeout, 0.1, 3600.0
        ),
        "max_connections": _whole(raw, p, "max_connections", d.max_connections, 1, 1_000_000),
        "graceful_timeout": _seconds(raw, p, "graceful_timeout", d.graceful_timeout, 0.0, 600.0),
        "database_timeout": _seconds(raw, p, "database_timeout", d.database_timeout, 0.1, 60.0),
        "geoip_database": _geoip_paths(raw.get("geoip_database", []), f"{p}.geoip_database"),
        "trusted_proxies": parse_proxies(raw.get("trusted_proxies", []), f"{p}.trusted_proxies"),
        "forwarded_header": _choice(
            raw, p, "forwarded_header", d.forwarded_header, FORWARDED_HEADERS
        ),
        "proxy_protocol": _get(raw, p, "proxy_protocol", bool, d.proxy_protocol, "true or false"),
        "metrics_public": _get(raw, p, "metrics_public", bool, d.metrics_public, "true or false"),
        **ops_settings(raw, p, env),
    }
    _environment_overrides(values, env)
    database_key = "FARM_DATABASE_URL" if env.get("FARM_DATABASE_URL", "").strip() else None
    check_database_url(values["database_url"], database_key or f"{p}.database_url")
    if values["affinity"] == "cookie" and not values["secret_keys"]:
        raise InvalidValue(
            f"{p}.affinity", '"cookie" signs stamps: set secret_keys (or FARM_SECRET_KEYS)'
        )
    if not values["admin_tokens"]:
        raise InvalidValue(
            f"{p}.admin_tokens", "at least one admin token (or set FARM_ADMIN_TOKENS)"
        )
    return DispatcherSettings(**values)


def _environment_overrides(values: dict[str, Any], env: Mapping[str, str]) -> None:
    """``FARM_DATABASE_URL``, ``FARM_SECRET_KEYS``, ``FARM_ADMIN_TOKENS``,
    ``FARM_TRUSTED_PROXIES``, ``FARM_LOG_FORMAT`` and ``FARM_METRICS_PUBLIC`` win over the
    file."""
    if "FARM_LOG_FORMAT" in env:
        values["log_format"] = _choice(
            {"v": env["FARM_LOG_FORMAT"].strip()}, "", "v", "text", LOG_FORMATS, "FARM_LOG_FORMAT"
        )
    if "FARM_METRICS_PUBLIC" in env:
        values["metrics_public"] = _flag(env["FARM_METRICS_PUBLIC"], "FARM_METRICS_PUBLIC")
    if url := env.get("FARM_DATABASE_URL", "").strip():
        values["database_url"] = url
    if "FARM_GEOIP_DATABASE" in env:
        values["geoip_database"] = _geoip_paths(
            [p for p in env["FARM_GEOIP_DATABASE"].split(os.pathsep) if p], "FARM_GEOIP_DATABASE"
        )
    if "FARM_TRUSTED_PROXIES" in env:  # (empty: none, overriding the file's list)
        networks = [n.strip() for n in env["FARM_TRUSTED_PROXIES"].split(",") if n.strip()]
        values["trusted_proxies"] = parse_proxies(networks, "FARM_TRUSTED_PROXIES")
    for var, key in (("FARM_SECRET_KEYS", "secret_keys"), ("FARM_ADMIN_TOKENS", "admin_tokens")):
        if var in env:
            items = tuple(item.strip() for item in env[var].split(",") if item.strip())
            if not items:
                raise InvalidValue(var, "a comma-separated list with at least one entry")
            values[key] = parse_tokens(items, var) if key == "admin_tokens" else items


def _flag(text: str, where: str) -> bool:
    """An environment variable's true/false (also 1/0, yes/no, on/off)."""
    word = text.strip().lower()
    if word in ("true", "1", "yes", "on"):
        return True
    if word in ("false", "0", "no", "off"):
        return False
    raise InvalidValue(where, f"true or false, got {text!r}")


#: The keys every pool table may have; its policy's declared options come on top.
POOL_KEYS = ("policy", "fallback", "redirect_status", "all_down")


def _pools(raw: Mapping[str, Any], settings: DispatcherSettings) -> dict[str, PoolConfig]:
    pools: dict[str, PoolConfig] = {}
    for name, table in raw.items():
        p = f"pools.{name}"
        check_pool_name(name, p)
        if not isinstance(table, Mapping):
            raise InvalidValue(p, "a table")
        policy = _choice(table, p, "policy", "weighted", tuple(REGISTRY))
        _policy_keys(table, p, policy)
        fallback = _get(table, p, "fallback", str, "sorry", '"sorry" or an absolute URL')
        if fallback != "sorry":
            try:
                check_base_url(fallback, f"{p}.fallback")
            except InvalidValue:
                raise InvalidValue(f"{p}.fallback", '"sorry" or an absolute http(s) URL') from None
        status = table.get("redirect_status")
        pools[name] = PoolConfig(
            name=name,
            policy=policy,
            fallback=fallback,
            redirect_status=None if status is None else _status(table, p, "redirect_status", 302),
            all_down=_choice(table, p, "all_down", "sorry", ALL_DOWN),
            options=_options(table, p, policy, settings),
        )
    return pools


def _policy_keys(table: Mapping[str, Any], path: str, policy: str) -> None:
    """Only the common keys and the options ``policy`` declares; an option of another policy
    is named as such."""
    declared = REGISTRY[policy].options
    for key in table:
        if key in POOL_KEYS or key in declared:
            continue
        owners = [name for name, cls in REGISTRY.items() if key in cls.options]
        if owners:
            raise InvalidValue(
                f"{path}.{key}",
                f"an option of {' and '.join(owners)}, not of policy {policy!r}",
            )
        _only_keys(table, path, {*POOL_KEYS, *declared})


def _options(
    table: Mapping[str, Any], path: str, policy: str, settings: DispatcherSettings
) -> dict[str, Any]:
    """The options ``policy`` declares, parsed from the pool's ``table``. An option the
    table does not set takes the ``[dispatcher]`` setting of the same name if there is one
    (``load_max_age``), else the policy's default."""
    values: dict[str, Any] = {}
    for key, option in REGISTRY[policy].options.items():
        if key in table:
            values[key] = option.parse(table[key], f"{path}.{key}")
        elif key in DispatcherSettings.__slots__:
            values[key] = getattr(settings, key)
        else:
            values[key] = option.default
    return values


def _sites(raw: Any, pools: Mapping[str, PoolConfig]) -> tuple[SiteSpec, ...]:
    if not isinstance(raw, list):
        raise InvalidValue("sites", "an array of tables ([[sites]])")
    sites: list[SiteSpec] = []
    seen: set[str] = set()
    for index, table in enumerate(raw):
        p = f"sites[{index}]"
        site = _prefixed(p, parse_site, table, position=index)
        if site.name in seen:
            raise InvalidValue(f"{p}.name", f"a unique site name ({site.name!r} is used twice)")
        if site.pool not in pools:
            raise InvalidValue(f"{p}.pool", f"one of the pools {sorted(pools)}")
        seen.add(site.name)
        sites.append(site)
    return tuple(sites)


def check_not_self(url: str, settings: DispatcherSettings, field_name: str) -> None:
    """Refuse a URL (a site's base, a pool's fallback) that reaches one of the dispatcher's
    own listeners, whatever its spelling: addresses and ports are compared once resolved
    (without the network: :mod:`dispatcher.addresses`)."""
    target = urlsplit(url)
    try:
        port = target.port or (443 if target.scheme == "https" else 80)
    except ValueError:
        return  # not a URL with a port: its own validator says so
    listen = points_at(target.hostname or "", port, (settings.listen, settings.admin_listen))
    if listen is not None:
        raise InvalidValue(
            field_name, f"a URL that is not the dispatcher itself ({listen}), got {url!r}"
        )


def check_database_url(url: str, field_name: str) -> None:
    """A SQLAlchemy URL of a dialect the store supports: sqlite or postgresql (psycopg 3)."""
    expected = (
        "a database URL such as sqlite:///farm.db or postgresql://user@host/db "
        f"(drivers: {', '.join(DATABASE_DRIVERS)})"
    )
    if not url or not url.isprintable() or len(url) > MAX_PATH:
        raise InvalidValue(field_name, f"{expected}, printable, got {url[:200]!r}")
    # SQLAlchemy is imported here, not with this module: the processes that only read a
    # Config (the workers, farmnode) do not import it (tests/test_import_cost.py).
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise InvalidValue(field_name, f"{expected}, got {url[:200]!r}") from None
    if parsed.drivername not in DATABASE_DRIVERS:
        raise InvalidValue(field_name, f"{expected}, got driver {parsed.drivername!r}")


# --- small typed readers ----------------------------------------------------------------


def _table(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, Mapping):
        raise InvalidValue(key, "a table")
    return value


def _only_keys(raw: Mapping[str, Any], path: str, allowed: set[str]) -> None:
    for key in raw:
        if key not in allowed:
            where = f"{path}.{key}" if path else key
            raise InvalidValue(where, f"no such key (allowed: {', '.join(sorted(allowed))})")


def _get(
    raw: Mapping[str, Any], path: str, key: str, kind: type[T], default: T, expected: str
) -> T:
    value = raw.get(key, default)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidValue(f"{path}.{key}", f"{expected}, got {value!r}")
    return value


def _optional_path(raw: Mapping[str, Any], path: str, key: str, expected: str) -> Path | None:
    value = _get(raw, path, key, str, "", expected)
    if not value.isprintable() or len(value) > MAX_PATH:
        raise InvalidValue(f"{path}.{key}", f"{expected}: printable, at most {MAX_PATH} characters")
    return Path(value) if value else None


def _geoip_paths(value: Any, field_name: str) -> tuple[Path, ...]:
    """One path or an array of paths (at most :data:`MAX_GEOIP_DATABASES`), printable."""
    expected = f"the path of a MaxMind DB file, or an array of at most {MAX_GEOIP_DATABASES} paths"
    paths = [value] if isinstance(value, str) else value
    if (
        not isinstance(paths, list)
        or len(paths) > MAX_GEOIP_DATABASES
        or not all(isinstance(p, str) and p and p.isprintable() for p in paths)
        or any(len(p) > MAX_PATH for p in paths)
    ):
        raise InvalidValue(field_name, f"{expected} (printable, non-empty), got {value!r:.200}")
    if len(set(paths)) != len(paths):
        raise InvalidValue(field_name, f"{expected}, each once, got {value!r:.200}")
    return tuple(Path(p) for p in paths)


def _handoff_name(raw: Mapping[str, Any], path: str, default: str) -> str:
    value = _get(raw, path, "handoff_name", str, default, "a name")
    if not 1 <= len(value) <= 255 or not all(0x21 <= ord(c) <= 0x7E for c in value):
        raise InvalidValue(
            f"{path}.handoff_name",
            f"a name for hand-off tokens: 1-255 visible ASCII characters, got {value!r}",
        )
    return value


def _seconds(
    raw: Mapping[str, Any], path: str, key: str, default: float, low: float, high: float
) -> float:
    """A finite number of seconds from ``low`` to ``high`` (integers are accepted)."""
    value = raw.get(key, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise InvalidValue(
            f"{path}.{key}", f"a number of seconds from {low:g} to {high:g}, got {value!r}"
        )
    return float(value)


def _workers(raw: Mapping[str, Any], path: str, default: int) -> int:
    """``workers``: a whole number from 1 to 64, or ``"auto"`` (one per CPU)."""
    value = raw.get("workers", default)
    if value == "auto":
        return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WORKERS:
        raise InvalidValue(
            f"{path}.workers", f'a whole number from 1 to {MAX_WORKERS} or "auto", got {value!r}'
        )
    return value


def _strings(raw: Mapping[str, Any], path: str, key: str) -> tuple[str, ...]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidValue(f"{path}.{key}", f"an array of non-empty strings, got {value!r}")
    return tuple(value)


def _whole(
    raw: Mapping[str, Any], path: str, key: str, default: int, low: int, high: int | None
) -> int:
    value = raw.get(key, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        span = f"from {low} to {high}" if high is not None else f">= {low}"
        raise InvalidValue(f"{path}.{key}", f"a whole number {span}, got {value!r}")
    return value


def _cookie_domain(raw: Mapping[str, Any], path: str) -> str | None:
    value = _get(raw, path, "cookie_domain", str, "", 'a domain such as ".example.com"')
    if not value:
        return None
    try:
        CookieAttributes(domain=value)
    except InvalidValue as exc:
        raise InvalidValue(f"{path}.cookie_domain", exc.message) from None
    return value


def _choice(
    raw: Mapping[str, Any],
    path: str,
    key: str,
    default: str,
    choices: tuple[str, ...],
    field_name: str | None = None,
) -> str:
    value = raw.get(key, default)
    if value not in choices:
        where = field_name or f"{path}.{key}"
        raise InvalidValue(where, f"one of {', '.join(choices)}, got {value!r:.200}")
    return str(value)


def _status(raw: Mapping[str, Any], path: str, key: str, default: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or value not in REDIRECT_STATUSES:
        allowed = ", ".join(map(str, REDIRECT_STATUSES))
        raise InvalidValue(f"{path}.{key}", f"a redirect status ({allowed}), got {value!r}")
    return int(value)


def _address(raw: Mapping[str, Any], path: str, key: str, default: str) -> str:
    value = _get(raw, path, key, str, default, '"host:port"')
    try:
        parse_address(value)
    except ValueError as exc:
        raise InvalidValue(f"{path}.{key}", f'"host:port" ({exc}), got {value!r}') from None
    return value


def _prefixed(prefix: str, build: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``build``; an :class:`InvalidValue` it raises gets ``prefix`` on its field."""
    try:
        return build(*args, **kwargs)
    except InvalidValue as exc:
        raise InvalidValue(f"{prefix}.{exc.field}" if exc.field else prefix, exc.message) from None


__all__ = [
    "POOL_KEYS",
    "CheckSpec",
    "Config",
    "DispatcherSettings",
    "PoolConfig",
    "SiteSpec",
    "build_config",
    "check_database_url",
    "check_not_self",
    "load_config",
    "parse_address",
    "parse_check",
    "printable",
    "read_toml",
]
