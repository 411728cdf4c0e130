"""What edgecam publishes where: topic names, command payload validation, Home Assistant discovery.

Topics (``<prefix>`` default ``edgecam``)::

    <prefix>/availability              online | offline       retained, last will
                                                              (<prefix>/<camera>/availability with
                                                              mqtt.availability_per_camera)
    <prefix>/<camera>/events           event JSON             QoS 1, through the on-disk outbox
    <prefix>/<camera>/snapshot         JPEG of the best crop  retained
    <prefix>/<camera>/stats            stats JSON             periodic
    <prefix>/<camera>/face             faces in view (int)    retained state
    <prefix>/<camera>/detection        ON | OFF               retained state
    <prefix>/<camera>/<person>         ON | OFF               retained state, one per enrolled person
    <prefix>/<camera>/recognized       {"event_type": ...}    QoS 1, through the outbox: "recognized" (a track
                                                              is first named), "unknown" (a face nobody knows)
    <prefix>/<camera>/last_recognized  {"identity": ...}      retained: the latest "recognized"
    <prefix>/<camera>/visitor          {"event_type": ...}    QoS 1, through the outbox (visitors enabled):
                                                              "new_visitor" / "visitor_again" (visitor-17 4th time)
    <prefix>/<camera>/visitor/image    JPEG                   retained: that visitor's best crop
    <prefix>/<camera>/set/detection    ON | OFF               command
    <prefix>/<camera>/set/snapshot     anything               command: publish a snapshot now
    <prefix>/<camera>/set/enroll       {"name": "..."}        command, refused unless mqtt.allow_enroll
    <prefix>/<camera>/set/visitor      {"visitor": "visitor-17", "name": "..."} or {"visitor": ..., "forget": true}
                                                              command, refused unless mqtt.allow_visitors

Home Assistant device discovery: one retained config at ``<discovery_prefix>/device/<device id>/config`` (the
device id is ``edgecam_<camera>`` under the default prefix, ``edgecam_<prefix>__<camera>`` under another, so
two daemons with one camera name under two prefixes are two devices) with one device block, the availability
topic, and components, each with its own ``qos``: an ``event`` (face events), two more ``event`` entities for
one-line automations (``Recognized``: a person is named, ``Unknown face``), a ``sensor`` with the last person
recognized, an ``image`` (snapshot), a ``sensor`` (faces in view), a ``switch`` (detection) and a ``button``
(snapshot now) in the config category, diagnostic sensors from the stats topic (frames/s, events dropped,
events queued, broker link) and a ``binary_sensor`` per enrolled person; with visitors enabled, a ``Visitor``
``event`` (new visitor / seen again) and a ``Visitor face`` ``image``. A person who is gone is sent as
``{"p": "binary_sensor"}``, Home Assistant's removal form.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from edgecam import __version__

FACES_STATE = "face"
"""State name (``publish_state``) of the number of faces in view."""
DETECTION_STATE = "detection"
"""State name of the detection switch (ON/OFF)."""
EVENT_TYPE_KEY = "type"
"""Key of an event's kind (new/update/end) in the event JSON."""
EVENT_TYPES = ("new", "update", "end")
RECOGNIZED = "recognized"
"""Topic level of the recognition events (``recognized`` / ``unknown``) for Home Assistant automations."""
LAST_RECOGNIZED = "last_recognized"
"""Topic level of the retained latest recognition (the "last recognized" sensor)."""
RECOGNITION_TYPES = ("recognized", "unknown")
VISITOR = "visitor"
"""Topic level of the visitor messages (``new_visitor`` / ``visitor_again``); the crop is under ``visitor/image``."""
VISITOR_TYPES = ("new_visitor", "visitor_again")
RESERVED_NAMES = frozenset({"events", "snapshot", "stats", "set", "availability", RECOGNIZED, LAST_RECOGNIZED,
                            VISITOR})
