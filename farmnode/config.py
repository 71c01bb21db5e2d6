"""One configuration path for a node: ``node.toml`` plus environment -> one frozen ``NodeConfig``.

Everything is validated while the object is built; a value that passes here is never
checked again later. A problem raises :class:`~farmnode.errors.ConfigError` naming the file
(or ``<environment>``), the key path (``services[0].real[1].weight``) and what was expected.
Services come out of :mod:`farmnode.service_config` as :mod:`farmnode.spec` objects, which
the switch, the data planes and the daemon read as they are.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dispatcher.backends.sites import NAME_RE as SITE_NAME_RE
from dispatcher.backends.sites import check_base_url
from dispatcher.errors import InvalidValue
from dispatcher.files import printable, read_toml
from dispatcher.logsetup import LOG_FORMATS, LOG_LEVELS
from dispatcher.tlsfiles import TlsFiles, client_context, server_context, tls_files
from farmnode.cluster.settings import ClusterSettings, parse_cluster
from farmnode.errors import ConfigError
from farmnode.service_config import parse_services
from farmnode.spec import ServiceSpec
from farmnode.validation import Invalid as _Invalid
from farmnode.validation import address as _address
from farmnode.validation import choice as _choice
from farmnode.validation import mapping as _mapping
from farmnode.validation import name as _name
from farmnode.validation import not_int as _not_int
from farmnode.validation import only_keys as _only_keys
from farmnode.validation import parse_address
from farmnode.validation import require as _require
from farmnode.validation import seconds as _seconds
from farmnode.validation import text as _text
from farmnode.validation import visible_ascii as _visible_ascii

ENVIRONMENT = "<environment>"
MAX_CAPACITY = 10**9
HOUR = 3600.0

TOP_KEYS = frozenset({"node", "services", "report", "cluster", "groups"})
NODE_KEYS = frozenset(
    {
        "name",
        "status_listen",
        "log_level",
        "log_format",
        "status_tls_certificate",
        "status_tls_key",
        "status_tls_ca",
    }
)
REPORT_KEYS = frozenset({"url", "site", "token", "interval", "capacity"})


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """``[node]``: who this node is and where it answers status requests."""

    name: str
    status_listen: str = "127.0.0.1:9100"
    log_level: str = "info"
    log_format: str = "text"
    status_tls_certificate: Path | None = None
    status_tls_key: Path | None = None
    #: The CA ``farmnode status`` trusts for this listener (the daemon does not use it).
    status_tls_ca: Path | None = None

    @property
    def status_tls(self) -> TlsFiles | None:
        """The status listener's TLS files (checked at load), or ``None``: plain HTTP."""
        return tls_files(
            self.status_tls_certificate,
            self.status_tls_key,
            "node.status_tls_certificate",
            "node.status_tls_key",
        )

    @property
    def status_address(self) -> tuple[str, int]:
        """``status_listen`` as (IP text, port) for binding; port 0 picks a free one."""
        return parse_address(self.status_listen, allow_port_zero=True)


@dataclass(frozen=True, slots=True)
class ReportSettings:
    """``[report]``: where and how often the node reports its site's load to the dispatcher.

    ``url`` is the dispatcher's admin API base (no trailing ``/``); ``capacity`` is the number
    of active connections that counts as 100 % utilisation. The token never appears in
    ``repr``; it is ``""`` when set nowhere and not needed (``check-config``, ``status``).
    """

    url: str
    site: str
    token: str = field(repr=False)
    capacity: int
    interval: float = 5.0

    @property
    def load_url(self) -> str:
        """Where the load report is sent: ``PUT {url}/api/v1/sites/{site}/load``."""
        return f"{self.url}/api/v1/sites/{self.site}/load"


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """The whole validated node configuration; ``source`` names the file it came from."""

    node: NodeSettings
    services: tuple[ServiceSpec, ...]
    report: ReportSettings | None = None
    source: str = "<config>"
    cluster: ClusterSettings | None = None  # [cluster] and [[groups]]: docs/cluster.md

    @property
    def real_server_count(self) -> int:
        return sum(len(service.real) for service in self.services)

    def service(self, name: str) -> ServiceSpec:
        """The service called ``name``; ``KeyError`` when there is none."""
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(name)


# --- building -----------------------------------------------------------------------------


def load_config(
    path: str | Path, environ: Mapping[str, str] | None = None, *, need_token: bool = True
) -> NodeConfig:
    """Read ``path`` and the ``FARMNODE_*`` environment into a validated :class:`NodeConfig`.

    ``need_token=False`` (``check-config``, ``status``): a report token set nowhere is not an
    error; ``report.token`` is then ``""``.
    """
    file = Path(path)
    doc = read_toml(file, ConfigError)
    return parse_config(
        doc, str(file), environ=environ, need_token=need_token, base_dir=file.parent
    )


def parse_config(
    doc: Mapping[str, Any],
    source: str = "<config>",
    *,
    environ: Mapping[str, str] | None = None,
    need_token: bool = True,
    base_dir: Path | None = None,
) -> NodeConfig:
    """Validate a parsed TOML document plus environment overrides into a :class:`NodeConfig`.

    ``environ`` defaults to :data:`os.environ`; relative file paths are taken from
    ``base_dir`` (the configuration file's directory; default: the working directory).
    Raises :class:`ConfigError` and nothing else for any document.
    """
    env = os.environ if environ is None else environ
    try:
        return _build(doc, env, source, need_token, base_dir or Path())
    except _Invalid as exc:
        raise ConfigError(
            exc.source or source, printable(exc.path), printable(exc.expected)
        ) from None


