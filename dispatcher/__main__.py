"""``farm-dispatcher``: the command line. The only place in the dispatcher that exits."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Collection, Coroutine, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dispatcher import __version__
from dispatcher.config import Config, load_config
from dispatcher.errors import ConfigError, DispatcherError, InvalidValue
from dispatcher.files import MAX_RULES_BYTES, read_regular_file
from dispatcher.logsetup import LOG_FORMATS, LOG_LEVELS, configure_logging
from dispatcher.redirect import RewriteError, RewriteProgram, compile_rules

if TYPE_CHECKING:
    from dispatcher.backends.store import SqlSiteStore

# What only some commands need (the store and SQLAlchemy, the servers, the explainers, the
# demo, uvloop) is imported inside them, not here: `check-config` starts without them
# (tests/test_import_cost.py).

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(run(argv))


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit status (0 ok, 1 failure, 2 bad config)."""
    args = _parser().parse_args(argv)
    early = os.environ.get("FARM_LOG_FORMAT", "").strip()  # before the file is read
    configure_logging(args.log_level or "info", early if early in LOG_FORMATS else "text")
    command: Callable[[argparse.Namespace], int] = args.command
    try:
        return command(args)
    except (ConfigError, RewriteError, InvalidValue) as exc:
        print(f"farm-dispatcher: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DispatcherError as exc:
        print(f"farm-dispatcher: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="farm-dispatcher", description="webfarm's dispatcher: redirect clients to sites."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        help="log at this level and above (default: the configuration's log_level, or info)",
    )
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(
        name: str, func: Callable[[argparse.Namespace], int], help_text: str, config: bool = True
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if config:
            p.add_argument(
                "--config",
                "-c",
                default=os.environ.get("FARM_CONFIG", "farm.toml"),
                help="the TOML configuration file (default: $FARM_CONFIG or farm.toml)",
            )
        p.set_defaults(command=func)
        return p

    command("serve", _serve, "run the dispatcher (public and admin listeners)")
    command("check-config", _check_config, "validate a configuration file and exit")
    db = sub.add_parser("db", help="database schema commands").add_subparsers(
        required=True, metavar="DB_COMMAND"
    )
    for name, func, help_text in (
        ("upgrade", _db_upgrade, "bring the database schema to the newest revision"),
        ("current", _db_current, "print the database's schema revision"),
    ):
        p = db.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", "-c", default=os.environ.get("FARM_CONFIG", "farm.toml"))
        p.set_defaults(command=func)
    explain_cmd = command("explain", _explain, "show what a client asking for URL would get")
    explain_cmd.add_argument("url", help="the absolute URL the client asks for")
    explain_cmd.add_argument("--remote-addr", default="127.0.0.1", help="the client's address")
    explain_cmd.add_argument(
        "--subnet",
        default="",
        metavar="CIDR",
        help="a client subnet (as EDNS sends it) to locate instead of the address",
    )
    explain_cmd.add_argument("--method", default="GET")
    explain_cmd.add_argument(
        "--header",
        "-H",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a request header (repeatable)",
    )
    dns_cmd = command(
        "explain-dns", _explain_dns, "show what a resolver asking the DNS front would be told"
    )
    dns_cmd.add_argument("name", help="the name asked for (www.farm.example.)")
    dns_cmd.add_argument("type", nargs="?", default="A", help="the record type (default A)")
    dns_cmd.add_argument("--resolver", default="127.0.0.1", help="the resolver's address")
    dns_cmd.add_argument("--subnet", help="the EDNS client subnet it sends (198.51.100.0/24)")
    demo = command("demo", _demo, "run a dispatcher in front of three demo sites", config=False)
    demo.add_argument("--port", type=int, default=8080, help="public port (admin is port+1)")
    return parser


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config)


def _check_config(args: argparse.Namespace) -> int:
    config = _config(args)
    rules = ""
    if config.dispatcher.rules is not None:
        program = _rules(config.dispatcher.rules, config.pools, config.source)
        rules = f", {program.rule_count} rewrite rule(s)"
    pools = ", ".join(config.pools)
    locator = config.locator()
    located = locator.describe()
    locator.close()
    dns = ""
    if config.dns is not None:
        dns = f", dns: {len(config.dns.names)} name(s) in {len(config.dns.zones)} zone(s)"
    print(
        f"{config.source}: ok ({len(config.sites)} site(s), pools: {pools}{rules}{dns}; {located})"
    )
    return EXIT_OK