RESERVED_PERSON_NAMES = RESERVED_NAMES | {FACES_STATE, DETECTION_STATE}
"""A person's state topic is ``<prefix>/<camera>/<name>``: these would collide with edgecam's own topics."""
MAX_COMMAND_BYTES = 1024
COMMANDS = ("detection", "snapshot", "enroll", "visitor")

_NAME_BAD = re.compile(r"[/#+\x00-\x1f\x7f]")
_PERSON_NAME = re.compile(r"^[\w][\w .'\-]{0,63}$")


class CommandError(ValueError):
    """A command message that is ignored; the message says why."""


def check_name(name: str, what: str = "state name", reserved: frozenset[str] = RESERVED_NAMES,
               max_chars: int = 100) -> str:
    """A single topic level that cannot collide with edgecam's own topics (``reserved``).

    Raises:
        ValueError: Empty, longer than ``max_chars``, a wildcard, ``/``, a control character, or a reserved name.
    """
    if not isinstance(name, str) or not name or len(name) > max_chars:
        raise ValueError(f"{what} {name!r}: want 1-{max_chars} characters")
    if _NAME_BAD.search(name):
        raise ValueError(f"{what} {name!r} contains '/', '#', '+' or a control character")
    if name in reserved:
        raise ValueError(f"{what} {name!r} is reserved ({', '.join(sorted(reserved))})")
    return name


@dataclass(frozen=True)
class Topics:
    """Topic names of one camera under one prefix."""

    prefix: str
    camera: str
    per_camera_availability: bool = False

    def __post_init__(self) -> None:
        check_name(self.camera, "camera name")

    @property
    def availability(self) -> str:
        """``<prefix>/availability``, or ``<prefix>/<camera>/availability`` when several cameras share a prefix."""
        return f"{self.base}/availability" if self.per_camera_availability else f"{self.prefix}/availability"

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.camera}"

    @property
    def events(self) -> str:
        return f"{self.base}/events"

    @property
    def snapshot(self) -> str:
        return f"{self.base}/snapshot"

    @property
    def stats(self) -> str:
        return f"{self.base}/stats"

    @property
    def recognized(self) -> str:
        return f"{self.base}/{RECOGNIZED}"

    @property
    def last_recognized(self) -> str:
        return f"{self.base}/{LAST_RECOGNIZED}"

    @property
    def visitor(self) -> str:
        return f"{self.base}/{VISITOR}"

    @property
    def visitor_image(self) -> str:
        return f"{self.base}/{VISITOR}/image"

    @property
    def commands(self) -> str:
        """Subscription filter of every command topic."""
        return f"{self.base}/set/#"

    def command(self, name: str) -> str:
        return f"{self.base}/set/{name}"

    def state(self, name: str) -> str:
        return f"{self.base}/{check_name(name)}"

    def command_name(self, topic: str) -> str | None:
        """``detection`` for ``<base>/set/detection``; None for topics that are not commands of this camera."""
        head = f"{self.base}/set/"
        return topic[len(head) :] if topic.startswith(head) else None


def parse_command(command: str, payload: bytes, allow_enroll: bool = False, allow_visitors: bool = False) -> bytes:
    """Validate a command payload and return its normalised form.

    Args:
        command: The topic level after ``set/`` (``detection``, ``snapshot``, ``enroll``, ``visitor``).
        payload: The raw message payload.
        allow_enroll: Whether enrollment over MQTT is switched on.
        allow_visitors: Whether naming / forgetting visitors over MQTT is switched on.

    Returns:
        ``b"ON"``/``b"OFF"`` for detection, ``b""`` for snapshot, the UTF-8 person name for enroll, compact JSON
        ``{"visitor": "visitor-17", "name": "Alice"}`` or ``{"visitor": "visitor-17", "forget": true}`` for visitor.

    Raises:
        CommandError: Unknown command, oversized or malformed payload, or enrollment / visitors while disabled.
    """
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandError(f"payload of {len(payload)} bytes (at most {MAX_COMMAND_BYTES})")
    if command == "detection":
        value = payload.strip().upper()
        if value not in (b"ON", b"OFF"):
            raise CommandError(f"payload {payload[:40]!r}: want ON or OFF")
        return value
    if command == "snapshot":
        return b""
    if command == "enroll":
        return _parse_enroll(payload, allow_enroll)
    if command == VISITOR:
        return _parse_visitor(payload, allow_visitors)
    raise CommandError(f"unknown command {command[:60]!r} (known: {', '.join(COMMANDS)})")


