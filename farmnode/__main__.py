"""``farmnode``: the node daemon's command line. The only place in farmnode that exits.

Each subcommand is one function ``(args) -> exit status`` listed in :data:`COMMANDS`; every
one of them takes ``--config``. Exit statuses: 0 ok, 1 failure, 2 invalid configuration
(the message, naming file, key path and expectation, goes to stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import ssl
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from dispatcher.errors import InvalidValue
from dispatcher.tlsfiles import client_context
from farmnode import __version__
from farmnode.config import NodeConfig, load_config
from farmnode.errors import ConfigError, FarmnodeError
from farmnode.status import StatusTarget, find_status, render_text

if TYPE_CHECKING:
    import httpx

# What only one command needs (the daemon and its planes, httpx, the resource agents and
# psycopg) is imported inside that command, not here: `farmnode check-config` or
# `farmnode status` starts without the daemon's imports (tests/test_import_cost.py).

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
DEFAULT_CONFIG = "node.toml"
#: The longest ``--timeout`` of ``farmnode status``, in seconds.
MAX_TIMEOUT = 300.0


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(run(argv))


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit status (0 ok, 1 failure, 2 bad config)."""
    args = build_parser().parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.command
    try:
        return command(args)
    except ConfigError as exc:
        print(f"farmnode: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except FarmnodeError as exc:
        print(f"farmnode: {exc}", file=sys.stderr)
        return EXIT_FAILURE


# --- the commands -----------------------------------------------------------------------


def config_of(args: argparse.Namespace) -> NodeConfig:
    """The validated configuration named by ``--config`` (raises :class:`ConfigError`)."""
    return load_config(args.config)


def check_config(args: argparse.Namespace) -> int:
    """Validate the configuration, check what each resource agent needs on this system
    (:meth:`farmnode.agents.Agent.check`), and print a one-line summary.

    The report token is a secret of ``serve``: set nowhere, it is a note, not an error."""
    config = load_config(args.config, need_token=False)
    check_agents(config)
    report = (
        f", reporting to {config.report.url} as site {config.report.site}"
        if config.report is not None
        else ", no load reports"
    )
    print(
        f"{config.source}: ok (node {config.node.name}, {len(config.services)} service(s), "
        f"{config.real_server_count} real server(s){report})"
    )
    if config.report is not None and not config.report.token:
        print(
            f"{config.source}: note: report token: not set in this environment "
            "(FARMNODE_REPORT_TOKEN or report.token; needed by serve)"
        )
    return EXIT_OK


def check_agents(config: NodeConfig) -> None:
    """Each resource's :meth:`~farmnode.agents.Agent.check`, its error placed at the
    resource's key path (``groups[0].resources[1].data_dir``). The ``switch`` agent needs the
    daemon and checks nothing on the system."""
    if config.cluster is None:
        return
    from farmnode.agents import AGENTS, AgentParamError, build_agent

    for i, group in enumerate(config.cluster.groups):
        for j, resource in enumerate(group.resources):
            if resource.agent not in AGENTS:
                continue
            agent = build_agent(resource.agent_table(), name=resource.name)
            try:
                agent.check()
            except AgentParamError as exc:
                path = f"groups[{i}].resources[{j}].{exc.param}"
                raise ConfigError(config.source, path, exc.expected) from None


def promote(args: argparse.Namespace) -> int:
    """``farmnode promote --force NODE``: let NODE's next promotion of its PostgreSQL skip
    the synchronous and lag rules (the operator accepts losing what the old primary had and
    NODE lacks). Run on NODE itself, with its configuration."""
    from farmnode.pg.promotion import FORCE_VALID, request_forced_promotion

    config = config_of(args)
    if not args.force:
        raise FarmnodeError(
            "promote only overrides the promotion rules, and says so: give --force "
            "(an unforced promotion happens by itself when the rules allow it)"
        )
    if args.node != config.node.name:
        raise FarmnodeError(
            f"{config.source} is node {config.node.name}'s configuration: run "
            f"`farmnode promote --force {args.node}` on {args.node}"
        )
    databases = [
        (group.name, resource)
        for group in (config.cluster.groups if config.cluster is not None else ())
        for resource in group.resources
        if resource.agent == "postgresql"
    ]
    if not databases:
        raise FarmnodeError(f"{config.source}: no postgresql resource in any [[groups]]")
    for group, resource in databases:
        data_dir = str(resource.agent_table()["data_dir"])
        try:
            marker = request_forced_promotion(data_dir, args.node)
        except OSError as exc:
            raise FarmnodeError(f"cannot leave the request in {data_dir}: {exc}") from None
        print(
            f"{args.node}: group {group}: the next promotion of {resource.name} skips the "
            f"synchronous and lag rules (requested in {marker}; valid for "
            f"{FORCE_VALID / 60:.0f} minutes; the node tries again within the group's "
            "failure_timeout)"
        )
    return EXIT_OK


def _promote_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("node", help="this node's name (a check that it is the right node)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="required: override the synchronous/lag rules once (may lose committed data)",
    )


def serve(args: argparse.Namespace) -> int:
    """Run the node until SIGINT or SIGTERM; SIGHUP reloads ``--config``."""
    import uvloop

    from dispatcher.logsetup import configure_logging
    from dispatcher.sdnotify import Notifier
    from farmnode.daemon import Node

    path = args.config
    config = load_config(path)
    configure_logging(config.node.log_level, config.node.log_format)
    node = Node(config, loader=lambda: load_config(path), notifier=Notifier())

    async def body() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, node.request_stop)
        loop.add_signal_handler(signal.SIGHUP, node.request_reload)
        await node.run()

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(body())
    except KeyboardInterrupt:  # a SIGINT before the handlers were in place
        return EXIT_OK
    return EXIT_OK


