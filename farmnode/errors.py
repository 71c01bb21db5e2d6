"""farmnode's typed errors: one small tree, each error carrying its context.

Library code raises these; only ``farmnode.__main__`` turns them into exit codes.
"""

from __future__ import annotations


class FarmnodeError(Exception):
    """Base of every error farmnode raises on purpose."""


class ConfigError(FarmnodeError):
    """A node configuration file or value is invalid.

    ``source`` names the file (or ``<environment>``), ``path`` the key path inside it
    (``services[0].real[1].weight``) and ``expected`` what would have been accepted.
    """

    def __init__(self, source: str, path: str, expected: str) -> None:
        self.source = source
        self.path = path
        self.expected = expected
        where = f"{source}: {path}" if path else source
        super().__init__(f"{where}: {expected}")


class SchedulerError(FarmnodeError):
    """A scheduler was asked for something it cannot do (unknown name, bad parameter)."""


class DataplaneError(FarmnodeError):
    """A data plane could not be set up, changed or torn down.

    ``plane`` names the data plane (``userspace``, ``nftables``); ``detail`` says what failed.
    """

    def __init__(self, plane: str, detail: str) -> None:
        self.plane = plane
        self.detail = detail
        super().__init__(f"{plane} data plane: {detail}")


class ListenError(FarmnodeError):
    """A listener (the status listener) could not be opened on ``address``."""

    def __init__(self, address: str, detail: str) -> None:
        self.address = address
        self.detail = detail
        super().__init__(f"cannot listen on {address}: {detail}")
