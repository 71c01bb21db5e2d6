"""A test CA made on the fly with the openssl CLI: server and client certificates."""

from __future__ import annotations

import subprocess
from pathlib import Path


def _run(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


class ScratchCa:
    def __init__(self, where: Path, name: str = "ca") -> None:
        self.dir = where
        self.cert = where / f"{name}.pem"
        self.key = where / f"{name}.key"
        _run(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(self.key), "-out", str(self.cert), "-days", "2",
            "-subj", f"/CN=webfarm test {name}",
        )  # fmt: skip

    def issue(self, name: str, *, server: bool = True) -> tuple[Path, Path]:
        """A certificate for 127.0.0.1/localhost (server) or a client: (cert, key)."""
        key, csr, cert = (self.dir / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
        ext = self.dir / f"{name}.ext"
        ext.write_text(
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
            if server
            else "extendedKeyUsage=clientAuth\n"
        )
        _run(
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}",
        )  # fmt: skip
        _run(
            "x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
            "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext),
        )  # fmt: skip
        return cert, key
