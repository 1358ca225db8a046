#!/usr/bin/python
"""Network probes of the PDSNO security checklist, run from the outsider host."""

from __future__ import annotations

import http.client
import json
import re
import socket
import ssl
import struct
import time
from datetime import UTC, datetime

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: pdsno_verify_probe
short_description: Probe the PDSNO hosts over the network as an outsider or client would
description:
  - Runs on the probe host (an allowed client, or with where=outsider a host of
    pdsno_peers that is no part of PDSNO) and, for
    every target host and every probe check of an item that applies to it,
    connects as a client would - TCP, TLS with each protocol version, MQTT,
    the PostgreSQL wire protocol, the controller's HTTPS API - and returns one
    result per check and target.
  - Sends traffic only to the targets' addresses, bounded in count and time;
    writes nothing anywhere. Works the same in check mode.
options:
  checklist:
    description: The items (id, applies_to, checks); see roles/verify/vars/main.yml.
    type: list
    elements: dict
    required: true
  targets:
    description: The hosts to probe, each with name, address, groups and ports.
    type: list
    elements: dict
    required: true
  cadata:
    description: The PDSNO trust bundle (PEM) that server certificates must chain to.
    type: str
    required: true
  timeout:
    description: Seconds to wait for any one connection.
    type: float
    default: 5
  where:
    description:
      - Which checks to run. C(probe) from a client the firewall lets in (the
        control node by default), C(outsider) from a host it does not.
    type: str
    default: probe
    choices: [probe, outsider]
author: PDSNO Platform engineers
"""

RETURN = r"""
results:
  description: One entry per check and target, with host, item, check, status and reason.
  returned: always
  type: list
  elements: dict
