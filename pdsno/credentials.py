"""Secrets handed over by systemd as credentials ($CREDENTIALS_DIRECTORY).

systemd (LoadCredential=, LoadCredentialEncrypted=) decrypts each credential
into a file readable only by the service, and names the directory in
$CREDENTIALS_DIRECTORY. Secrets read from there never pass through the unit
file, the environment or a command line:

- `db_password`: joined into db_url as the password of its user;
- `bootstrap_token`: the single-use token of a first join (empty after it);
- `master_key`: the secrets store's key, exported to this process only as
  PDSNO_MASTER_KEY (an in-process variable: /proc/<pid>/environ shows the
  environment the process was started with, which does not hold it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import SecretStr
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from pdsno.errors import ConfigurationError
from pdsno.security.secrets import MASTER_KEY_ENV

if TYPE_CHECKING:
    from pdsno.config import Settings

CREDENTIALS_DIRECTORY_ENV = "CREDENTIALS_DIRECTORY"
DB_PASSWORD = "db_password"  # noqa: S105 (a file name)
BOOTSTRAP_TOKEN = "bootstrap_token"  # noqa: S105 (a file name)
MASTER_KEY = "master_key"
KNOWN = (DB_PASSWORD, BOOTSTRAP_TOKEN, MASTER_KEY)


def read_credentials(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The known credentials present and not empty, by name; none without systemd."""
    environ = os.environ if environ is None else environ
    directory = environ.get(CREDENTIALS_DIRECTORY_ENV)
    if not directory:
        return {}
    found: dict[str, str] = {}
    for name in KNOWN:
        path = Path(directory) / name
        try:
            value = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            continue
        except OSError as error:
            raise ConfigurationError(
                f"cannot read the credential {path}: {error.strerror}. Check the unit's "
                "LoadCredential=/LoadCredentialEncrypted= lines (systemctl cat)."
            ) from None
        if value:
            found[name] = value
    return found


def with_password(db_url: str, password: str) -> str:
    """db_url with `password` as its password; the URL must not carry one already."""
    try:
        url = make_url(db_url)
    except ArgumentError:
        raise ConfigurationError("db_url is not a database URL") from None
    if url.password is not None:
        raise ConfigurationError(
            "db_url holds a password and the db_password credential gives one too: "
            "remove the password from db_url (keep it only in the credential)"
        )
    return url.set(password=password).render_as_string(hide_password=False)


def apply_credentials(settings: Settings, environ: MutableMapping[str, str] | None = None) -> None:
    """Complete loaded `settings` with the credentials (and the master key in `environ`)."""
    environ = os.environ if environ is None else environ
    credentials = read_credentials(environ)
    if DB_PASSWORD in credentials:
        settings.db_url = with_password(settings.db_url, credentials[DB_PASSWORD])
    if BOOTSTRAP_TOKEN in credentials and settings.bootstrap_token is None:
        settings.bootstrap_token = SecretStr(credentials[BOOTSTRAP_TOKEN])
    if MASTER_KEY in credentials:
        environ.setdefault(MASTER_KEY_ENV, credentials[MASTER_KEY])