def _rules(path: Path, pools: Collection[str], source: str) -> RewriteProgram:
    """Read the rule file (a regular file under :data:`MAX_RULES_BYTES`, never blocking
    on a FIFO) and compile it against the configured ``pools``; a file that cannot be read
    is blamed on ``dispatcher.rules`` in ``source``."""
    expected = "a readable rewrite rule file"
    try:
        data = read_regular_file(path, MAX_RULES_BYTES)
    except OSError as exc:
        raise ConfigError(
            source, "dispatcher.rules", f"{expected}: {path}: {exc.strerror}"
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        reason = f"not UTF-8 text ({exc.reason} at byte {exc.start})"
        raise ConfigError(source, "dispatcher.rules", f"{expected}: {path}: {reason}") from None
    return compile_rules(text, filename=str(path), base_dir=path.parent, known_pools=pools)


def _store(config: Config) -> SqlSiteStore:
    """The store of ``config`` (the caller closes it)."""
    from dispatcher.backends.store import open_store

    settings = config.dispatcher
    return open_store(settings.database_url, timeout=settings.database_timeout)


def _db_upgrade(args: argparse.Namespace) -> int:
    store = _store(_config(args))
    try:
        print(f"database schema at {store.upgrade()}")
    finally:
        store.close()
    return EXIT_OK


def _db_current(args: argparse.Namespace) -> int:
    store = _store(_config(args))
    try:
        current, head = store.current(), store.head()
        state = "up to date" if current == head else f"behind (head is {head})"
        print(f"database schema at {current or 'nothing'}: {state}")
    finally:
        store.close()
    return EXIT_OK if current == head else EXIT_FAILURE


def _explain(args: argparse.Namespace) -> int:
    from dispatcher.clientaddr import trusted_proxies
    from dispatcher.explain import explain, offline_snapshot, request_from_url

    config = _config(args)
    headers = []
    for header in args.header:
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            raise InvalidValue("--header", f"'Name: value', got {header!r}")
        headers.append((name.strip(), value.strip()))
    settings = config.dispatcher
    request = request_from_url(
        args.url,
        method=args.method,
        remote_addr=args.remote_addr,
        headers=headers,
        trusted=trusted_proxies(settings.trusted_proxies),
        forwarded_header=settings.forwarded_header,
    )
    store = _store(config)
    try:
        snapshot, note = offline_snapshot(config, store)
    finally:
        store.close()
    print(f"({note})")
    print(explain(snapshot, request, subnet=args.subnet).format())
    return EXIT_OK


def _explain_dns(args: argparse.Namespace) -> int:
    from dispatcher.dns.explain import explain_dns
    from dispatcher.explain import offline_snapshot

    config = _config(args)
    store = _store(config)
    try:
        snapshot, note = offline_snapshot(config, store)
    finally:
        store.close()
    explained = explain_dns(
        snapshot, config, args.name, args.type, resolver=args.resolver, subnet=args.subnet
    )
    print(f"({note})")
    print(explained.format())
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    from dispatcher.sdnotify import Notifier
    from dispatcher.server import Runner

    config = _config(args)
    source = args.config
    settings = config.dispatcher
    if args.log_level is not None:  # the command line wins over the file, until a reload
        settings = replace(settings, log_level=args.log_level)
        config = replace(config, dispatcher=settings)
    configure_logging(settings.log_level, settings.log_format)
    runner = Runner(config, worker_processes=True, reload_config=lambda: load_config(source))
    notifier = Notifier()

    async def serve(stop: asyncio.Event, reload: asyncio.Event) -> None:
        await runner.serve(stop, reload, notifier)
        if runner.stranded:  # a thread stuck on the database would hold up the exit
            _exit_now("stopped, leaving store calls stuck (a hung database?)")

    return _run_until_signalled(serve, grace=config.dispatcher.graceful_timeout)


def _demo(args: argparse.Namespace) -> int:
    from dispatcher.demo import run_demo

    return _run_until_signalled(lambda stop, _reload: run_demo(stop, port=args.port), grace=1.0)


#: How much longer than the graceful timeout a stop may take before the process is ended.
STOP_MARGIN = 4.5


def _run_until_signalled(
    body: Callable[[asyncio.Event, asyncio.Event], Coroutine[Any, Any, None]], *, grace: float
) -> int:
    """Run ``body(stop, reload)`` on uvloop; SIGINT/SIGTERM set ``stop``, SIGHUP ``reload``.

    Once ``stop`` is set, the process ends within ``grace`` + :data:`STOP_MARGIN` seconds
    whatever hangs: a store call stuck on a hung database runs in a thread that would hold
    up the interpreter's exit, so past that bound a watchdog logs it and ends the process.
    """
    import uvloop

    async def runner() -> None:
        stop, reload = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()

        def stopping() -> None:
            if not stop.is_set():
                stop.set()
                _exit_after(grace + STOP_MARGIN)

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping)
        loop.add_signal_handler(signal.SIGHUP, reload.set)
        await body(stop, reload)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as loop_runner:
        loop_runner.run(runner())
    return EXIT_OK


def _exit_after(seconds: float) -> None:
    """Start the stop watchdog: past ``seconds``, log and end the process at once."""

    def watchdog() -> None:
        time.sleep(seconds)
        _exit_now(f"could not stop within {seconds:.1f} s (a hung database call?)")

    threading.Thread(target=watchdog, name="stop watchdog", daemon=True).start()


def _exit_now(why: str) -> None:
    """Log ``why`` and end the process without waiting for its threads."""
    logging.getLogger("webfarm").error("%s: exiting now", why)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(EXIT_FAILURE)


if __name__ == "__main__":
    main()
