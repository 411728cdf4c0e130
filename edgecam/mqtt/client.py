"""paho client setup: credentials, TLS, last will, reconnect backoff, queue limits; no callbacks, no state.

``Publisher`` attaches its callbacks to what ``make_client`` returns; everything here is testable without a
broker (a paho client is built without connecting).
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgecam import EdgecamError
from edgecam.mqtt.config import MqttConfig, MqttSecretError
from edgecam.mqtt.topics import client_id

logger = logging.getLogger(__name__)

EXTRA_INFLIGHT = 100
"""paho's in-flight window beyond ``max_inflight`` events: room for states, snapshots and discovery."""


class PublisherError(EdgecamError):
    """The publisher cannot start (TLS files, password, outbox); the message names the cause."""


def make_client(cfg: MqttConfig, camera: str, will_topic: str) -> mqtt.Client:
    """A paho v2 client for ``camera``: credentials, TLS, last will ``offline`` (retained) on ``will_topic``,
    backoff between reconnects, paho's own queue off (the outbox holds what is pending).

    Raises:
        PublisherError: The password or the TLS files cannot be used.
    """
    v5 = cfg.protocol == "5"
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=cfg.client_id or client_id(camera, cfg.prefix),
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        clean_session=None if v5 else True,
    )
    set_credentials(client, cfg)
    set_tls(client, cfg)
    client.will_set(will_topic, b"offline", qos=1, retain=True)
    client.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)  # type: ignore[arg-type]
    client.max_inflight_messages_set(cfg.max_inflight + EXTRA_INFLIGHT)
    client.max_queued_messages_set(0)
    return client


def connect_options(cfg: MqttConfig) -> dict[str, Any]:
    """Connect options for a clean session (the outbox, not the broker, holds what is pending)."""
    return {"clean_start": True} if cfg.protocol == "5" else {}


def set_credentials(client: mqtt.Client, cfg: MqttConfig) -> None:
    """Username and password (from the environment or ``password_file``; never from a URL in the logs)."""
    try:
        password = cfg.resolve_password()
    except MqttSecretError as exc:
        raise PublisherError(str(exc)) from None
    if cfg.username:
        client.username_pw_set(cfg.username, password)
    elif password:
        logger.warning("MQTT: a password is set but mqtt.username is not; the password is not used")


def set_tls(client: mqtt.Client, cfg: MqttConfig) -> None:
    """CA, client certificate and key from ``cfg.tls`` (nothing when it is unset)."""
    tls = cfg.tls
    if tls is None:
        return
    try:
        client.tls_set(
            ca_certs=str(tls.ca) if tls.ca else None,
            certfile=str(tls.cert) if tls.cert else None,
            keyfile=str(tls.key) if tls.key else None,
        )
    except (OSError, ValueError) as exc:
        raise PublisherError(f"mqtt.tls: cannot load CA/certificate/key ({tls.ca}, {tls.cert}): {exc}") from None
    client.tls_insecure_set(tls.insecure)


def set_nodelay(client: mqtt.Client) -> None:
    """Send small packets at once (no Nagle delay): events are small and latency matters."""
    sock: Any = client.socket()
    try:
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass
