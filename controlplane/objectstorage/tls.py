"""The local object storage's TLS: a CA kept in the state dir, and a server certificate for
127.0.0.1/localhost it signs, as the PKCS#12 keystore s3proxy (Jetty) reads. Made once with
openssl; every file 0600 in a 0700 directory. The SDK's S3 client (obstore: rustls with the
system's roots, read from /etc/ssl/certs) trusts the server once the CA is installed there."""

from __future__ import annotations

import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from runtime.private import private_dir, write_private

CA_NAME = "sandbox-toolbox local object storage CA"
SERVER_NAMES = "IP:127.0.0.1,DNS:localhost"
# P-256: quick to make, and what both rustls and Jetty take.
KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


@dataclass(frozen=True)
class Tls:
    ca: Path
    keystore: Path
    password: str


def trust_command(ca: Path) -> str:
    """The one command that makes this machine's clients (the SDK's included) trust the CA."""
    return (f"sudo cp {ca} /usr/local/share/ca-certificates/sandbox-toolbox-object-storage.crt && "
            "sudo update-ca-certificates")


def _openssl(*args: str, cwd: Path, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr.strip()}")


def _valid_for_a_month(certificate: Path) -> bool:
    """Whether the server certificate outlives the next 30 days (else a new one is made)."""
    done = subprocess.run(["openssl", "x509", "-checkend", str(30 * 86400), "-noout", "-in", str(certificate)],
                          capture_output=True)
    return done.returncode == 0


def ensure(directory: Path) -> Tls:
    """The CA and keystore under `directory`, made on the first call (blocking: a thread's)."""
    private_dir(directory)
    tls = Tls(directory / "ca.pem", directory / "keystore.p12", "")
    password_file = directory / "keystore-password"
    if tls.keystore.exists() and password_file.exists() and _valid_for_a_month(directory / "server.pem"):
        return Tls(tls.ca, tls.keystore, password_file.read_text().strip())
    password = secrets.token_urlsafe(24)
    if not tls.ca.exists():
        _openssl("req", "-x509", *KEY, "-keyout", "ca.key", "-out", "ca.pem", "-days", "3650",
                 "-subj", f"/CN={CA_NAME}", "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    _openssl("req", *KEY, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=directory)
    write_private(directory / "server.ext", (f"subjectAltName={SERVER_NAMES}\nbasicConstraints=CA:FALSE\n"
                                             "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n").encode())
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-days", "825",
             "-set_serial", str(secrets.randbits(63)), "-extfile", "server.ext", "-out", "server.pem", cwd=directory)
    # The password through the environment, never argv (other users see a process's argv).
    _openssl("pkcs12", "-export", "-in", "server.pem", "-inkey", "server.key", "-name", "s3proxy",
             "-out", "keystore.p12", "-passout", "env:KEYSTORE_PASSWORD", cwd=directory,
             env={"KEYSTORE_PASSWORD": password})
    write_private(password_file, password.encode())
    for name in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem", "keystore.p12"):
        os.chmod(directory / name, 0o600)
    return Tls(tls.ca, tls.keystore, password)
