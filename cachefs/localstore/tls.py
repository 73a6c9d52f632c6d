"""A throwaway certificate authority and a loopback server certificate.

HTTPS stores in tests and benchmarks need a certificate that clients can
verify for real: a private CA signs a certificate for 127.0.0.1 and
localhost, and clients trust the CA through SSL_CERT_FILE (what httpx,
curl and rclone all read). The openssl command does the work; keys never
leave the folder given.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

DAYS = 30


class TlsError(RuntimeError):
    """openssl is missing or failed."""


@dataclass(frozen=True)
class ServerCert:
    ca: Path  # the CA's certificate: what clients trust
    cert: Path  # the server's certificate
    key: Path  # the server's private key


def _openssl(*args: str | Path) -> None:
    try:
        done = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise TlsError("openssl is not installed") from None
    if done.returncode != 0:
        raise TlsError(f"openssl {args[0]} failed: {done.stderr.strip()[-500:]}")


def make_server_cert(folder: Path) -> ServerCert:
    """A CA and a certificate it signed for 127.0.0.1 and localhost, in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = folder / "ca.key", folder / "ca.pem"
    key, csr, cert = folder / "server.key", folder / "server.csr", folder / "server.pem"
    extensions = folder / "server.ext"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", ca_key, "-out", ca_cert, "-days", str(DAYS), "-subj", "/CN=cachefs test CA")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1")
    extensions.write_text("subjectAltName = IP:127.0.0.1, DNS:localhost\n"
                          "extendedKeyUsage = serverAuth\n")
    _openssl("x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial",
             "-out", cert, "-days", str(DAYS), "-extfile", extensions)
    return ServerCert(ca_cert, cert, key)
