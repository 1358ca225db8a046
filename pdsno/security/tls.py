"""The TLS contexts of a controller, and their reload on SIGHUP.

One certificate and key per controller, for both ends of a connection
(extendedKeyUsage serverAuth and clientAuth), and one CA bundle:

- the operator API serves HTTPS; it asks for a client certificate only when
  tls.require_client_cert_api is set;
- the peer listener (joining, signed messages) always requires a client
  certificate issued by the CA;
- calls to the parent and to peers (httpx) verify the server against the CA
  and present the controller's certificate;
- the MQTT client verifies the broker against the CA and presents the same
  certificate.

TLS 1.2 and 1.3 only; for TLS 1.2 the ECDHE ciphers of Mozilla's
"intermediate" profile. TLS 1.3 keeps OpenSSL's suites, which are Mozilla's.

Renewal: reload() reads the certificate and key once, checks them on a
scratch context, and only then loads them into every live context. New
connections get the new certificate, open ones keep theirs, and a bad
replacement (unreadable, key mismatch, expired) leaves the old one serving.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from pdsno.config import TlsSettings
from pdsno.errors import ConfigurationError

log = logging.getLogger("pdsno.tls")

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2

# Mozilla Server Side TLS, "intermediate": the TLS 1.2 ciphers with forward
# secrecy and AEAD, in Mozilla's order (its DHE entries are left out: no DH
# parameters are configured, and every client that matters speaks ECDHE).
TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)

INSECURE_WARNING = (
    "TLS IS OFF (tls.enabled false, tls.allow_insecure_http true): the API and the peer "
    "listener speak plain HTTP, controllers are not authenticated by certificate, and "
    "MQTT is not encrypted. This is for development only; never run it like this in "
    "production."
)


def _harden(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = MINIMUM_VERSION
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return context


def server_context(settings: TlsSettings, *, require_client_cert: bool) -> ssl.SSLContext:
    """A listener's context; with require_client_cert, only the CA's certificates get in."""
    context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    _load_chain(context, settings.cert_file, settings.key_file)
    if require_client_cert:
        _load_ca(context, settings)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    settings: TlsSettings, cert_pair: tuple[Path, Path] | None = None
) -> ssl.SSLContext:
    """For calls out: the server is verified against the CA (name included), and this
    controller presents its certificate (cert_pair, by default cert_file and key_file)."""
    context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))  # CERT_REQUIRED, hostname check
    _load_ca(context, settings)
    _load_chain(context, *(cert_pair or (settings.cert_file, settings.key_file)))
    return context


def _load_ca(context: ssl.SSLContext, settings: TlsSettings) -> None:
    try:
        context.load_verify_locations(cafile=str(settings.ca_file))
    except (OSError, ssl.SSLError) as error:
        raise ConfigurationError(
            f"tls.ca_file {settings.ca_file} cannot be used as the CA bundle: {error}. "
            "Set tls.ca_file to the PEM certificate(s) of the PDSNO CA."
        ) from None


def _load_chain(context: ssl.SSLContext, cert_file: Path, key_file: Path) -> None:
    try:
        context.load_cert_chain(str(cert_file), str(key_file))
    except (OSError, ssl.SSLError) as error:
        raise ConfigurationError(
            f"the certificate {cert_file} and key {key_file} cannot be loaded: {error}. "
            "Set tls.cert_file and tls.key_file (tls.mqtt_cert_file and tls.mqtt_key_file "
            "for the broker) to a PEM certificate (chain) and its private key."
        ) from None


def describe(cert_pem: bytes) -> str:
    """Serial and validity of the first certificate of a PEM chain, for the log."""
    leaf = x509.load_pem_x509_certificate(cert_pem)
    return (
        f"serial {leaf.serial_number:x}, subject {leaf.subject.rfc4514_string()}, "
        f"valid until {leaf.not_valid_after_utc.isoformat()}"
    )


def _check_validity(cert_pem: bytes) -> None:
    leaf = x509.load_pem_x509_certificate(cert_pem)
    now = datetime.now(UTC)
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        raise ValueError(
            f"the certificate is valid from {leaf.not_valid_before_utc.isoformat()} "
            f"to {leaf.not_valid_after_utc.isoformat()}, not now"
        )


def _snapshot(stack: ExitStack, data: bytes, name: str) -> str:
    """A path holding `data` that nobody else can change: an anonymous memory file,
    closed with `stack`.

    Loading the live contexts from the very bytes that were checked means that
    a file replaced meanwhile cannot leave them with a certificate and a key
    that do not match.
    """
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    stack.callback(os.close, fd)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    return f"/proc/self/fd/{fd}"


@dataclass(frozen=True)
class _Presented:
    """A certificate and key, and the contexts that present them."""

    cert_file: Path
    key_file: Path
    contexts: tuple[ssl.SSLContext, ...]


class ControllerTls:
    """Every TLS context of one controller: two listeners, HTTP client, MQTT client."""

    def __init__(self, settings: TlsSettings) -> None:
        self._settings = settings
        self.api = server_context(settings, require_client_cert=settings.require_client_cert_api)
        self.peer = server_context(settings, require_client_cert=True)
        self.http = client_context(settings)
        self.mqtt = client_context(settings, settings.mqtt_cert_pair)
        main = (settings.cert_file, settings.key_file)
        self._presented: tuple[_Presented, ...]
        if settings.mqtt_cert_pair == main:
            self._presented = (_Presented(*main, (self.api, self.peer, self.http, self.mqtt)),)
        else:
            self._presented = (
                _Presented(*main, (self.api, self.peer, self.http)),
                _Presented(*settings.mqtt_cert_pair, (self.mqtt,)),
            )
        self._lock = threading.Lock()
        for presented in self._presented:
            try:
                log.info(
                    "TLS certificate %s: %s",
                    presented.cert_file,
                    describe(presented.cert_file.read_bytes()),
                )
            except (OSError, ValueError) as error:
                log.warning("Cannot describe %s: %s", presented.cert_file, error)

    @property
    def contexts(self) -> tuple[ssl.SSLContext, ...]:
        return (self.api, self.peer, self.http, self.mqtt)

    def reload(self) -> bool:
        """Read the certificates, keys and CA bundle again, into every live context.

        All or nothing: everything is read once and checked on scratch contexts
        first (a failed load_cert_chain on a live context can leave it with the
        new certificate and no key); on any problem the contexts keep what they
        have, and the error is logged. CAs added to the bundle are trusted from
        now on; one removed from it stays trusted until a restart (OpenSSL adds
        to a live trust store, it cannot take out).
        """
        with self._lock, ExitStack() as stack:
            try:
                ca_path = _snapshot(stack, self._settings.ca_file.read_bytes(), "pdsno-ca")
                ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=ca_path)
                staged = []
                for presented in self._presented:
                    cert_pem = presented.cert_file.read_bytes()
                    _check_validity(cert_pem)
                    cert_path = _snapshot(stack, cert_pem, "pdsno-cert")
                    key_path = _snapshot(stack, presented.key_file.read_bytes(), "pdsno-key")
                    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_path, key_path)
                    staged.append((presented, cert_path, key_path, cert_pem))
                for context in self.contexts:
                    context.load_verify_locations(cafile=ca_path)
                for presented, cert_path, key_path, _ in staged:
                    for context in presented.contexts:
                        context.load_cert_chain(cert_path, key_path)
            except (OSError, ssl.SSLError, ValueError) as error:
                files = [self._settings.ca_file]
                for presented in self._presented:
                    files += [presented.cert_file, presented.key_file]
                log.error(
                    "TLS reload refused, the current certificates stay in use (%s): %s",
                    ", ".join(map(str, files)),
                    error,
                )
                return False
        for presented, _, _, cert_pem in staged:
            log.info(
                "TLS certificate reloaded from %s: %s", presented.cert_file, describe(cert_pem)
            )
        return True


def controller_tls(settings: TlsSettings) -> ControllerTls | None:
    """The contexts when TLS is on; None, with a loud warning, for plain HTTP."""
    if settings.enabled:
        return ControllerTls(settings)
    if not settings.allow_insecure_http:  # the Settings validator refuses this already
        raise ConfigurationError("TLS is off but tls.allow_insecure_http is not set")
    log.warning(INSECURE_WARNING)
    return None