"""

PASS, FAIL, NA = "pass", "fail", "not_applicable"
PROBES = frozenset(
    {
        "tcp",
        "tls",
        "mqtt_anonymous",
        "postgresql",
        "api_unauthenticated",
        "api_headers",
        "api_cors",
        "api_rate_limit",
        "api_rbac",
        "api_session",
        "api_lockout",
        "api_input",
    }
)
# Tries of one login past 429 (each waits Retry-After, at most 10 s).
LOGIN_ATTEMPTS = 6

VERSIONS = {
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}


class Probe:
    def __init__(self, target: dict, cadata: str, timeout: float) -> None:
        self.target = target
        self.cadata = cadata
        self.timeout = timeout
        self.address = target["address"]
        self.name = target["name"]

    def port(self, value: object) -> int:
        if isinstance(value, int) or str(value).isdigit():
            return int(value)
        return int(self.target["ports"][value])

    def connect(self, port: int) -> socket.socket:
        return socket.create_connection((self.address, port), timeout=self.timeout)

    def verifying_context(self, version: str | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cadata=self.cadata)
        if version:
            ctx.minimum_version = ctx.maximum_version = VERSIONS[version]
        return ctx

    # -- TCP ---------------------------------------------------------------
    def tcp(self, args: dict) -> tuple[str, str]:
        results = []
        for port in [self.port(p) for p in args["ports"]]:
            try:
                self.connect(port).close()
                results.append((port, "open"))
            except OSError as error:
                results.append((port, f"closed ({error.__class__.__name__})"))
        wrong = [
            f"{p} is {s}" for p, s in results if s.startswith("open") != (args["expect"] == "open")
        ]
        summary = ", ".join(f"{p} {s.split(' ')[0]}" for p, s in results)
        if wrong:
            return FAIL, f"expected {args['expect']} from the outsider: " + "; ".join(wrong)
        return PASS, f"from the outsider: {summary}"

    # -- TLS ---------------------------------------------------------------
    def tls_refused(self, port: int, version: str) -> tuple[bool, str]:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        # Let this client offer the old version, so that a refusal is the server's.
        ctx.set_ciphers("ALL:@SECLEVEL=0")
        ctx.minimum_version = ctx.maximum_version = VERSIONS[version]
        try:
            with self.connect(port) as raw, ctx.wrap_socket(raw, server_hostname=self.name) as tls:
                return False, f"{version} accepted ({tls.cipher()[0]})"
        except ssl.SSLError as error:
            if "NO_PROTOCOLS_AVAILABLE" in str(error) or "no protocols available" in str(error):
                raise ProbeError(f"this probe host cannot offer {version}") from error
            return True, f"{version} refused ({error.reason or error})"
        except OSError as error:
            raise ProbeError(f"port {port} unreachable: {error}") from error

    def tls_accepted(
        self, port: int, version: str, client_cert_may_be_required: bool
    ) -> tuple[bool, str]:
        ctx = self.verifying_context(version)
        try:
            with self.connect(port) as raw, ctx.wrap_socket(raw, server_hostname=self.name) as tls:
                if client_cert_may_be_required:
                    tls.settimeout(1.0)
                    try:
                        tls.recv(1)
                    except ssl.SSLError as error:
                        return (
                            True,
                            f"{version} with a chain valid for {self.name} "
                            f"(client certificate demanded: {error.reason})",
                        )
                    except (TimeoutError, OSError):
                        pass
                return True, f"{version} with a chain valid for {self.name}"
        except ssl.SSLCertVerificationError as error:
            return (
                False,
                f"{version}: certificate not valid for {self.name} against the PDSNO CA: "
                f"{error.verify_message}",
            )
        except ssl.SSLError as error:
            # The chain was verified before this point: a server that demands
            # a client certificate aborts the handshake after it.
            if client_cert_may_be_required and "VERIFY" not in str(error):
                return (
                    True,
                    f"{version} with a chain valid for {self.name} "
                    f"(client certificate demanded: {error.reason})",
                )
            return False, f"{version} refused: {error.reason or error}"
        except OSError as error:
            return False, f"port {port} unreachable: {error}"

    def tls(self, args: dict) -> tuple[str, str]:
        port = self.port(args["port"])
        problems, notes = [], []
        for version in args.get("refuse", ["TLSv1", "TLSv1.1"]):
            refused, note = self.tls_refused(port, version)
            (notes if refused else problems).append(note)
        for version in args.get("accept", ["TLSv1.2", "TLSv1.3"]):
            accepted, note = self.tls_accepted(
                port, version, args.get("client_cert_may_be_required", False)
            )
            (notes if accepted else problems).append(note)
        if problems:
            return FAIL, f"port {port}: " + "; ".join(problems)
        return PASS, f"port {port}: " + "; ".join(notes)

    # -- MQTT --------------------------------------------------------------
    def mqtt_anonymous(self, args: dict) -> tuple[str, str]:
        """An MQTT 3.1.1 CONNECT without credentials or certificate must not be accepted."""
        port = self.port(args["port"])
        client_id = b"pdsno-verify-probe"
        variable = b"\x00\x04MQTT\x04\x02\x00\x0a"
        payload = struct.pack("!H", len(client_id)) + client_id
        packet = b"\x10" + bytes([len(variable) + len(payload)]) + variable + payload
        try:
            raw = self.connect(port)
        except OSError as error:
            return PASS, f"port {port} refuses connections ({error.__class__.__name__})"
        try:
            sock = raw
            if args.get("tls"):
                ctx = self.verifying_context()
                sock = ctx.wrap_socket(raw, server_hostname=self.name)
            sock.sendall(packet)
            answer = sock.recv(4)
        except (ssl.SSLError, OSError) as error:
            return (
                PASS,
                f"port {port}: anonymous client refused "
                f"({getattr(error, 'reason', None) or error})",
            )
        finally:
            raw.close()
        if len(answer) == 4 and answer[0] == 0x20 and answer[3] == 0:
            return (
                FAIL,
                f"port {port}{' (TLS)' if args.get('tls') else ' (plain)'} "
                "accepted an anonymous MQTT client",
            )
        if not answer:
            return PASS, f"port {port}: connection closed without CONNACK"
        return PASS, f"port {port}: CONNACK refused the anonymous client (code {answer[-1]})"

    # -- PostgreSQL ----------------------------------------------------------
    @staticmethod
    def pg_startup(user: str, database: str) -> bytes:
        body = struct.pack("!I", 196608)
        for key, value in (("user", user), ("database", database)):
            body += key.encode() + b"\x00" + value.encode() + b"\x00"
        body += b"\x00"
        return struct.pack("!I", len(body) + 4) + body

    @staticmethod
    def pg_answer(sock: socket.socket) -> tuple[str, bytes]:
        head = b""
        while len(head) < 5:
            chunk = sock.recv(5 - len(head))
            if not chunk:
                return "closed", b""
            head += chunk
        kind, length = chr(head[0]), struct.unpack("!I", head[1:5])[0]
        body = b""
        while len(body) < length - 4:
            chunk = sock.recv(length - 4 - len(body))
            if not chunk:
                break
            body += chunk
        return kind, body

    @staticmethod
    def pg_verdict(kind: str, body: bytes, over: str) -> tuple[str, str]:
        if kind == "E":
            fields = dict(
                (f[:1].decode(), f[1:].decode(errors="replace")) for f in body.split(b"\x00") if f
            )
            return PASS, f"{over}: refused ({fields.get('M', 'error')})"
        if kind == "closed":
            return PASS, f"{over}: connection closed by the server"
        if kind == "R":
            code = struct.unpack("!I", body[:4])[0]
            if code == 0:
                return FAIL, f"{over}: logged in without any password (trust)"
            if code == 10:
                mechanisms = [m.decode() for m in body[4:].split(b"\x00") if m]
                if all(m.startswith("SCRAM-SHA-256") for m in mechanisms):
                    return PASS, f"{over}: SCRAM-SHA-256 asked ({', '.join(mechanisms)})"
                return FAIL, f"{over}: SASL with {', '.join(mechanisms)}"
            names = {3: "a cleartext password", 5: "an MD5 password"}
            return FAIL, f"{over}: server asks for {names.get(code, f'authentication {code}')}"
        return FAIL, f"{over}: unexpected answer {kind!r}"

    def postgresql(self, args: dict) -> tuple[str, str]:
        port = self.port(args["port"])
        startup = self.pg_startup(args["user"], args["database"])
        verdicts = []
        try:
            with self.connect(port) as sock:
                sock.sendall(startup)
                verdicts.append(self.pg_verdict(*self.pg_answer(sock), "without TLS"))
            with self.connect(port) as raw:
                raw.sendall(struct.pack("!II", 8, 80877103))
                if raw.recv(1) != b"S":
                    verdicts.append((FAIL, "the server does not offer TLS"))
                else:
                    ctx = self.verifying_context()
                    with ctx.wrap_socket(raw, server_hostname=self.name) as tls:
                        tls.sendall(startup)
                        verdicts.append(
                            self.pg_verdict(*self.pg_answer(tls), f"over {tls.version()}")
                        )
        except ssl.SSLCertVerificationError as error:
            verdicts.append(
                (FAIL, f"certificate not valid for {self.name}: {error.verify_message}")
            )
        except OSError as error:
            if not verdicts:
                return (
                    PASS,
                    f"port {port} unreachable from the outsider ({error.__class__.__name__})",
                )
            verdicts.append((FAIL, f"port {port}: {error}"))
        status = FAIL if any(s == FAIL for s, _ in verdicts) else PASS
        return status, f"port {port} as {args['user']}: " + "; ".join(r for _, r in verdicts)

    # -- the controller's HTTPS API -----------------------------------------
    def api_connection(self) -> http.client.HTTPSConnection:
        """A connection to the API, made by address and verified by name."""
        port = self.port("api")
        ctx = self.verifying_context()
        conn = http.client.HTTPSConnection(self.name, port, timeout=self.timeout, context=ctx)
        try:
            conn.sock = ctx.wrap_socket(self.connect(port), server_hostname=self.name)
        except BaseException:
            conn.close()
            raise
        return conn

    def api(self, method: str, path: str, body: object = None, headers: dict | None = None):
        """One HTTPS request to the API, on a connection of its own."""
        conn = self.api_connection()
        try:
            data = body if body is None or isinstance(body, (bytes, str)) else json.dumps(body)
            conn.request(
                method,
                path,
                body=data,
                headers={"Content-Type": "application/json", **(headers or {})},
            )
            response = conn.getresponse()
            return response, response.read()
        finally:
            conn.close()

    def post_login(self, body: object):
        """POST body to the login route, waiting out its 429s (Retry-After, at
        most 10 s, LOGIN_ATTEMPTS times)."""
        for _ in range(LOGIN_ATTEMPTS):
            response, answer = self.api("POST", "/api/v1/auth/login", body)
            if response.status != 429:
                break
            time.sleep(min(float(response.getheader("Retry-After") or 5), 10))
        return response, answer

    def login(self, username: str, password: str) -> tuple[int, dict, dict]:
        """Log in as the API's rate limit allows.

        The login class allows a burst of 5 and then one per 5 s per address,
        and one verify run logs in about 13 times per controller: post_login
        waits out the 429s.
        """
        response, body = self.post_login({"username": username, "password": password})
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            data = {}
        return response.status, dict(response.getheaders()), data

    def api_unauthenticated(self, args: dict) -> tuple[str, str]:
        response, body = self.api("GET", "/openapi.json")
        if response.status != 200:
            return FAIL, f"/openapi.json answered {response.status}; cannot list the routes"
        spec = json.loads(body)
        public = [re.compile(p) for p in args.get("public", [])]
        problems, checked = [], 0
        for path, operations in spec.get("paths", {}).items():
            if any(p.fullmatch(path) for p in public):
                continue
            concrete = re.sub(r"\{[^}]+\}", "pdsno-verify-probe", path)
            for method in operations:
                if method.upper() not in ("GET", "POST", "PUT", "PATCH", "DELETE"):
                    continue
                checked += 1
                answer, _ = self.api(method.upper(), concrete, {} if method != "get" else None)
                if answer.status == 429:
                    time.sleep(float(answer.getheader("Retry-After") or 1))
                    answer, _ = self.api(method.upper(), concrete, {} if method != "get" else None)
                if answer.status != 401:
                    problems.append(f"{method.upper()} {path} answered {answer.status}")
        if problems:
            return FAIL, "without credentials: " + "; ".join(problems)
        return (
            PASS,
            f"all {checked} routes of /openapi.json but the public ones "
            "answered 401 without credentials",
        )

    def api_headers(self, args: dict) -> tuple[str, str]:
        response, _ = self.api("GET", args.get("path", "/api/v1/auth/me"))
        headers = {k.lower(): v for k, v in response.getheaders()}
        problems = []
        for name, pattern in args["headers"].items():
            value = headers.get(name.lower())
            if value is None or not re.search(pattern, value, re.IGNORECASE):
                problems.append(f"{name}: {value!r} (want /{pattern}/)")
        if problems:
            return FAIL, f"{args.get('path')} ({response.status}): " + "; ".join(problems)
        return PASS, "headers " + ", ".join(f"{k}: {headers[k.lower()]}" for k in args["headers"])

    def api_cors(self, args: dict) -> tuple[str, str]:
        origin = args.get("foreign_origin", "https://pdsno-verify.invalid")
        response, _ = self.api(
            "OPTIONS",
            "/api/v1/auth/me",
            headers={"Origin": origin, "Access-Control-Request-Method": "GET"},
        )
        allowed = response.getheader("Access-Control-Allow-Origin")
        if allowed in ("*", origin):
            return (
                FAIL,
                f"a preflight from {origin} is allowed (Access-Control-Allow-Origin: {allowed})",
            )
        return (
            PASS,
            f"a preflight from {origin} gets no Access-Control-Allow-Origin ({response.status})",
        )

    def api_rate_limit(self, args: dict) -> tuple[str, str]:
        # One kept-alive connection: a new TLS connection per request would
        # meet the firewall's per-source connection rate first, which is about
        # the API's own rate, and never go fast enough to see the API's 429.
        conn = self.api_connection()
        try:
            for sent in range(1, int(args.get("max_requests", 200)) + 1):
                conn.request("GET", args.get("path", "/api/v1/auth/me"))
                response = conn.getresponse()
                response.read()
                if response.status == 429:
                    retry = response.getheader("Retry-After")
                    if not retry:
                        return FAIL, f"429 after {sent} requests, without Retry-After"
                    time.sleep(min(float(retry), 10))
                    return PASS, f"429 with Retry-After: {retry} after {sent} requests"
        finally:
            conn.close()
        return FAIL, f"no 429 within {args.get('max_requests', 200)} requests"

    def need(self, args: dict, *names: str) -> None:
        absent = [n for n in names if not args.get(n)]
        if absent:
            raise ProbeError(
                f"set {', '.join('verify_api_' + n for n in absent)} "
                "(the probe account) to run this check"
            )

    def api_rbac(self, args: dict) -> tuple[str, str]:
        self.need(args, "auditor_username", "auditor_password")
        status, _, data = self.login(args["auditor_username"], args["auditor_password"])
        if status != 200:
            return FAIL, f"the auditor probe account could not log in ({status})"
        bearer = {"Authorization": f"Bearer {data['token']}"}
        try:
            response, _ = self.api(
                "POST", "/api/v1/proposals/pdsno-verify-probe/approve", {}, bearer
            )
            if response.status != 403:
                return FAIL, f"an auditor's approval answered {response.status}, not 403"
            return PASS, "an auditor's approval answered 403"
        finally:
            self.api("POST", "/api/v1/auth/logout", None, bearer)

    def api_session(self, args: dict) -> tuple[str, str]:
        self.need(args, "auditor_username", "auditor_password")
        status, _, data = self.login(args["auditor_username"], args["auditor_password"])
        if status != 200:
            return FAIL, f"the auditor probe account could not log in ({status})"
        try:
            expires = datetime.fromisoformat(data["expires_at"])
            hours = (expires - datetime.now(UTC)).total_seconds() / 3600
            if hours > float(args.get("max_hours", 8)) + 0.02:
                return FAIL, f"a new session lasts {hours:.2f} h"
            return PASS, f"a new session lasts {hours:.2f} h (at most {args.get('max_hours', 8)})"
        finally:
            self.api(
                "POST", "/api/v1/auth/logout", None, {"Authorization": f"Bearer {data['token']}"}
            )

    def api_lockout(self, args: dict) -> tuple[str, str]:
        self.need(
            args, "lockout_username", "lockout_password", "auditor_username", "auditor_password"
        )
        attempts = int(args.get("threshold", 5))
        for _ in range(attempts):
            status, _, _ = self.login(args["lockout_username"], "pdsno-verify-wrong-password")
            if status != 401:
                return FAIL, f"a wrong password answered {status}, not 401"
        time.sleep(1)
        status, _, _ = self.login(args["lockout_username"], args["lockout_password"])
        if status == 200:
            return FAIL, f"the right password still logs in after {attempts} failures"
        status, _, data = self.login(args["auditor_username"], args["auditor_password"])
        if status != 200:
            return (
                FAIL,
                "locked out as expected, but the auditor cannot log in "
                f"to read the audit trail ({status})",
            )
        bearer = {"Authorization": f"Bearer {data['token']}"}
        try:
            response, body = self.api("GET", "/api/v1/events?limit=200", None, bearer)
            text = body.decode(errors="replace")
            if response.status != 200 or args["lockout_username"] not in text or "lock" not in text:
                return (
                    FAIL,
                    f"locked out, but no lockout of {args['lockout_username']} "
                    f"in the audit trail ({response.status})",
                )
        finally:
            self.api("POST", "/api/v1/auth/logout", None, bearer)
        return PASS, f"locked after {attempts} failures, and recorded in the audit trail"

    def api_input(self, args: dict) -> tuple[str, str]:
        problems = []
        cases = [
            ("malformed JSON", b"{not json"),
            ("SQL in the username", {"username": "' OR '1'='1' --", "password": "x"}),
            ("an oversized field", {"username": "u" * 4096, "password": "x"}),
        ]
        for label, body in cases:
            response, _ = self.post_login(body)
            if not 400 <= response.status < 500:
                problems.append(f"{label}: {response.status}")
        if problems:
            return FAIL, "bad input not answered with 4xx: " + "; ".join(problems)
        return PASS, "malformed JSON, SQL in a field and an oversized field all answered 4xx"


class ProbeError(Exception):
    """The probe could not be run; its reason is the result."""


def applies(groups: list[str], wanted: list[str]) -> bool:
    return bool(set(groups) & set(wanted))


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "checklist": {"type": "list", "elements": "dict", "required": True},
            "targets": {"type": "list", "elements": "dict", "required": True},
            "cadata": {"type": "str", "required": True},
            "timeout": {"type": "float", "default": 5},
            "where": {"type": "str", "default": "probe", "choices": ["probe", "outsider"]},
        },
        supports_check_mode=True,
    )
    results = []
    for target in module.params["targets"]:
        probe = Probe(target, module.params["cadata"], module.params["timeout"])
        for item in module.params["checklist"]:
            if not applies(target["groups"], item["applies_to"]):
                continue
            for index, check in enumerate(item.get("checks", []), start=1):
                if check.get("where") != module.params["where"] or not applies(
                    target["groups"], check.get("groups", item["applies_to"])
                ):
                    continue
                if check["type"] not in PROBES:
                    module.fail_json(
                        msg=f"{item['id']} check {index}: unknown probe {check['type']}"
                    )
                started = time.monotonic()
                try:
                    status, reason = getattr(probe, check["type"])(check.get("args", {}))
                except (ProbeError, OSError, ValueError, KeyError) as error:
                    status, reason = FAIL, f"could not probe: {error}"
                results.append(
                    {
                        "host": target["name"],
                        "item": item["id"],
                        "check": f"{item['id']}.{index}",
                        "name": check["name"],
                        "status": status,
                        "reason": reason,
                        "seconds": round(time.monotonic() - started, 2),
                    }
                )
    module.exit_json(changed=False, results=results)


if __name__ == "__main__":
    main()
