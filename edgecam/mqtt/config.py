"""The ``mqtt:`` section of the config, ``--mqtt`` URLs, and keeping credentials out of logs.

The password is never part of the config file or the URL: it comes from an environment variable
(``password_env``, default ``EDGECAM_MQTT_PASSWORD``) or a file (``password_file``, e.g. a systemd
credential under ``$CREDENTIALS_DIRECTORY``). ``SecretFilter`` masks credentials in any URL and any
registered secret in log records; ``install_secret_filter()`` puts it on the root handlers.
"""

from __future__ import annotations

import logging
import os
import re
import urllib.parse
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from edgecam import EdgecamError

logger = logging.getLogger(__name__)

DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883
PASSWORD_ENV = "EDGECAM_MQTT_PASSWORD"  # noqa: S105 - the variable name, not a password
_TOPIC_BAD = re.compile(r"[#+\x00]")


class MqttUrlError(EdgecamError):
    """A ``--mqtt`` URL that cannot be used (the message shows the URL with credentials masked)."""


class MqttSecretError(EdgecamError):
    """The broker password cannot be read (names the variable or file, never the value)."""


def _existing_file(value: Path | None, info: ValidationInfo) -> Path | None:
    """Expand ``$VARS`` and ``~``, resolve against the config file's folder, check the file exists.

    The folder comes from the validation context (``{"base": folder}``), as for the rest of the config.
    """
    if value is None:
        return None
    path = Path(os.path.expanduser(os.path.expandvars(str(value))))
    base = (info.context or {}).get("base")
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    if not path.is_file():
        raise ValueError(f"file not found: {path}")
    return path