def _build(
    doc: Mapping[str, Any],
    env: Mapping[str, str],
    source: str,
    need_token: bool = True,
    base_dir: Path | None = None,
) -> NodeConfig:
    _only_keys(_mapping(doc, "", "a TOML document"), "", TOP_KEYS)
    if "node" not in doc:
        raise _Invalid("node", "a [node] table with at least name = ...")
    node = _node(_mapping(doc["node"], "node", "a table ([node])"), env, base_dir or Path())
    services = parse_services(doc.get("services", []))
    report = None
    if "report" in doc:
        report = _report(_mapping(doc["report"], "report", "a table ([report])"), env, need_token)
    cluster = parse_cluster(
        doc.get("cluster"),
        doc.get("groups", []),
        source,
        env,
        node_name=node.name,
        service_names=frozenset(s.name for s in services),
    )
    return NodeConfig(node, services, report, source, cluster)


def _node(raw: Mapping[str, Any], env: Mapping[str, str], base_dir: Path) -> NodeSettings:
    p = "node"
    _only_keys(raw, p, NODE_KEYS)
    _require(raw, p, "name")
    d = NodeSettings(name="-")
    status_listen = _text(raw, p, "status_listen", d.status_listen, '"host:port"')
    _address(status_listen, f"{p}.status_listen", allow_port_zero=True)
    if "FARMNODE_STATUS_LISTEN" in env:
        status_listen = env["FARMNODE_STATUS_LISTEN"].strip()
        _address(status_listen, "FARMNODE_STATUS_LISTEN", True, source=ENVIRONMENT)
    log_format = _choice(raw, p, "log_format", d.log_format, LOG_FORMATS)
    if "FARMNODE_LOG_FORMAT" in env:
        log_format = env["FARMNODE_LOG_FORMAT"].strip()
        if log_format not in LOG_FORMATS:
            expected = f"one of {', '.join(LOG_FORMATS)}, got {log_format!r:.200}"
            raise _Invalid("FARMNODE_LOG_FORMAT", expected, ENVIRONMENT)
    node = NodeSettings(
        name=_name(raw["name"], f"{p}.name"),
        status_listen=status_listen,
        log_level=_choice(raw, p, "log_level", d.log_level, LOG_LEVELS),
        log_format=log_format,
        status_tls_certificate=_pem_path(raw, p, "status_tls_certificate", base_dir),
        status_tls_key=_pem_path(raw, p, "status_tls_key", base_dir),
        status_tls_ca=_pem_path(raw, p, "status_tls_ca", base_dir),
    )
    try:
        files = node.status_tls  # both or neither
        if files is not None:
            server_context(files)  # the files parse, the key matches
        if node.status_tls_ca is not None:  # for `farmnode status`: checked all the same
            client_context(node.status_tls_ca, f"{p}.status_tls_ca")
    except InvalidValue as exc:
        raise _Invalid(exc.field, exc.message) from None
    return node


def _pem_path(raw: Mapping[str, Any], p: str, key: str, base_dir: Path) -> Path | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise _Invalid(f"{p}.{key}", f"the path of a PEM file, got {value!r:.200}")
    return base_dir / value


def _report(raw: Mapping[str, Any], env: Mapping[str, str], need_token: bool) -> ReportSettings:
    p = "report"
    _only_keys(raw, p, REPORT_KEYS)
    _require(raw, p, "url", "site", "capacity")
    try:
        url = check_base_url(raw["url"], f"{p}.url")
    except InvalidValue as exc:
        raise _Invalid(exc.field, f"the dispatcher's admin API: {exc.message}") from None
    site = raw["site"]
    if not isinstance(site, str) or not SITE_NAME_RE.fullmatch(site):
        expected = "the site's name at the dispatcher (1-63 letters, digits, '.', '_' or '-')"
        raise _Invalid(f"{p}.site", f"{expected}, got {site!r}")
    capacity = raw["capacity"]
    if _not_int(capacity) or not 1 <= capacity <= MAX_CAPACITY:
        expected = f"a whole number of active connections from 1 to {MAX_CAPACITY}"
        raise _Invalid(f"{p}.capacity", f"{expected} (100% utilisation), got {capacity!r}")
    return ReportSettings(
        url=url,
        site=site,
        token=_report_token(raw, env, need_token),
        capacity=capacity,
        interval=_seconds(raw, p, "interval", 5.0, HOUR, least=0.1),
    )


def _report_token(raw: Mapping[str, Any], env: Mapping[str, str], need_token: bool) -> str:
    """``FARMNODE_REPORT_TOKEN`` wins over ``report.token``; one of them is required
    (``""`` when neither is set and not ``need_token``)."""
    expected = "a bearer token: visible ASCII characters, no spaces"
    if "FARMNODE_REPORT_TOKEN" in env:
        token = env["FARMNODE_REPORT_TOKEN"].strip()
        if not _visible_ascii(token):
            raise _Invalid("FARMNODE_REPORT_TOKEN", f"{expected} (set, but not one)", ENVIRONMENT)
        return token
    if "token" not in raw:
        if not need_token:
            return ""
        raise _Invalid("report.token", f"{expected} (or set FARMNODE_REPORT_TOKEN)")
    token = raw["token"]
    if not isinstance(token, str) or not _visible_ascii(token):  # never echo a secret
        raise _Invalid("report.token", f"{expected} (the value given is not one)")
    return token


__all__ = [
    "ENVIRONMENT",
    "NodeConfig",
    "NodeSettings",
    "ReportSettings",
    "load_config",
    "parse_config",
]