def _parse_enroll(payload: bytes, allow_enroll: bool) -> bytes:
    """``{"name": "Alice"}`` -> ``b"Alice"`` when enrollment over MQTT is allowed."""
    if not allow_enroll:
        raise CommandError("enrollment over MQTT is off (set mqtt.allow_enroll: true to allow it)")
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CommandError(f"enroll payload is not JSON: {exc}") from None
    name = obj.get("name") if isinstance(obj, dict) else None
    if isinstance(name, str) and name in RESERVED_PERSON_NAMES:
        raise CommandError(f"enroll name {name!r} is reserved ({', '.join(sorted(RESERVED_PERSON_NAMES))})")
    if not isinstance(name, str) or not _PERSON_NAME.match(name):
        raise CommandError(f'enroll payload {payload[:60]!r}: want {{"name": <1-64 letters, digits, space . \' ->}}')
    return name.encode("utf-8")


_VISITOR_ID = re.compile(r"^visitor-[1-9][0-9]{0,17}$")


def _parse_visitor(payload: bytes, allow_visitors: bool) -> bytes:
    """``{"visitor": "visitor-17", "name": "Alice"}`` (name) or ``{"visitor": "visitor-17", "forget": true}``."""
    if not allow_visitors:
        raise CommandError("visitor commands over MQTT are off (set mqtt.allow_visitors: true to allow them)")
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CommandError(f"visitor payload is not JSON: {exc}") from None
    want = 'want {"visitor": "visitor-<n>", "name": <person>} or {"visitor": "visitor-<n>", "forget": true}'
    if not isinstance(obj, dict) or not isinstance(obj.get("visitor"), str) or not _VISITOR_ID.match(obj["visitor"]):
        raise CommandError(f"visitor payload {payload[:60]!r}: {want}")
    if set(obj) == {"visitor", "forget"} and obj["forget"] is True:
        return json.dumps({"visitor": obj["visitor"], "forget": True}).encode()
    name = obj.get("name")
    if set(obj) != {"visitor", "name"} or not isinstance(name, str) or not _PERSON_NAME.match(name):
        raise CommandError(f"visitor payload {payload[:60]!r}: {want}")
    if name in RESERVED_PERSON_NAMES:
        raise CommandError(f"visitor name {name!r} is reserved ({', '.join(sorted(RESERVED_PERSON_NAMES))})")
    return json.dumps({"visitor": obj["visitor"], "name": name}).encode()


# ---------------------------------------------------------------------------------------------------------------
# Home Assistant MQTT device discovery


DEFAULT_PREFIX = "edgecam"


def device_id(camera: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The HA device id / object id of a camera under a topic prefix (``[a-zA-Z0-9_-]`` only).

    ``edgecam_<camera>`` under the default prefix (the id devices had before prefixes counted),
    ``edgecam_<prefix>__<camera>`` under another: a slug never holds ``__``, so no two (prefix, camera) meet.
    """
    if prefix == DEFAULT_PREFIX:
        return f"edgecam_{_slug(camera)}"
    return f"edgecam_{_slug(prefix)}__{_slug(camera)}"


def client_id(camera: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The default MQTT client id: ``edgecam-<camera>``, ``edgecam-<camera>@<prefix>`` under another prefix.

    Two daemons with the same camera name under two prefixes would otherwise kick each other off the broker.
    """
    return f"edgecam-{camera}" if prefix == DEFAULT_PREFIX else f"edgecam-{camera}@{prefix}"


def _slug(name: str) -> str:
    """A ``[a-z0-9_]`` slug; a short hash keeps names that slug alike (``Ann Marie``, ``Ann-Marie``) apart."""
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:40]
    if slug == name:
        return slug
    return f"{slug}_{hashlib.sha1(name.encode('utf-8')).hexdigest()[:6]}".lstrip("_")  # noqa: S324 - an id


