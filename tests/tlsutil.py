"""A test CA, certificates for controllers and clients, and a Mosquitto with TLS.

Everything is ECDSA P-256 and made with `cryptography`. Certificates name
127.0.0.1 and localhost, so that hostname verification runs as in production.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import ssl
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from services import (
    MOSQUITTO,
    START_TIMEOUT_SECONDS,
    ServiceUser,
    free_port,
    port_open,
    private_directory,
    require_binary,
    tail,
)

HOSTS = ("127.0.0.1", "localhost")


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, as PEM."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def serial(self) -> int:
        return x509.load_pem_x509_certificate(self.cert_pem).serial_number

    def write(self, cert_file: Path, key_file: Path) -> tuple[Path, Path]:
        """Replace both files atomically (as a renewal tool would), key mode 0600."""
        files = ((cert_file, self.cert_pem, 0o644), (key_file, self.key_pem, 0o600))
        for path, data, mode in files:
            staged = path.with_name(f".{path.name}.new")
            staged.write_bytes(data)
            staged.chmod(mode)
            staged.replace(path)
        return cert_file, key_file


class CertificateAuthority:
    """A self-signed CA that issues leaf certificates."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self.key = key
        self.cert = cert

    @classmethod
    def create(cls, name: str = "PDSNO test CA") -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @classmethod
    def at(cls, directory: Path) -> CertificateAuthority:
        """The CA kept in `directory` (ca.crt, ca.key), made on first use."""
        cert_file, key_file = directory / "ca.crt", directory / "ca.key"
        if cert_file.exists():
            key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            return cls(key, x509.load_pem_x509_certificate(cert_file.read_bytes()))
        directory.mkdir(parents=True, exist_ok=True)
        ca = cls.create()
        Issued(ca.cert_pem, _key_pem(ca.key)).write(cert_file, key_file)
        return ca

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def write_ca(self, path: Path) -> Path:
        path.write_bytes(self.cert_pem)
        return path

    def issue(
        self,
        common_name: str,
        *,
        hosts: tuple[str, ...] = HOSTS,
        server: bool = True,
        client: bool = True,
        valid_for: timedelta = timedelta(days=7),
    ) -> Issued:
        """A leaf certificate; controllers get serverAuth and clientAuth both."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        usages = [
            *([ExtendedKeyUsageOID.SERVER_AUTH] if server else []),
            *([ExtendedKeyUsageOID.CLIENT_AUTH] if client else []),
        ]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + valid_for)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def client_context(
    ca_file: Path, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext:
    """A client that trusts only `ca_file` and checks the name; optionally with a cert."""
    context = ssl.create_default_context(cafile=str(ca_file))
    if cert_file is not None:
        context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return context


def peer_serial(sock: ssl.SSLSocket) -> int:
    """The serial number of the certificate the server presented."""
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


class TlsMosquitto:
    """A private Mosquitto whose only listener is TLS and requires a client certificate.

    set_tcp_nodelay is on, as roles/mosquitto sets it (mosquitto_tcp_nodelay);
    tcp_nodelay=False gives Mosquitto's default, for the events bench.
    """

    host = "127.0.0.1"

    def __init__(self, ca: CertificateAuthority, *, tcp_nodelay: bool = True) -> None:
        require_binary(MOSQUITTO, "Mosquitto (package mosquitto)")
        self._owner = ServiceUser.for_service("mosquitto")
        self.base = private_directory("pdsno-mqtt-tls-", self._owner)
        self.port = free_port()
        self._log = self.base / "mosquitto.log"
        self._config = self.base / "mosquitto.conf"
        self._process: subprocess.Popen[bytes] | None = None
        ca_file = ca.write_ca(self.base / "ca.crt")
        cert_file, key_file = ca.issue("mosquitto", client=False).write(
            self.base / "broker.crt", self.base / "broker.key"
        )
        self._config.write_text(
            f"listener {self.port} {self.host}\n"
            f"cafile {ca_file}\n"
            f"certfile {cert_file}\n"
            f"keyfile {key_file}\n"
            "require_certificate true\n"
            "allow_anonymous true\n"
            "persistence false\n"
            # As roles/mosquitto deploys it (mosquitto_max_queued_messages):
            # Mosquitto's default of 1,000 drops QoS 1 messages to a
            # subscriber that lags further behind.
            "max_queued_messages 10000\n"
            f"set_tcp_nodelay {'true' if tcp_nodelay else 'false'}\n"
            f"log_dest file {self._log}\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
        )
        if self._owner is not None:
            for path in self.base.iterdir():
                os.chown(path, self._owner.uid, self._owner.gid)

    def start(self) -> TlsMosquitto:
        options = self._owner.process_options() if self._owner else {}
        self._process = subprocess.Popen(
            [str(MOSQUITTO), "-c", str(self._config)],
            cwd=self.base,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **options,
        )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not port_open(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"mosquitto (TLS) did not start on {self.host}:{self.port}; "
                    f"last lines of {self._log}:\n{tail(self._log)}"
                )
            time.sleep(0.05)
        return self

    def log(self) -> str:
        return tail(self._log, 200)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        self._process = None
        shutil.rmtree(self.base, ignore_errors=True)
