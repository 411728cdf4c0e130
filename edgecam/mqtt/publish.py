"""MQTT publisher: events through an on-disk outbox (QoS 1), states, snapshots, stats, commands, HA discovery.

Delivery of events, step by step:

1. ``publish_event`` writes the event to the SQLite outbox (``<state_dir>/outbox.sqlite3``) and returns; the
   row survives broker outages, SIGKILL and power loss.
2. A pump thread hands the oldest rows to paho, at most ``max_inflight`` awaiting PUBACK at once, and only
   while connected. paho re-sends what is unacknowledged after a reconnect, in order; rows handed over on an
   earlier connection must be acknowledged before newer rows go out, so order per camera is kept.
3. paho's ``on_publish`` (PUBACK) queues the mid; the pump thread deletes the row. A row is removed only
   when its PUBACK arrives (or the broker rejects it with an MQTT 5 failure code: counted, logged).
4. On restart every row left on disk is sent again: delivery is at least once and subscribers dedupe by
   event ``id``.

States, snapshot and discovery are "latest wins": kept in memory, published retained, and published again
after every reconnect. Nothing here blocks on the broker: ``start()`` returns at once (``connect_async``).

The parts, each testable without a broker: ``client`` builds the paho client (credentials, TLS, last will,
backoff), ``retained`` keeps the latest-wins messages and the people announced to Home Assistant,
``routing`` validates incoming commands and hands them on, ``outbox`` holds events until their PUBACK.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from edgecam.mqtt.client import PublisherError, connect_options, make_client, set_nodelay
from edgecam.mqtt.config import MqttConfig, install_secret_filter, mask_secrets
from edgecam.mqtt.outbox import Outbox, OutboxSender, Row
from edgecam.mqtt.retained import REMOVAL_KEEP_S, AnnouncedPeople, RetainedCache
from edgecam.mqtt.routing import CommandCallback, CommandRouter
from edgecam.mqtt.topics import Topics, check_name, device_id, discovery_config

__all__ = ["REMOVAL_KEEP_S", "CommandCallback", "MqttConfig", "Publisher", "PublisherError"]

logger = logging.getLogger(__name__)
_paho_logger = logging.getLogger(f"{__name__}.paho")

OUTBOX_FILE = "outbox.sqlite3"
_DROP_LOG_EVERY_S = 10.0


class Publisher:
    """Publishes one camera's events, states, snapshots and stats to an MQTT broker.

    Args:
        cfg: Broker and topic settings.
        camera: Camera name (one topic level).
        state_dir: Folder for the outbox database.
    """

    def __init__(self, cfg: MqttConfig, camera: str, state_dir: Path) -> None:
        self.cfg = cfg
        self.camera = camera
        self.topics = Topics(cfg.prefix, camera, cfg.availability_per_camera)
        self.state_dir = Path(state_dir)
        self._outbox: Outbox | None = None
        self._sender: OutboxSender | None = None
        self._client: mqtt.Client | None = None
        self._pump: threading.Thread | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._retained = RetainedCache()  # latest-wins messages, re-sent on connect
        self._announced = AnnouncedPeople(self.state_dir / f"ha-{device_id(camera, cfg.prefix)}.json")
        self._router = CommandRouter(self.topics, cfg.allow_enroll, f"{cfg.discovery_prefix}/status",
                                     self._on_ha_status_online, self.publish_state, cfg.allow_visitors)
        self._last_error: str | None = None
        self._paho_error: str | None = None
        self._refused = False
        self._ever_connected = False
        self._queued_at_stop = 0
        self._drops_logged_at = 0.0
        self._drops_unlogged = 0
        self._state = "new"  # new -> started -> stopped

    # ------------------------------------------------------------------------------------------------------------
    # lifecycle

    def start(self) -> None:
        """Open the outbox, start paho's network thread and the pump; returns without waiting for the broker.

        Raises:
            PublisherError: The password or TLS files cannot be used, or the outbox cannot be opened.
        """
        if self._state != "new":
            raise RuntimeError(f"Publisher.start() called twice (state {self._state})")
        install_secret_filter()
        self._outbox = Outbox(
            self.state_dir / OUTBOX_FILE, self.camera, self.cfg.outbox_max_rows, fsync=self.cfg.outbox_fsync
        )
        self._sender = OutboxSender(self._outbox, self.cfg.max_inflight, self._publish_row, self._on_reject)
        self._client = self._make_client()
        self._client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive,
                                   **connect_options(self.cfg))
        self._client.loop_start()
        self._pump = threading.Thread(target=self._pump_loop, name=f"edgecam-outbox-{self.camera}", daemon=True)
        self._pump.start()
        self._state = "started"
        logger.info(
            "MQTT: publishing camera %s to %s (%d events queued on disk)",
            self.camera,
            self.cfg.broker_label(),
            self._outbox.count(),
        )

    def stop(self) -> None:
        """Flush the outbox (up to ``flush_timeout_s``), publish ``offline``, disconnect. Safe to call twice.

        Events still queued stay on disk and are sent by the next start.
        """
        if self._state != "started":
            return
        self._state = "stopped"
        assert self._client is not None and self._sender is not None and self._pump is not None
        self._wait_flushed(self.cfg.flush_timeout_s)
        self._stop.set()
        self._wake.set()
        self._pump.join(timeout=10)
        if self._sender.is_connected:
            self._publish_and_wait(self.topics.availability, b"offline", retain=True, timeout=2.0)
        self._client.disconnect()
        self._client.loop_stop()
        self._sender.handle_acks()
        queued = self._queued_at_stop = self._sender.outbox.count()
        self._sender.outbox.close()
        lat = self.status()["latency_ms"]
        logger.info(
            "MQTT: stopped; %d events delivered this run (frame to PUBACK p50 %s ms, p99 %s ms), "
            "%d queued on disk for the next start",
            self._sender.delivered,
            lat["p50"],
            lat["p99"],
            queued,
        )

    def _wait_flushed(self, timeout: float) -> None:
        """Wait while connected until the outbox is empty and nothing is in flight, at most ``timeout`` s."""
        assert self._sender is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._sender.is_connected:
            if self._sender.idle():
                return
            self._wake.set()
            time.sleep(0.02)

    def _publish_and_wait(self, topic: str, payload: bytes, retain: bool, timeout: float) -> None:
        """Publish with QoS 1 and wait for the PUBACK (bounded); failures are logged, not raised."""
        assert self._client is not None
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        try:
            info.wait_for_publish(timeout=timeout)
        except (RuntimeError, ValueError) as exc:
            logger.warning("MQTT: %s not published: %s", topic, exc)

    def _make_client(self) -> mqtt.Client:
        """The paho client (``client.make_client``) with our callbacks."""
        client = make_client(self.cfg, self.camera, self.topics.availability)
        client.on_log = self._on_log
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    # ------------------------------------------------------------------------------------------------------------
    # public API

    def publish_event(self, event: dict[str, Any], frame_time: float | None = None) -> int:
        """Queue one event on disk for delivery with QoS ``cfg.qos`` to ``<prefix>/<camera>/events``.

        Args:
            event: JSON-serialisable dict with an ``id`` (numpy scalars and arrays are converted).
            frame_time: ``time.monotonic()`` when the frame that produced the event arrived; the delay from it
                to the PUBACK is the latency in ``status()``. Defaults to now.

        Returns:
            The outbox sequence number of the event.

        Raises:
            ValueError: ``event`` is not a dict with an ``id`` or not JSON-serialisable.
            RuntimeError: The publisher is not started.
        """
        if not isinstance(event, dict) or "id" not in event:
            raise ValueError(f"event must be a dict with an 'id', got {type(event).__name__}")
        if self._state != "started" or self._sender is None:
            raise RuntimeError(f"publish_event on a publisher that is {self._state}")
        t0 = time.monotonic() if frame_time is None else frame_time
        seq, dropped = self._sender.put(self.topics.events, _to_json(event), self.cfg.qos, t0)
        if dropped:
            self._note_drops(dropped)
        self._wake.set()
        return seq

    def publish_snapshot(self, jpeg: bytes) -> None:
        """Publish a JPEG (the best crop) retained to ``<prefix>/<camera>/snapshot``.

        Raises:
            ValueError: ``jpeg`` does not start with the JPEG magic bytes.
        """
        if not isinstance(jpeg, bytes | bytearray) or bytes(jpeg[:3]) != b"\xff\xd8\xff":
            raise ValueError("snapshot must be JPEG bytes (FF D8 FF ...)")
        self._publish_latest(self.topics.snapshot, bytes(jpeg), qos=0)

    def publish_state(self, name: str, value: bool | int | float | str) -> None:
        """Publish a retained state to ``<prefix>/<camera>/<name>`` when it changed (bool -> ON/OFF).

        Args:
            name: ``face`` (faces in view), ``detection``, or an enrolled person's name.
            value: The state; booleans become ``ON``/``OFF``.

        Raises:
            ValueError: ``name`` is not one topic level or is reserved.
            TypeError: ``value`` is not a bool, number or string.
        """
        topic = self.topics.state(name)
        if isinstance(value, bool | np.bool_):
            text = "ON" if value else "OFF"
        elif isinstance(value, int | float | str | np.integer | np.floating):
            text = str(value)
        else:
            raise TypeError(f"state {name!r}: value of type {type(value).__name__} (want bool, number or str)")
        self._publish_latest(topic, text.encode("utf-8"), qos=1)

    def publish_stats(self, stats: dict[str, Any]) -> None:
        """Publish stats JSON (plus this publisher's ``status()`` under ``mqtt``) to ``<prefix>/<camera>/stats``.

        Not queued: skipped while the broker is away.
        """
        if not self._is_connected() or self._client is None:
            return
        self._client.publish(self.topics.stats, _to_json({**stats, "mqtt": self.status()}), qos=0)

    def publish_discovery(self, people: list[str], visitors: bool = False) -> None:
        """Publish (retained) the Home Assistant discovery config with a binary_sensor per enrolled person.

        The people announced are remembered in the state dir (``ha-<device id>.json``), so people removed from
        the gallery, in this run or while the daemon was down, are sent in HA's removal form for
        ``REMOVAL_KEEP_S`` and their retained ON/OFF topics are cleared. No-op when ``cfg.discovery`` is off. A
        person without a published state starts as ``OFF``. ``visitors``: announce the visitor entities too.

        Raises:
            ValueError: A name that is not one topic level or is reserved.
        """
        if not self.cfg.discovery:
            return
        people = [check_name(p, "person name") for p in dict.fromkeys(people)]
        removed = self._announced.update(people, time.time())
        config = discovery_config(self.topics, people, removed, qos=self.cfg.qos, visitors=visitors)
        self._publish_latest(self.discovery_topic, _to_json(config), qos=1)
        for person in removed:
            self._clear_state(person)
        for person in people:
            if not self._retained.get(self.topics.state(person)):
                self.publish_state(person, False)

    @property
    def discovery_topic(self) -> str:
        """``<discovery_prefix>/device/<device id>/config`` of this camera."""
        return f"{self.cfg.discovery_prefix}/device/{device_id(self.camera, self.cfg.prefix)}/config"

    def _clear_state(self, person: str) -> None:
        """Delete a removed person's retained ON/OFF message (an empty retained payload; again on reconnect)."""
        try:
            topic = self.topics.state(person)
        except ValueError:  # a name that became reserved: nothing of ours was retained under it
            return
        self._publish_latest(topic, b"", qos=1)

    def publish_recognition(self, payload: dict[str, Any], frame_time: float | None = None) -> None:
        """Queue a recognition (``{"event_type": "recognized" | "unknown", ...}``) for ``<base>/recognized``.

        Through the outbox like events (QoS ``cfg.qos``, never retained: HA's event entities ignore retained
        messages); a ``recognized`` one is also the retained ``<base>/last_recognized`` (latest wins).
        """
        if self._state != "started" or self._sender is None:
            raise RuntimeError(f"publish_recognition on a publisher that is {self._state}")
        t0 = time.monotonic() if frame_time is None else frame_time
        _, dropped = self._sender.put(self.topics.recognized, _to_json(payload), self.cfg.qos, t0)
        if dropped:
            self._note_drops(dropped)
        if payload.get("event_type") == "recognized":
            self._publish_latest(self.topics.last_recognized, _to_json(payload), qos=1)
        self._wake.set()

    def publish_visitor(self, payload: dict[str, Any], crop: bytes | None = None,
                        frame_time: float | None = None) -> None:
        """Queue a visitor message (``{"event_type": "new_visitor" | "visitor_again", ...}``) for ``<base>/visitor``
        through the outbox like events (never retained: HA's event entities ignore retained messages), and the
        visitor's best crop, retained, on ``<base>/visitor/image`` (latest wins)."""
        if self._state != "started" or self._sender is None:
            raise RuntimeError(f"publish_visitor on a publisher that is {self._state}")
        t0 = time.monotonic() if frame_time is None else frame_time
        _, dropped = self._sender.put(self.topics.visitor, _to_json(payload), self.cfg.qos, t0)
        if dropped:
            self._note_drops(dropped)
        if crop is not None:
            self._publish_latest(self.topics.visitor_image, bytes(crop), qos=0)
        self._wake.set()

    def on_command(self, callback: CommandCallback) -> None:
        """Call ``callback(command, payload)`` for every valid command (from paho's network thread: be quick).

        ``command`` is ``detection`` (payload ``b"ON"``/``b"OFF"``), ``snapshot`` (``b""``), ``enroll``
        (the person name, only when ``mqtt.allow_enroll``) or ``visitor`` (JSON, only when
        ``mqtt.allow_visitors``). Invalid commands are logged and never reach it.
        After a detection command the new state is echoed to ``<prefix>/<camera>/detection``.
        """
        self._router.callbacks.append(callback)

    def latency_samples(self) -> list[float]:
        """Seconds from each recent event's frame (or ``publish_event``) to its PUBACK, oldest first."""
        sender = self._sender
        return list(sender.latencies) if sender is not None else []

    def status(self) -> dict[str, Any]:
        """Connection and delivery figures: connected, queued, inflight, delivered, dropped, latency, ..."""
        queued = dropped = 0
        sender = self._sender
        if sender is not None and self._state == "started":
            queued, dropped = sender.outbox.count(), sender.outbox.dropped()
        elif self._state == "stopped":
            queued = self._queued_at_stop  # left on disk for the next start
        lat = np.array(sender.latencies if sender else [], dtype=np.float64) * 1000.0
        return {
            "connected": self._is_connected(),
            "ever_connected": self._ever_connected,
            "broker": self.cfg.broker_label(),
            "queued": queued,
            "inflight": sender.inflight if sender else 0,
            "dropped": dropped,
            "delivered": sender.delivered if sender else 0,
            "rejected": sender.rejected if sender else 0,
            **self._router.counts,
            "last_error": self._last_error,
            "latency_ms": {
                "n": int(lat.size),
                "p50": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
                "p99": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
            },
        }

    # ------------------------------------------------------------------------------------------------------------
    # paho callbacks (network thread): short, never block on a lock held while calling paho

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any) -> None:
        if reason.is_failure:
            self._refused = True  # the disconnect that follows says nothing new
            self._note_error(f"broker {self.cfg.broker_label()} refused the connection: {reason}")
            return
        assert self._sender is not None
        self._last_error = self._paho_error = None
        self._ever_connected = True
        set_nodelay(client)
        logger.info("MQTT: connected to %s", self.cfg.broker_label())
        client.publish(self.topics.availability, b"online", qos=1, retain=True)
        with self._retained.lock:  # states set meanwhile go out after these, never before (no stale retained value)
            self._sender.connected()
            self._retained.republish(self._send_retained)
        client.subscribe(self.topics.commands, qos=1)
        if self.cfg.discovery:
            client.subscribe(f"{self.cfg.discovery_prefix}/status", qos=1)
        self._wake.set()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        exc = sys.exc_info()[1]  # paho calls this from inside its `except OSError` block
        self._note_error(f"cannot connect to {self.cfg.broker_label()}: {exc or 'connection failed'}")

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        assert self._sender is not None
        was_connected = self._sender.is_connected
        self._sender.disconnected()
        self._wake.set()
        if self._state != "started":
            return
        if was_connected:
            logger.warning(
                "MQTT: disconnected from %s (%s); events queue on disk until it is back",
                self.cfg.broker_label(),
                reason,
            )
        elif not self._refused:  # closed before a CONNACK, e.g. TLS: the broker wants a client certificate
            self._note_error(f"connection to {self.cfg.broker_label()} failed: {self._paho_error or reason}")
        self._refused = False

    def _on_log(self, client: mqtt.Client, userdata: Any, level: int, message: str) -> None:
        """paho's own messages at DEBUG (they repeat on every retry); the last error explains a failed connect."""
        if level == mqtt.MQTT_LOG_ERR:
            self._paho_error = message
        _paho_logger.debug("%s", message)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Any) -> None:
        assert self._sender is not None
        self._sender.ack(mid, str(reason) if reason.is_failure else None, time.monotonic())
        self._wake.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            topic: str | None = msg.topic
        except UnicodeDecodeError:
            topic = None
        self._router.route(topic, bytes(msg.payload))

    def _on_ha_status_online(self) -> None:
        """Home Assistant came (back) online: send discovery and states again."""
        if self._client is None:
            return
        with self._retained.lock:
            self._retained.republish(self._send_retained)

    # ------------------------------------------------------------------------------------------------------------
    # the outbox pump (its own thread)

    def _pump_loop(self) -> None:
        """Move PUBACKs into outbox deletes and hand new rows to paho, until stopped."""
        assert self._sender is not None
        while not self._stop.is_set():
            self._wake.wait(timeout=0.5)
            self._wake.clear()
            try:
                self._sender.step()
            except Exception:
                logger.exception("MQTT: outbox pump error; retrying")
                self._stop.wait(1.0)

    def _publish_row(self, row: Row) -> tuple[int, bool | None]:
        """Hand one outbox row to paho (``OutboxSender``'s ``publish``)."""
        assert self._client is not None
        info = self._client.publish(row.topic, row.payload, qos=row.qos)
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            return 0, None
        return info.mid, info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def _on_reject(self, seq: int, reason: str) -> None:
        """One ERROR while the broker keeps refusing events for the same reason (an ACL), each row at DEBUG."""
        logger.debug("MQTT: broker rejected event row %d: %s", seq, reason)
        self._note_error(f"broker rejects events on {self.topics.events}: {reason} (rejected events are dropped, "
                         "counted as 'rejected' in the stats)")

    # ------------------------------------------------------------------------------------------------------------
    # helpers

    def _publish_latest(self, topic: str, payload: bytes, qos: int) -> None:
        """Remember a retained latest-wins message and publish it now if connected and changed."""
        self._retained.put(topic, payload, qos, self._send_if_connected)

    def _send_retained(self, topic: str, payload: bytes, qos: int) -> None:
        if self._client is not None:
            self._client.publish(topic, payload, qos=qos, retain=True)

    def _send_if_connected(self, topic: str, payload: bytes, qos: int) -> None:
        """Called with the cache's lock held: a connect that is re-sending everything finishes first."""
        if self._is_connected():
            self._send_retained(topic, payload, qos)

    def _is_connected(self) -> bool:
        return self._sender is not None and self._sender.is_connected

    def _note_error(self, message: str) -> None:
        """Log a connection/delivery problem once (ERROR), repeats at DEBUG; kept for ``status()``."""
        message = mask_secrets(message)
        if message != self._last_error:
            logger.error("MQTT: %s", message)
        else:
            logger.debug("MQTT: %s", message)
        self._last_error = message

    def _note_drops(self, n: int) -> None:
        """Count events dropped for room and log them, at most every few seconds."""
        self._drops_unlogged += n
        now = time.monotonic()
        if now - self._drops_logged_at >= _DROP_LOG_EVERY_S:
            assert self._outbox is not None
            logger.warning(
                "MQTT: outbox full (%d rows): dropped %d oldest events (%d in total)",
                self.cfg.outbox_max_rows,
                self._drops_unlogged,
                self._outbox.dropped(),
            )
            self._drops_logged_at, self._drops_unlogged = now, 0


def _json_default(obj: Any) -> Any:
    """numpy scalars and arrays as Python values."""
    if isinstance(obj, np.generic | np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _to_json(obj: Any) -> bytes:
    """Compact JSON bytes; raises ValueError for what JSON cannot hold."""
    try:
        return json.dumps(obj, default=_json_default, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not JSON-serialisable: {exc}") from None