def discovery_topic(discovery_prefix: str, camera: str, prefix: str = DEFAULT_PREFIX) -> str:
    """``<discovery_prefix>/device/<device id>/config``."""
    return f"{discovery_prefix}/device/{device_id(camera, prefix)}/config"


def person_key(dev: str, person: str) -> str:
    """The component key and unique_id of a person's binary_sensor."""
    return f"{dev}_person_{_slug(person)}"


def discovery_config(topics: Topics, people: list[str], removed: list[str] | None = None,
                     qos: int = 1, visitors: bool = False) -> dict[str, Any]:
    """The device discovery payload of one camera.

    Args:
        topics: The camera's topics.
        people: Enrolled people; each gets a ``binary_sensor`` on ``<prefix>/<camera>/<person>``.
        removed: People announced before and gone now; their components are sent as ``{"p": ...}`` only,
            which tells Home Assistant to remove them.
        qos: QoS of every component's subscriptions (set per component: HA before 2026.6 ignores it on the
            device).
        visitors: Visitors are enabled: a ``Visitor`` event entity and a ``Visitor face`` image (else those two are
            sent as removals, so switching visitors off takes them out of Home Assistant).
    """
    dev = device_id(topics.camera, topics.prefix)
    components: dict[str, dict[str, Any]] = {
        f"{dev}_events": _event_component(topics, dev),
        **_recognition_components(topics, dev),
        f"{dev}_snapshot": {
            "p": "image",
            "name": "Best face",
            "unique_id": f"{dev}_snapshot",
            "image_topic": topics.snapshot,
            "content_type": "image/jpeg",
        },
        f"{dev}_faces": {
            "p": "sensor",
            "name": "Faces in view",
            "unique_id": f"{dev}_faces",
            "state_topic": topics.state(FACES_STATE),
            "state_class": "measurement",
            "icon": "mdi:face-recognition",
        },
        f"{dev}_detection": {
            "p": "switch",
            "name": "Face detection",
            "unique_id": f"{dev}_detection",
            "state_topic": topics.state(DETECTION_STATE),
            "command_topic": topics.command("detection"),
            "payload_on": "ON",
            "payload_off": "OFF",
            "entity_category": "config",
            "icon": "mdi:cctv",
        },
        f"{dev}_snapshot_now": {
            "p": "button",
            "name": "Snapshot now",
            "unique_id": f"{dev}_snapshot_now",
            "command_topic": topics.command("snapshot"),
            "payload_press": "PRESS",
            "entity_category": "config",
            "icon": "mdi:camera",
        },
        **_diagnostic_components(topics, dev),
        **(_visitor_components(topics, dev) if visitors else {}),
    }
    for person in people:
        key = person_key(dev, person)
        components[key] = {
            "p": "binary_sensor",
            "name": person,
            "unique_id": key,
            "device_class": "occupancy",
            "state_topic": topics.state(person),
            "payload_on": "ON",
            "payload_off": "OFF",
        }
    for component in components.values():
        component["qos"] = qos
    for person in removed or []:
        components[person_key(dev, person)] = {"p": "binary_sensor"}
    if not visitors:
        components.update({k: {"p": c["p"]} for k, c in _visitor_components(topics, dev).items()})
    return {
        "dev": {
            "ids": [dev],
            "name": f"edgecam {topics.camera}" if topics.prefix == DEFAULT_PREFIX
            else f"edgecam {topics.camera} ({topics.prefix})",
            "mf": "edgecam",
            "mdl": "edgecam face events daemon",
            "sw": __version__,
        },
        "o": {"name": "edgecam", "sw": __version__},
        "availability": [
            {"topic": topics.availability, "payload_available": "online", "payload_not_available": "offline"}
        ],
        "cmps": components,
    }