class TlsConfig(BaseModel):
    """TLS to the broker: verify the server against ``ca`` (or the system CAs), optionally present a client cert."""

    model_config = ConfigDict(extra="forbid")

    ca: Path | None = Field(None, description="CA bundle (PEM) that signed the broker certificate; default: system CAs")
    cert: Path | None = Field(None, description="Client certificate (PEM), for brokers that require one; needs `key`")
    key: Path | None = Field(None, description="Private key (PEM) of the client certificate; needs `cert`")
    insecure: bool = Field(False, description="Skip the broker hostname check (testing only; chain still verified)")

    @field_validator("ca", "cert", "key")
    @classmethod
    def _files_exist(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return _existing_file(v, info)

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TlsConfig:
        if (self.cert is None) != (self.key is None):
            given, missing = ("cert", "key") if self.cert is not None else ("key", "cert")
            raise ValueError(f"tls.{given} is set but tls.{missing} is not: a client certificate needs both")
        return self


class MqttConfig(BaseModel):
    """Broker connection, topics and delivery settings (the ``mqtt:`` section of the YAML config)."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(..., min_length=1, max_length=253, description="Broker host name or IP address")
    port: int = Field(DEFAULT_PORT, ge=1, le=65535, description="Broker port (default 1883, or 8883 with tls)")
    username: str | None = Field(None, min_length=1, max_length=256, description="User name, if the broker wants one")
    password_env: str = Field(
        PASSWORD_ENV, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Environment variable holding the password"
    )
    password_file: Path | None = Field(
        None, description="File holding the password (first line); used when the variable is unset. $VARS expand"
    )
    tls: TlsConfig | None = Field(None, description="TLS settings; absent = plain TCP")
    protocol: Literal["3.1.1", "5"] = Field("5", description="MQTT protocol version")
    prefix: str = Field("edgecam", min_length=1, max_length=100, description="Topic prefix of everything published")
    client_id: str | None = Field(
        None, min_length=1, max_length=128, description="MQTT client id (default edgecam-<camera>)"
    )
    keepalive: int = Field(30, ge=5, le=3600, description="Keepalive seconds; a dead link shows in about 1.5x this")
    qos: Literal[1, 2] = Field(1, description="QoS of events (states, availability and discovery use 1)")
    outbox_max_rows: int = Field(
        10_000, ge=10, le=10_000_000, description="Most events queued on disk per camera; oldest dropped first"
    )
    outbox_fsync: bool = Field(
        True, description="fsync each queued event: survives power loss; off: survives crashes only, faster on SD"
    )
    max_inflight: int = Field(20, ge=1, le=1000, description="Events handed to the broker awaiting PUBACK at once")
    flush_timeout_s: float = Field(5.0, ge=0, le=120, description="On stop, seconds to wait for queued events")
    availability_per_camera: bool = Field(
        False, description="Availability (last will) on <prefix>/<camera>/availability, for cameras sharing a prefix"
    )
    discovery: bool = Field(True, description="Publish Home Assistant MQTT discovery configs (retained)")
    discovery_prefix: str = Field("homeassistant", min_length=1, max_length=100, description="HA discovery prefix")
    reconnect_min_s: float = Field(1.0, ge=0.1, le=60, description="First reconnect delay; doubles per failure")
    reconnect_max_s: float = Field(60.0, ge=0.1, le=3600, description="Longest reconnect delay")
    allow_enroll: bool = Field(False, description="Accept enrollment commands over MQTT (state-changing; off)")
    allow_visitors: bool = Field(False, description="Accept visitor commands over MQTT: name a visitor (into the "
                                 "gallery) or forget one (state-changing; off)")

    @field_validator("host")
    @classmethod
    def _plain_host(cls, v: str) -> str:
        if "://" in v or any(c.isspace() for c in v) or "/" in v:
            raise ValueError(f"host {v!r} must be a bare host name or IP (use --mqtt for URLs)")
        return v

    @field_validator("prefix", "discovery_prefix")
    @classmethod
    def _topic_prefix(cls, v: str) -> str:
        if _TOPIC_BAD.search(v) or v.startswith("/") or v.endswith("/") or "//" in v:
            raise ValueError(f"topic prefix {v!r}: no wildcards (# +), no leading, trailing or double '/'")
        return v

    @field_validator("password_file")
    @classmethod
    def _password_file_exists(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return _existing_file(v, info)

    @model_validator(mode="after")
    def _cross_checks(self) -> MqttConfig:
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError(
                f"reconnect_min_s ({self.reconnect_min_s}) is larger than reconnect_max_s ({self.reconnect_max_s})"
            )
        if self.tls is not None and "port" not in self.model_fields_set:
            self.port = DEFAULT_TLS_PORT
        return self

    def resolve_password(self) -> str | None:
        """The broker password from ``password_env`` or else ``password_file``; None when neither is set.

        Raises:
            MqttSecretError: The file cannot be read (the message names the file, never a value).
        """
        value = os.environ.get(self.password_env)
        if value:
            register_secret(value)
            return value
        if self.password_file is None:
            return None
        try:
            lines = self.password_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise MqttSecretError(f"mqtt.password_file {self.password_file}: cannot read: {exc}") from exc
        value = lines[0].strip() if lines else ""
        if not value:
            raise MqttSecretError(f"mqtt.password_file {self.password_file}: empty")
        register_secret(value)
        return value

    def broker_label(self) -> str:
        """``mqtt[s]://[user@]host:port`` for logs and status (never the password)."""
        scheme = "mqtts" if self.tls is not None else "mqtt"
        user = f"{urllib.parse.quote(self.username)}@" if self.username else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{user}{host}:{self.port}"

    def with_url(self, url: str) -> MqttConfig:
        """This config with host, port, user and TLS taken from a ``--mqtt`` URL (see ``parse_mqtt_url``)."""
        return config_from_url(url, base=self)


def parse_mqtt_url(url: str) -> dict[str, Any]:
    """Split ``mqtt://[user@]host[:port]`` or ``mqtts://...`` into config fields.

    A password in the URL is refused: it would show in ``ps``, shell history and logs.

    Returns:
        ``{"host", "port", "username", "tls"}``; ``port`` defaults to 1883 (mqtt) or 8883 (mqtts); ``tls`` is
        True for ``mqtts``.

    Raises:
        MqttUrlError: Wrong scheme, no host, bad port, a password, or a path/query (URL shown masked).
    """
    shown = mask_secrets(url)
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise MqttUrlError(f"--mqtt {shown}: {exc}") from None
    if parts.scheme not in ("mqtt", "mqtts"):
        raise MqttUrlError(f"--mqtt {shown}: scheme must be mqtt:// or mqtts://, not {parts.scheme or 'none'}")
    if parts.password is not None:
        raise MqttUrlError(f"--mqtt {shown}: no password in the URL; put it in ${PASSWORD_ENV} or mqtt.password_file")
    if not parts.hostname:
        raise MqttUrlError(f"--mqtt {shown}: no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise MqttUrlError(f"--mqtt {shown}: unexpected path or query after host:port")
    tls = parts.scheme == "mqtts"
    return {
        "host": parts.hostname,
        "port": port or (DEFAULT_TLS_PORT if tls else DEFAULT_PORT),
        "username": urllib.parse.unquote(parts.username) if parts.username else None,
        "tls": tls,
    }


def config_from_url(url: str, base: MqttConfig | None = None) -> MqttConfig:
    """An ``MqttConfig`` for a ``--mqtt`` URL, keeping every other field of ``base`` (or the defaults).

    ``mqtt://`` turns TLS off; ``mqtts://`` keeps ``base.tls`` (CA, client cert) or uses the system CAs. The
    URL's user replaces ``base.username`` only when the URL names one.
    """
    fields = parse_mqtt_url(url)
    data: dict[str, Any] = base.model_dump(exclude={"host", "port", "tls"}) if base is not None else {}
    data.update(host=fields["host"], port=fields["port"])
    if fields["username"]:
        data["username"] = fields["username"]
    if fields["tls"]:
        data["tls"] = base.tls.model_dump() if base is not None and base.tls is not None else {}
    return MqttConfig.model_validate(data)


# ---------------------------------------------------------------------------------------------------------------
# Credentials never reach a log line.

_URL_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*):(?P<secret>[^@/\s]*)@")
_SECRETS: set[str] = set()
_MIN_SECRET_LEN = 3  # shorter "secrets" would mask ordinary words


def register_secret(value: str) -> None:
    """Mask this exact string in every log record passing through ``SecretFilter`` from now on."""
    if len(value) >= _MIN_SECRET_LEN:
        _SECRETS.add(value)


def mask_secrets(text: str) -> str:
    """``scheme://user:password@`` -> ``scheme://user:***@`` and every registered secret -> ``***``."""
    text = _URL_CREDENTIALS.sub(r"\g<head>:***@", text)
    for secret in _SECRETS:
        text = text.replace(secret, "***")
    return text


class SecretFilter(logging.Filter):
    """A logging filter that rewrites records so no credential in a URL or registered secret is emitted."""

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: A003 - logging API name
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True  # a malformed record is logging's problem, not a leak
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_secrets(record.stack_info)
        return True


def install_secret_filter() -> None:
    """Attach one ``SecretFilter`` to every root handler and to logging's last-resort handler (idempotent)."""
    handlers = list(logging.getLogger().handlers)
    if logging.lastResort is not None:
        handlers.append(logging.lastResort)
    for handler in handlers:
        if not any(isinstance(f, SecretFilter) for f in handler.filters):
            handler.addFilter(SecretFilter())
