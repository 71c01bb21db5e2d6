"""TLS for the listeners: server contexts from PEM files, checked at load, reloaded in place.

:func:`server_context` builds an :class:`ssl.SSLContext` from a certificate chain and its
key (and, for the admin listener, a CA whose client certificates are required), raising
:class:`InvalidValue` naming the setting when a file is missing, not a regular file, too
large, does not parse, or the key does not match the certificate. :class:`ReloadableTls`
keeps one context for a listener's life: :meth:`ReloadableTls.reload` loads the new chain
into the SAME context (new handshakes use it; established connections keep theirs), and a
bad new chain is logged at ERROR with the old one kept. :func:`start_uvicorn` serves a
uvicorn server on a socket with bounded handshakes, in time and in number (the dispatcher's
admin listener and farmnode's status listener).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dispatcher.errors import InvalidValue
from dispatcher.tlsaccept import HandshakeGate, TlsAccepter

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger("webfarm.tls")

MAX_PEM_BYTES = 1 << 20
#: TLS handshakes under way at once on a uvicorn listener (the oldest is shed for a new one).
MAX_HANDSHAKES = 256


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A listener's PEM files and the setting names that gave them (for error messages)."""

    certificate: Path
    key: Path
    client_ca: Path | None = None
    certificate_field: str = "tls_certificate"
    key_field: str = "tls_key"
    client_ca_field: str = "admin_tls_client_ca"


def tls_files(
    certificate: Path | None,
    key: Path | None,
    certificate_field: str,
    key_field: str,
    client_ca: Path | None = None,
    client_ca_field: str = "",
) -> TlsFiles | None:
    """Both or neither of certificate and key (a client CA only with them); ``None``: plain."""
    if certificate is None and key is None:
        if client_ca is not None:
            raise InvalidValue(client_ca_field, f"needs {certificate_field} and {key_field}")
        return None
    if certificate is None:
        raise InvalidValue(certificate_field, f"the certificate chain that goes with {key_field}")
    if key is None:
        raise InvalidValue(key_field, f"the private key of {certificate_field}")
    return TlsFiles(certificate, key, client_ca, certificate_field, key_field, client_ca_field)


def _check_file(path: Path, field_name: str) -> None:
    try:
        info = path.stat()
    except OSError as exc:
        raise InvalidValue(field_name, f"a readable PEM file: {path}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise InvalidValue(field_name, f"a regular PEM file ({path} is not a regular file)")
    if info.st_size > MAX_PEM_BYTES:
        raise InvalidValue(field_name, f"a PEM file of at most {MAX_PEM_BYTES} bytes ({path})")


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """A TLS 1.2+ server context for ``files``; :class:`InvalidValue` naming the setting."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    load_chain(context, files)
    if files.client_ca is not None:
        _check_file(files.client_ca, files.client_ca_field)
        try:
            context.load_verify_locations(cafile=str(files.client_ca))
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise InvalidValue(
                files.client_ca_field, f"PEM CA certificates: {files.client_ca}: {exc}"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def load_chain(context: ssl.SSLContext, files: TlsFiles) -> None:
    """Load the chain and key into ``context``; on error it keeps what it had."""
    _check_file(files.certificate, files.certificate_field)
    _check_file(files.key, files.key_field)
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # fail here, not half-way into context
    for target in (probe, context):
        try:
            target.load_cert_chain(str(files.certificate), str(files.key))
        except ssl.SSLError as exc:
            field_name = files.key_field if "KEY" in str(exc).upper() else files.certificate_field
            raise InvalidValue(
                field_name,
                f"a PEM certificate chain and its matching private key ({files.certificate},"
                f" {files.key}): {exc.reason or exc}",
            ) from None
        except OSError as exc:
            raise InvalidValue(
                files.certificate_field, f"readable PEM files: {exc.strerror or exc}"
            ) from None


def client_context(ca: Path | None, field_name: str, *, verify: bool = True) -> ssl.SSLContext:
    """A TLS 1.2+ client context for a command that asks a listener of ours (``farmnode
    status``): it verifies the server's certificate against ``ca`` only (PEM CA
    certificates), or the system's trust store without one, and checks the name asked for.
    ``verify=False`` checks nothing (an operator's explicit choice). :class:`InvalidValue`
    naming ``field_name`` when ``ca`` cannot be used."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif ca is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        _check_file(ca, field_name)
        try:
            context.load_verify_locations(cafile=str(ca))
        except (ssl.SSLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise InvalidValue(field_name, f"PEM CA certificates: {ca}: {reason}") from None
    return context


class ReloadableTls:
    """One listener's TLS context, its chain reloadable in place (SIGHUP)."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self.context = server_context(files)

    def reload(self, files: TlsFiles | None = None) -> bool:
        """Load the (new) files into the same context; ``False`` (ERROR logged, the old
        chain kept) if they cannot be used."""
        files = files or self.files
        try:
            load_chain(self.context, files)
        except InvalidValue as exc:
            log.error("TLS certificate not reloaded, the running one stays: %s", exc)  # noqa: TRY400
            return False
        self.files = files
        log.info("TLS certificate reloaded from %s", files.certificate)
        return True


async def start_uvicorn(
    server: uvicorn.Server,
    sock: socket.socket,
    tls: ReloadableTls | None,
    handshake_timeout: float,
    backlog: int = 2048,
    max_handshakes: int = MAX_HANDSHAKES,
) -> None:
    """Start ``server`` (its lifespan set) on ``sock``: plain, or with ``tls``'s context, a
    handshake not done within ``handshake_timeout`` seconds dropped, and at most
    ``max_handshakes`` under way (the oldest shed for a new one).

    uvicorn's own ``create_server`` passes no ``ssl_handshake_timeout`` (a client that never
    finishes its handshake would hold a connection for a minute) and counts a connection
    only once its handshake is done: it starts with no socket, and the listener is a
    :class:`~dispatcher.tlsaccept.TlsAccepter` that counts handshakes from the accept.
    """
    if tls is None:
        await server.startup(sockets=[sock])
        return
    server.config.ssl = tls.context  # (uvicorn reads it for the scheme it reports)
    await server.startup(sockets=[])

    def protocol() -> asyncio.Protocol:
        return server.config.http_protocol_class(  # type: ignore[call-arg]
            config=server.config,
            server_state=server.server_state,
            app_state=server.lifespan.state,
        )

    gate = HandshakeGate(tls.context, handshake_timeout, max_handshakes, protocol)
    accepter = TlsAccepter(sock, gate, backlog)
    await accepter.start_serving()
    server.servers.append(accepter)  # type: ignore[arg-type]  # (uvicorn calls close, wait_closed)