def _event_component(topics: Topics, dev: str) -> dict[str, Any]:
    """The ``event`` entity: each event JSON becomes an HA event whose type is the event's ``type``."""
    return {
        "p": "event",
        "name": "Face event",
        "unique_id": f"{dev}_events",
        "state_topic": topics.events,
        "event_types": list(EVENT_TYPES),
        "value_template": f"{{{{ dict(value_json, event_type=value_json.{EVENT_TYPE_KEY}) | tojson }}}}",
        "icon": "mdi:face-man-shimmer",
    }


def _recognition_components(topics: Topics, dev: str) -> dict[str, dict[str, Any]]:
    """One event entity per recognition type (an automation triggers on the entity alone) and the last name."""
    out: dict[str, dict[str, Any]] = {}
    for kind, name, icon in (("recognized", "Recognized", "mdi:account-check"),
                             ("unknown", "Unknown face", "mdi:account-question")):
        out[f"{dev}_{kind}"] = {
            "p": "event",
            "name": name,
            "unique_id": f"{dev}_{kind}",
            "state_topic": topics.recognized,
            "event_types": [kind],
            # the other kind renders empty, which HA ignores without a warning
            "value_template": f"{{% if value_json.event_type == '{kind}' %}}{{{{ value_json | tojson }}}}{{% endif %}}",
            "icon": icon,
        }
    out[f"{dev}_last_recognized"] = {
        "p": "sensor",
        "name": "Last recognized",
        "unique_id": f"{dev}_last_recognized",
        "state_topic": topics.last_recognized,
        "value_template": "{{ value_json.identity }}",
        "json_attributes_topic": topics.last_recognized,
        "icon": "mdi:account-clock",
    }
    return out


def _visitor_components(topics: Topics, dev: str) -> dict[str, dict[str, Any]]:
    """The visitor event entity ("new visitor" / "visitor-17 again (4th time)") and the visitor's best crop."""
    return {
        f"{dev}_visitor": {
            "p": "event",
            "name": "Visitor",
            "unique_id": f"{dev}_visitor",
            "state_topic": topics.visitor,
            "event_types": list(VISITOR_TYPES),
            "icon": "mdi:account-clock-outline",
        },
        f"{dev}_visitor_face": {
            "p": "image",
            "name": "Visitor face",
            "unique_id": f"{dev}_visitor_face",
            "image_topic": topics.visitor_image,
            "content_type": "image/jpeg",
        },
    }


def _diagnostic_components(topics: Topics, dev: str) -> dict[str, dict[str, Any]]:
    """Diagnostic entities read from the stats JSON (published every ``stats_interval_s``)."""
    def sensor(key: str, name: str, template: str, **extra: Any) -> tuple[str, dict[str, Any]]:
        return f"{dev}_{key}", {"p": "sensor", "name": name, "unique_id": f"{dev}_{key}", "state_topic": topics.stats,
                                "value_template": template, "entity_category": "diagnostic", **extra}

    return dict([
        sensor("fps", "Frames per second", "{{ value_json.fps }}", unit_of_measurement="fps",
               state_class="measurement", icon="mdi:speedometer"),
        sensor("dropped_events", "Events dropped", "{{ value_json.dropped_events | default(0) }}",
               state_class="total_increasing", icon="mdi:delete-alert"),
        sensor("queued_events", "Events queued", "{{ value_json.queue_depth | default(0) }}",
               state_class="measurement", icon="mdi:tray-full"),
        (f"{dev}_broker", {"p": "binary_sensor", "name": "Broker link", "unique_id": f"{dev}_broker",
                           "state_topic": topics.stats, "device_class": "connectivity",
                           "value_template": "{{ 'ON' if value_json.broker_connected else 'OFF' }}",
                           "payload_on": "ON", "payload_off": "OFF", "entity_category": "diagnostic"}),
    ])
