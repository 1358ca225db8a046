"""JSON logs that carry the ID of the request they were written for.

configure_logging(settings.logging) once at start: the dictConfig YAML named
by `logging.config_file` (such as the shipped pdsno/data/logging.yaml), else
JSON lines on standard error at `logging.level`.

The request ID lives in a context variable that the API middleware sets for
each request; sync handlers run in a thread pool that copies the context, so
anything logged while serving a request carries its ID.
"""

from __future__ import annotations

import logging
import logging.config
import logging.handlers
import sys
import time
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import yaml
from pythonjsonlogger.json import JsonFormatter as _BaseJsonFormatter

from pdsno.config import LoggingSettings
from pdsno.errors import ConfigurationError

SHIPPED_CONFIG = Path(__file__).resolve().parent.parent / "data" / "logging.yaml"

# The ID of the request being served, or None outside a request.
REQUEST_ID: ContextVar[str | None] = ContextVar("pdsno_request_id", default=None)


def current_request_id() -> str | None:
    return REQUEST_ID.get()


class RequestIdFilter(logging.Filter):
    """Sets `record.request_id` (None outside a request): for text formats
    that name %(request_id)s. Put it on handlers, which see every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(_BaseJsonFormatter):
    """One JSON object a line: timestamp (UTC, ISO 8601), level, logger,
    message, request_id, then any `extra=` fields and the traceback."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("fmt", "%(levelname)s %(name)s %(message)s")
        kwargs.setdefault("rename_fields", {"levelname": "level", "name": "logger"})
        kwargs.setdefault("timestamp", True)
        super().__init__(*args, **kwargs)

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        # uvicorn adds the message again with terminal colour codes.
        log_data.pop("color_message", None)
        # Read here too, so that the ID is there without RequestIdFilter.
        log_data["request_id"] = getattr(record, "request_id", None) or REQUEST_ID.get()


class SysLogHandler(logging.handlers.SysLogHandler):
    """The standard handler, minus its failure mode where there is no syslog.

    Without a listening /dev/log (containers, some CI hosts) the standard
    handler prints a "--- Logging error ---" traceback to stderr for every
    record. This one drops records while syslog is unreachable, says so once
    on stderr, and tries to connect again at most every RETRY_SECONDS.
    """

    RETRY_SECONDS = 30.0

    def __init__(
        self,
        address: str | tuple[str, int] | list[Any] = "/dev/log",
        facility: int | str = "daemon",
        ident: str = "pdsno: ",
    ) -> None:
        if isinstance(facility, str):
            facility = self.facility_names[facility]
        if isinstance(address, list):  # YAML has no tuples: [host, port]
            address = (str(address[0]), int(address[1]))
        self._connected = False
        self._next_attempt = 0.0
        self._warned = False
        super().__init__(address=address, facility=facility)
        self.ident = ident

    def createSocket(self) -> None:  # noqa: N802 (the standard library's name)
        try:
            super().createSocket()
        except OSError:  # a host name that does not resolve, and the like
            self.socket = None
        if isinstance(self.address, str):
            # The standard library swallows a failed connect and leaves a closed socket.
            self._connected = self.socket is not None and self.socket.fileno() != -1
        else:
            self._connected = self.socket is not None
        if not self._connected:
            self._next_attempt = time.monotonic() + self.RETRY_SECONDS

    def emit(self, record: logging.LogRecord) -> None:
        if not isinstance(self.address, str):
            super().emit(record)
            return
        if not self._connected:
            if time.monotonic() >= self._next_attempt:
                self.createSocket()
            if not self._connected:
                self._warn_once()
                return
        try:
            message = self.ident + self.format(record) + ("\000" if self.append_nul else "")
            priority = self.encodePriority(self.facility, self.mapPriority(record.levelname))
            data = f"<{priority}>".encode() + message.encode("utf-8")
            assert self.socket is not None
            self.socket.send(data)
        except OSError:
            self._drop_socket()
            self._warn_once()
        except Exception:
            self.handleError(record)

    def _drop_socket(self) -> None:
        if self.socket is not None:
            self.socket.close()
        self.socket = None
        self._connected = False
        self._next_attempt = time.monotonic() + self.RETRY_SECONDS

    def _warn_once(self) -> None:
        if not self._warned:
            self._warned = True
            sys.stderr.write(
                f"pdsno: syslog at {self.address} is unreachable; its records are dropped "
                f"until it answers (retried every {self.RETRY_SECONDS:.0f} s)\n"
            )

    def close(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self.socket is not None:
                self.socket.close()
                self.socket = None
            self._connected = False
            logging.Handler.close(self)


def console_config(level: str = "INFO") -> dict[str, Any]:
    """JSON lines on stderr: the configuration without a logging.config_file."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "json",
            }
        },
        # uvicorn's loggers propagate here when uvicorn runs with log_config=None.
        "loggers": {
            "pdsno": {"level": level, "handlers": [], "propagate": True},
            "uvicorn": {"level": level, "handlers": [], "propagate": True},
            "uvicorn.error": {"level": level, "handlers": [], "propagate": True},
            "uvicorn.access": {"level": level, "handlers": [], "propagate": True},
        },
        "root": {"level": level, "handlers": ["console"]},
    }


def configure_logging(settings: LoggingSettings) -> None:
    """Apply settings.config_file (a dictConfig YAML), else JSON to the console.

    A file that is missing, not YAML, or names a handler that cannot start
    (a log directory that does not exist) raises ConfigurationError naming it.
    """
    if settings.config_file is None:
        logging.config.dictConfig(console_config(settings.level))
    else:
        path = Path(settings.config_file)
        try:
            config = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigurationError(
                f"logging.config_file {path} does not exist; ship one such as {SHIPPED_CONFIG}, "
                "or unset logging.config_file for JSON logs on the console"
            ) from None
        except (OSError, yaml.YAMLError) as error:
            raise ConfigurationError(f"logging.config_file {path}: {error}") from None
        if not isinstance(config, dict) or config.get("version") != 1:
            raise ConfigurationError(
                f"logging.config_file {path} must be a logging dictConfig mapping with version: 1"
            )
        try:
            logging.config.dictConfig(config)
        except (ValueError, TypeError, AttributeError, ImportError) as error:
            cause = f" ({error.__cause__})" if error.__cause__ else ""
            raise ConfigurationError(
                f"logging.config_file {path}: {error}{cause}. Create the log directory "
                "(owned by the controller's user) or edit the handler."
            ) from None
    logging.captureWarnings(True)


__all__ = [
    "REQUEST_ID",
    "SHIPPED_CONFIG",
    "JsonFormatter",
    "RequestIdFilter",
    "SysLogHandler",
    "configure_logging",
    "console_config",
    "current_request_id",
]