def status(args: argparse.Namespace) -> int:
    """Ask the running node for its status and print it.

    Where to ask is all it needs (:func:`farmnode.status.find_status`): ``--address``, else
    ``FARMNODE_STATUS_LISTEN``, else ``node.status_listen`` of ``--config``; nothing else of
    the file is read but whether the listener speaks TLS and the CA to trust, so it works
    after a reload the file broke, and without secrets. Over TLS the certificate is verified
    (against ``--cacert``, ``FARMNODE_STATUS_TLS_CA``, ``node.status_tls_ca`` or the
    system's trust store) unless ``--insecure`` says otherwise."""
    import httpx

    target = find_status(args.config, os.environ, args.address)
    if target.port == 0:
        raise FarmnodeError(
            f"{target.origin}: node.status_listen has port 0 (a free port picked at start), "
            "so there is nothing to ask; give it a fixed port (or --address HOST:PORT)"
        )
    if args.cacert is not None:
        target = replace(
            target, ca=Path(args.cacert), ca_source="<command line>", ca_field="--cacert"
        )
    url = target.url
    who = f"node {target.node}" if target.node is not None else "the node"
    extensions = {"sni_hostname": args.server_name} if args.server_name else {}
    try:
        with httpx.Client(verify=_verify(target, args), trust_env=False) as client:
            response = client.get(url, timeout=args.timeout, extensions=extensions)
    except httpx.HTTPError as exc:
        print(f"farmnode: {_failure(exc, who, target)}", file=sys.stderr)
        return EXIT_FAILURE
    if response.status_code != 200:
        print(f"farmnode: {url} answered HTTP {response.status_code}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        document = response.json()
    except ValueError:
        print(f"farmnode: {url} did not answer JSON (is that a farmnode?)", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        print(render_text(document), end="")
    return EXIT_OK


def _verify(target: StatusTarget, args: argparse.Namespace) -> ssl.SSLContext | bool:
    """The TLS client context for ``target`` (``True`` for plain HTTP: unused)."""
    if not target.tls:
        return True
    if args.insecure:
        print(
            f"farmnode: --insecure: the certificate at {target.url} is not verified",
            file=sys.stderr,
        )
    try:
        return client_context(target.ca, target.ca_field, verify=not args.insecure)
    except InvalidValue as exc:
        raise ConfigError(target.ca_source, exc.field, exc.message) from None


def _failure(exc: httpx.HTTPError, who: str, target: StatusTarget) -> str:
    """What went wrong asking ``target``, in words an operator can act on."""
    import httpx

    cause = _ssl_cause(exc)
    where = f"{target.host}:{target.port}"
    if isinstance(cause, ssl.SSLCertVerificationError):
        trust = (
            "trust its CA with --cacert FILE (or FARMNODE_STATUS_TLS_CA, or node.status_tls_ca "
            "in the configuration), give the name it carries with --server-name, or skip "
            "the check with --insecure"
        )
        return (
            f"{who}'s certificate at {target.url} is not trusted "
            f"({(cause.verify_message or cause.reason or '').rstrip('.')}; CA: "
            f"{target.ca or 'the system trust store'}): {trust}"
        )
    if cause is not None:
        return (
            f"no TLS at {target.url} ({cause.reason or cause}): is the status listener plain "
            f"HTTP? (ask with --address {where})"
        )
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError) and not target.tls:
        return (
            f"something at {where} closed the connection without answering HTTP: a TLS "
            f"status listener? ask with --address https://{where}, or with the --config "
            "file that sets status_tls_certificate"
        )
    return f"{who} is not running (nothing answers at {target.url}: {type(exc).__name__})"


def _ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    """The :class:`ssl.SSLError` under an httpx error, if one is."""
    seen: BaseException | None = exc
    for _ in range(8):  # the chain is short; a loop in it must not hang
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _timeout(text: str) -> float:
    """``--timeout``: a number of seconds, more than 0 and at most 300."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= MAX_TIMEOUT:  # also refuses nan
        raise argparse.ArgumentTypeError(f"seconds > 0 and <= {MAX_TIMEOUT:g}, got {text!r}")
    return value


def _status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the JSON document as is")
    parser.add_argument(
        "--timeout", type=_timeout, default=5.0, help="seconds to wait for the node (default 5)"
    )
    parser.add_argument(
        "--address",
        metavar="HOST:PORT",
        help="ask the status listener there, https://HOST:PORT for a TLS one (the "
        "configuration file is not read)",
    )
    parser.add_argument(
        "--cacert",
        metavar="FILE",
        help="PEM CA certificate(s) to verify a TLS status listener with (default: "
        "$FARMNODE_STATUS_TLS_CA, else node.status_tls_ca, else the system trust store)",
    )
    parser.add_argument(
        "--server-name",
        metavar="NAME",
        help="the name the listener's certificate must carry (default: the address asked)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="do not verify a TLS status listener's certificate (says so on stderr)",
    )


@dataclass(frozen=True, slots=True)
class Command:
    """One subcommand: its name, one line of help, and the function that runs it.

    ``arguments`` adds the command's own options (``--config`` is added for every command).
    """

    name: str
    help: str
    run: Callable[[argparse.Namespace], int]
    arguments: Callable[[argparse.ArgumentParser], None] | None = None


COMMANDS: tuple[Command, ...] = (
    Command("serve", "run the node daemon (SIGHUP reloads, SIGTERM stops)", serve),
    Command(
        "status",
        "print the running node's services and real servers",
        status,
        _status_arguments,
    ),
    Command("check-config", "validate a node configuration file and exit", check_config),
    Command(
        "promote",
        "force this node's next PostgreSQL promotion past the lag/synchronous rules",
        promote,
        _promote_arguments,
    ),
)


def build_parser(commands: Sequence[Command] = COMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="farmnode", description="webfarm's node daemon.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    for command in commands:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        p.add_argument(
            "--config",
            "-c",
            default=os.environ.get("FARMNODE_CONFIG", DEFAULT_CONFIG),
            help=f"the node's TOML configuration file (default: $FARMNODE_CONFIG or "
            f"{DEFAULT_CONFIG})",
        )
        if command.arguments is not None:
            command.arguments(p)
        p.set_defaults(command=command.run)
    return parser


if __name__ == "__main__":
    main()
