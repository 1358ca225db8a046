"""Controller settings: a YAML file, overridden by PDSNO_* environment variables.

pdsno controller run --config /etc/pdsno/controller.yaml
PDSNO_DB_URL=postgresql+psycopg2://... overrides db_url, and so on.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

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


class MqttSettings(BaseSettings):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=8883, ge=1, le=65535)
    keepalive_seconds: int = Field(default=30, ge=5)
    reconnect_min_seconds: float = Field(default=0.5, gt=0)
    reconnect_max_seconds: float = Field(default=30.0, gt=0)
    publish_timeout_seconds: float = Field(default=10.0, gt=0)


class ApprovalSettings(BaseSettings):
    rules_file: Path | None = None
    proposal_ttl_seconds: int = Field(default=3600, ge=60)
    execution_token_ttl_seconds: int = Field(default=600, ge=30)
    auto_approve_low: bool = True
    auto_approve_medium: bool = False
    executor: str = "nib-recorder"


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
    advertise_url: str | None = None
    parent_url: str | None = None
    bootstrap_token: SecretStr | None = None
    message_window_seconds: int = Field(default=60, ge=5, le=600)
    http_timeout_seconds: float = Field(default=10.0, gt=0)
    mqtt: MqttSettings = MqttSettings()
    approval: ApprovalSettings = ApprovalSettings()

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
        return self.advertise_url or f"http://{self.listen_host}:{self.listen_port}"

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
        return Settings(**values)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}"
            for e in error.errors()
        )
        raise ConfigurationError(f"Invalid controller settings: {problems}") from None
