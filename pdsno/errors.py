"""Errors that carry what the caller should do about them.

The API maps each class to one HTTP status; the CLI prints the message.
"""


class PdsnoError(Exception):
    """Base of every error PDSNO raises on purpose."""

    status_code = 400


class ConfigurationError(PdsnoError):
    """The controller cannot start as configured; the message says what to set."""

    status_code = 500


class NotFoundError(PdsnoError):
    status_code = 404


class ConflictError(PdsnoError):
    """A versioned row changed under the caller, a lock is held, or a state forbids it."""

    status_code = 409


class AuthenticationError(PdsnoError):
    status_code = 401


class PermissionDeniedError(PdsnoError):
    status_code = 403


class ValidationRefusedError(PdsnoError):
    """A join, token, challenge or signed message was refused; the message says why."""

    status_code = 403
