"""What a configuration reload (SIGHUP) changes: a pure function of the old and new config.

Most settings apply at once: pools and their policies, the rule file, everything the hot
path reads (redirect status, affinity, keys, hand-off settings, retry-after), the admin
tokens, the log level, refresh and load ages, the graceful timeout, the TLS files of a
listener that speaks TLS. A few are bound to sockets, processes or connections made at
start-up (and turning a listener's TLS on or off); for those the running value stays and
the log says the change needs a restart. ``[dns]`` applies at once (names, zones, limits,
rate limiting) but for its ``listen`` addresses, and for turning the DNS front on or off.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from dispatcher.config import Config, DispatcherSettings

#: Settings that only a restart can change (sockets, processes, the database connection,
#: the public listener's limits and protocol, the access log of the listeners).
NEEDS_RESTART = (
    "listen",
    "admin_listen",
    "database_url",
    "database_timeout",
    "workers",
    "access_log",
    "max_request_head",
    "max_header_lines",
    "head_timeout",
    "keep_alive_timeout",
    "max_connections",
    "proxy_protocol",
    "admin_tls_client_ca",  # (a running context's CA list can be added to, never cut)
)

#: The TLS files of a listener, each with the setting that says whether TLS is on: new
#: paths (or the same ones) are read again into the running context on a reload, but
#: turning a listener's TLS on or off needs a restart (the socket is served one way).
TLS_SWITCHES = {
    "tls_certificate": "tls_certificate",
    "tls_key": "tls_certificate",
    "admin_tls_certificate": "admin_tls_certificate",
    "admin_tls_key": "admin_tls_certificate",
}


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """``config`` is what runs from now on: the new file, but with the running value of
    each setting in ``needs_restart``; ``applied`` names what changes now."""

    config: Config
    applied: tuple[str, ...]
    needs_restart: tuple[str, ...]
    sites_differ: bool

    def summary(self) -> str:
        """One line for the log."""
        applied = ", ".join(self.applied) if self.applied else "nothing changed"
        text = f"applied: {applied}"
        if self.needs_restart:
            text += f"; needs a restart (running values kept): {', '.join(self.needs_restart)}"
        if self.sites_differ:
            text += "; [[sites]] in the file only seed an empty registry (use the admin API)"
        return text


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    """Compare ``old`` and ``new``; see :class:`ReloadPlan`."""
    before, after = old.dispatcher, new.dispatcher
    differ = [
        name for name in DispatcherSettings.__slots__ if _get(before, name) != _get(after, name)
    ]
    restart = tuple(name for name in differ if _needs_restart(before, after, name))
    applied = [f"dispatcher.{name}" for name in differ if name not in restart]
    if dict(old.pools) != dict(new.pools):
        applied.append("pools")
    kept = {name: _get(before, name) for name in restart}
    settings = replace(after, **kept)
    needs_restart = [f"dispatcher.{name}" for name in restart]
    dns = new.dns
    if old.dns != new.dns:
        if old.dns is None or new.dns is None:  # the DNS front's sockets come or go
            dns = old.dns
            needs_restart.append("dns")
        else:
            if old.dns.listen != new.dns.listen:
                dns = replace(new.dns, listen=old.dns.listen)
                needs_restart.append("dns.listen")
            if dns != old.dns:
                applied.append("dns")
    return ReloadPlan(
        config=replace(new, dispatcher=settings, dns=dns),
        applied=tuple(applied),
        needs_restart=tuple(needs_restart),
        sites_differ=old.sites != new.sites,
    )


def _needs_restart(before: DispatcherSettings, after: DispatcherSettings, name: str) -> bool:
    switch = TLS_SWITCHES.get(name)
    if switch is not None:  # TLS turned on or off, or the files changed?
        return (_get(before, switch) is None) != (_get(after, switch) is None)
    return name in NEEDS_RESTART


def _get(settings: DispatcherSettings, name: str) -> Any:
    return getattr(settings, name)
