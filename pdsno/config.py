"""Controller settings: a YAML file, overridden by PDSNO_* environment variables.

pdsno controller run --config /etc/pdsno/controller.yaml
PDSNO_DB_URL=postgresql+psycopg2://... overrides db_url, and so on.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from pdsno.credentials import apply_credentials
from pdsno.errors import ConfigurationError


class ControllerType(StrEnum):
    GLOBAL = "global"
    REGIONAL = "regional"
    LOCAL = "local"

    @property
    def parent_type(self) -> ControllerType | None:
        return {
            "global": None,
            "regional": ControllerType.GLOBAL,
            "local": ControllerType.REGIONAL,
        }[self.value]


class Section(BaseModel):
    """A nested group of settings; the environment reaches it through Settings
    (PDSNO_MQTT__PORT), never through unprefixed variables."""

    model_config = ConfigDict(extra="forbid")


class MqttSettings(Section):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=8883, ge=1, le=65535)
    keepalive_seconds: int = Field(default=30, ge=5)
    reconnect_min_seconds: float = Field(default=0.5, gt=0)
    reconnect_max_seconds: float = Field(default=30.0, gt=0)
    publish_timeout_seconds: float = Field(default=10.0, gt=0)
    # QoS 1 messages the publisher's paho client keeps on the wire without
    # their PUBACK (paho's default is 20); the outbox publisher hands paho
    # max(this, 2 x its batch) rows before it waits for PUBACKs. Not the
    # broker's mosquitto_max_inflight_messages, which bounds what Mosquitto
    # sends each subscriber (docs/performance.md, "Events").
    max_inflight_messages: int = Field(default=100, ge=1, le=65535)


class ApprovalSettings(Section):
    rules_file: Path | None = None
    proposal_ttl_seconds: int = Field(default=3600, ge=60)
    execution_token_ttl_seconds: int = Field(default=600, ge=30)
    auto_approve_low: bool = True
    auto_approve_medium: bool = False
    # Separation of duties: whoever submitted a MEDIUM or HIGH change may not
    # approve it (refusals are audited as proposal.decision_refused).
    separation_of_duties: bool = True
    executor: str = "nib-recorder"


class TlsSettings(Section):
    """HTTPS for the API, mutual TLS between controllers, TLS to the broker.

    See docs/tls.md. SIGHUP reloads the files without refusing a connection.
    """

    enabled: bool = True
    # This controller's certificate (chain) and key: served by both listeners
    # and presented to other controllers (extendedKeyUsage serverAuth, clientAuth).
    cert_file: Path = Path("/etc/pdsno/certs/controller.crt")
    key_file: Path = Path("/etc/pdsno/certs/controller.key")
    # The PDSNO CA bundle: verifies peers, their client certificates, the broker.
    ca_file: Path = Path("/etc/pdsno/certs/ca.crt")
    # The client certificate for the MQTT broker (clientAuth); none: cert_file
    # and key_file. The pdsno_ca role issues controller-mqtt.crt for it.
    mqtt_cert_file: Path | None = None
    mqtt_key_file: Path | None = None
    # The operator API may require client certificates too; the peer
    # listener (inter-controller endpoints) always does.
    require_client_cert_api: bool = False
    # Plain HTTP only when TLS is off and this is set: for development.
    allow_insecure_http: bool = False

    @model_validator(mode="after")
    def _mqtt_pair(self) -> TlsSettings:
        if (self.mqtt_cert_file is None) != (self.mqtt_key_file is None):
            raise ValueError("set both tls.mqtt_cert_file and tls.mqtt_key_file, or neither")
        return self

    @property
    def mqtt_cert_pair(self) -> tuple[Path, Path]:
        """The certificate and key the MQTT client presents."""
        if self.mqtt_cert_file is not None and self.mqtt_key_file is not None:
            return self.mqtt_cert_file, self.mqtt_key_file
        return self.cert_file, self.key_file


class AuthSettings(Section):
    session_ttl_seconds: int = Field(default=8 * 3600, ge=60, le=8 * 3600)
    lockout_threshold: int = Field(default=5, ge=1, le=100)
    lockout_seconds: int = Field(default=900, ge=1)
    # A verified API key or session is trusted this long without asking the
    # NIB again: a revocation reaches every controller within this time.
    cache_seconds: float = Field(default=2.0, ge=0, le=30)


class LimitsSettings(Section):
    """Rate limits, load caps and uvicorn's own limits."""

    # Off only to measure its cost (bench/) or behind a proxy that limits.
    rate_limit_enabled: bool = True
    rate_per_second: float = Field(default=20.0, gt=0)
    burst: int = Field(default=40, ge=1)
    login_rate_per_second: float = Field(default=0.2, gt=0)
    login_burst: int = Field(default=5, ge=1)
    max_tracked_clients: int = Field(default=10_000, ge=100)
    trusted_proxies: list[str] = []
    max_concurrent_requests: int = Field(default=256, ge=1)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    backlog: int = Field(default=2048, ge=16)
    timeout_keep_alive_seconds: int = Field(default=5, ge=1)
    max_header_bytes: int = Field(default=16_384, ge=1024)


