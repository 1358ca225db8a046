"""Delivering signed messages to other controllers, after the sender's commit.

Requests never wait for another controller: the handler commits its own
change, queues the message here and answers. A worker thread posts it to
the recipient's `/api/v1/messages`, retrying with backoff, so a controller
that is restarting receives it when it is back. Handlers of every message
are idempotent, so a repeated delivery changes nothing.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import Engine, select

from pdsno.messaging.envelope import seal
from pdsno.nib.schema import controllers
from pdsno.security.keys import SigningKey

log = logging.getLogger("pdsno.messaging")


@dataclass
class _Delivery:
    recipient_id: str
    message_type: str
    body: dict[str, Any]
    attempt: int = 0
    not_before: float = field(default_factory=time.monotonic)


class Dispatcher:
    def __init__(
        self,
        engine: Engine,
        *,
        sender_id: str,
        signer: SigningKey,
        http: httpx.Client,
        max_attempts: int = 8,
        max_backoff_seconds: float = 30.0,
    ) -> None:
        self._engine = engine
        self._sender_id = sender_id
        self._signer = signer
        self._http = http
        self._max_attempts = max_attempts
        self._max_backoff = max_backoff_seconds
        self._queue: queue.Queue[_Delivery | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.delivered = 0
        self.abandoned = 0

    def send(self, recipient_id: str, message_type: str, body: dict[str, Any]) -> None:
        """Queue a message; call it only after the transaction it announces committed."""
        self._queue.put(_Delivery(recipient_id, message_type, body))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pdsno-dispatcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while (delivery := self._queue.get()) is not None:
            wait = delivery.not_before - time.monotonic()
            if wait > 0:
                time.sleep(min(wait, 1.0))
                self._queue.put(delivery)
                continue
            self._deliver(delivery)

    def _recipient_url(self, recipient_id: str) -> str | None:
        with self._engine.connect() as conn:
            return conn.execute(
                select(controllers.c.url).where(controllers.c.controller_id == recipient_id)
            ).scalar_one_or_none()

    def _deliver(self, delivery: _Delivery) -> None:
        delivery.attempt += 1
        url = self._recipient_url(delivery.recipient_id)
        try:
            if url is None:
                raise LookupError(f"no URL registered for {delivery.recipient_id}")
            envelope = seal(
                delivery.message_type,
                delivery.body,
                sender_id=self._sender_id,
                recipient_id=delivery.recipient_id,
                signer=self._signer,
            )
            response = self._http.post(f"{url}/api/v1/messages", json=envelope)
            if response.status_code < 500 and response.status_code != 429:
                if response.is_error:
                    log.error(
                        "%s refused %s: %s %s",
                        delivery.recipient_id,
                        delivery.message_type,
                        response.status_code,
                        response.text[:300],
                    )
                    self.abandoned += 1
                else:
                    self.delivered += 1
                return
            raise httpx.HTTPStatusError("retryable", request=response.request, response=response)
        except (httpx.HTTPError, LookupError) as error:
            if delivery.attempt >= self._max_attempts:
                log.error(
                    "gave up delivering %s to %s after %d attempts: %s",
                    delivery.message_type,
                    delivery.recipient_id,
                    delivery.attempt,
                    error,
                )
                self.abandoned += 1
                return
            backoff = min(self._max_backoff, 0.25 * 2**delivery.attempt)
            log.warning(
                "delivering %s to %s failed (%s); retry in %.1f s",
                delivery.message_type,
                delivery.recipient_id,
                error,
                backoff,
            )
            delivery.not_before = time.monotonic() + backoff
            self._queue.put(delivery)