class HttpSettings(Section):
    cors_allow_origins: list[str] = []
    docs_enabled: bool = False


class MetricsSettings(Section):
    enabled: bool = True
    listen_host: str = "127.0.0.1"
    port: int = Field(default=9090, ge=1, le=65535)


class LoggingSettings(Section):
    # A dictConfig YAML such as the shipped pdsno/data/logging.yaml; none
    # means JSON logs to the console at `level`.
    config_file: Path | None = None
    level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")


class SecretsSettings(Section):
    rotation_days: int = Field(default=90, ge=1, le=3650)


class Settings(BaseSettings):
    """Everything a controller process needs; see docs/controller.md."""

    model_config = SettingsConfigDict(
        env_prefix="PDSNO_", env_nested_delimiter="__", extra="forbid"
    )

    controller_type: ControllerType = Field(alias="type", default=ControllerType.GLOBAL)
    name: str = Field(default="pdsno", min_length=1, max_length=128)
    region: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    db_url: str = "sqlite:///pdsno.db"
    key_file: Path = Path("/etc/pdsno/controller.key")
    state_dir: Path = Path("/var/lib/pdsno")
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=8001, ge=1, le=65535)
    # Inter-controller endpoints (joining, signed messages) listen apart,
    # always with mutual TLS, so that a firewall can admit only controllers.
    peer_listen_port: int = Field(default=8002, ge=1, le=65535)
    advertise_url: str | None = None
    parent_url: str | None = None
    bootstrap_token: SecretStr | None = None
    message_window_seconds: int = Field(default=60, ge=5, le=600)
    http_timeout_seconds: float = Field(default=10.0, gt=0)
    mqtt: MqttSettings = MqttSettings()
    approval: ApprovalSettings = ApprovalSettings()
    tls: TlsSettings = TlsSettings()
    auth: AuthSettings = AuthSettings()
    limits: LimitsSettings = LimitsSettings()
    http: HttpSettings = HttpSettings()
    metrics: MetricsSettings = MetricsSettings()
    logging: LoggingSettings = LoggingSettings()
    secrets: SecretsSettings = SecretsSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file (passed as init values).
        return env_settings, init_settings

    @model_validator(mode="after")
    def _check_listeners(self) -> Settings:
        if self.listen_port == self.peer_listen_port:
            raise ValueError("listen_port and peer_listen_port must differ")
        if self.tls.enabled and self.advertise_url and not self.advertise_url.startswith("https:"):
            raise ValueError("advertise_url must be https:// while TLS is on")
        if not self.tls.enabled and not self.tls.allow_insecure_http:
            raise ValueError(
                "TLS is off: set tls.enabled true (with cert_file, key_file, ca_file), or "
                "tls.allow_insecure_http true for development only"
            )
        return self

    @model_validator(mode="after")
    def _check_hierarchy(self) -> Settings:
        if self.controller_type is ControllerType.GLOBAL:
            if self.parent_url:
                raise ValueError("a global controller has no parent: remove parent_url")
        else:
            if not self.region:
                raise ValueError(f"a {self.controller_type} controller needs region")
            if not self.parent_url:
                raise ValueError(
                    f"a {self.controller_type} controller needs parent_url, the URL of its "
                    f"{self.controller_type.parent_type} controller"
                )
        return self

    @property
    def public_url(self) -> str:
        """Where other controllers reach this one: its peer listener."""
        scheme = "https" if self.tls.enabled else "http"
        return self.advertise_url or f"{scheme}://{self.listen_host}:{self.peer_listen_port}"

    @property
    def identity_file(self) -> Path:
        return self.state_dir / "identity.json"


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Settings from `path` (YAML), the environment and `overrides`, or a clear error."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigurationError(f"No configuration file at {path}") from None
        except yaml.YAMLError as error:
            raise ConfigurationError(f"{path} is not valid YAML: {error}") from None
        if not isinstance(loaded, dict):
            raise ConfigurationError(f"{path} must hold a mapping of settings")
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        settings = Settings(**values)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}"
            for e in error.errors()
        )
        raise ConfigurationError(f"Invalid controller settings: {problems}") from None
    # Secrets come last, from systemd credentials: never from the file or the environment.
    apply_credentials(settings)
    return settings
