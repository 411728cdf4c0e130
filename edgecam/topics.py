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
    <prefix>/<camera>/set/detection    ON | OFF               command
    <prefix>/<camera>/set/snapshot     anything               command: publish a snapshot now
    <prefix>/<camera>/set/enroll       {"name": "..."}        command, refused unless mqtt.allow_enroll

Home Assistant device discovery: one retained config at ``<discovery_prefix>/device/edgecam_<camera>/config``
with one device block, the availability topic, and components: an ``event`` (face events), an ``image``
(snapshot), a ``sensor`` (faces in view), a ``switch`` (detection), a ``button`` (snapshot now) and a
``binary_sensor`` per enrolled person.
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
RESERVED_NAMES = frozenset({"events", "snapshot", "stats", "set", "availability"})
RESERVED_PERSON_NAMES = RESERVED_NAMES | {FACES_STATE, DETECTION_STATE}
"""A person's state topic is ``<prefix>/<camera>/<name>``: these would collide with edgecam's own topics."""
MAX_COMMAND_BYTES = 1024
COMMANDS = ("detection", "snapshot", "enroll")

_NAME_BAD = re.compile(r"[/#+\x00-\x1f\x7f]")
_PERSON_NAME = re.compile(r"^[\w][\w .'\-]{0,63}$")


class CommandError(ValueError):
    """A command message that is ignored; the message says why."""


def check_name(name: str, what: str = "state name") -> str:
    """A single topic level that cannot collide with edgecam's own topics.

    Raises:
        ValueError: Empty, too long, a wildcard, ``/``, a control character, or a reserved name.
    """
    if not isinstance(name, str) or not name or len(name) > 100:
        raise ValueError(f"{what} {name!r}: want 1-100 characters")
    if _NAME_BAD.search(name):
        raise ValueError(f"{what} {name!r}: no '/', '#', '+' or control characters")
    if name in RESERVED_NAMES:
        raise ValueError(f"{what} {name!r} is reserved ({', '.join(sorted(RESERVED_NAMES))})")
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


def parse_command(command: str, payload: bytes, allow_enroll: bool = False) -> bytes:
    """Validate a command payload and return its normalised form.

    Args:
        command: The topic level after ``set/`` (``detection``, ``snapshot``, ``enroll``).
        payload: The raw message payload.
        allow_enroll: Whether enrollment over MQTT is switched on.

    Returns:
        ``b"ON"``/``b"OFF"`` for detection, ``b""`` for snapshot, the UTF-8 person name for enroll.

    Raises:
        CommandError: Unknown command, oversized or malformed payload, or enrollment while disabled.
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


# ---------------------------------------------------------------------------------------------------------------
# Home Assistant MQTT device discovery


def device_id(camera: str) -> str:
    """The HA device id / object id of a camera: ``edgecam_`` + a slug (``[a-zA-Z0-9_-]`` only)."""
    return f"edgecam_{_slug(camera)}"


def _slug(name: str) -> str:
    """A ``[a-z0-9_]`` slug; a short hash keeps names that slug alike (``Ann Marie``, ``Ann-Marie``) apart."""
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:40]
    if slug == name:
        return slug
    return f"{slug}_{hashlib.sha1(name.encode('utf-8')).hexdigest()[:6]}".lstrip("_")  # noqa: S324 - an id


def discovery_topic(discovery_prefix: str, camera: str) -> str:
    """``<discovery_prefix>/device/edgecam_<camera>/config``."""
    return f"{discovery_prefix}/device/{device_id(camera)}/config"


def discovery_config(topics: Topics, people: list[str], removed: list[str] | None = None) -> dict[str, Any]:
    """The device discovery payload of one camera.

    Args:
        topics: The camera's topics.
        people: Enrolled people; each gets a ``binary_sensor`` on ``<prefix>/<camera>/<person>``.
        removed: People enrolled before and gone now; their components are sent as ``{"p": ...}`` only,
            which tells Home Assistant to remove them.
    """
    dev = device_id(topics.camera)
    components: dict[str, dict[str, Any]] = {
        f"{dev}_events": _event_component(topics, dev),
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
            "icon": "mdi:cctv",
        },
        f"{dev}_snapshot_now": {
            "p": "button",
            "name": "Snapshot now",
            "unique_id": f"{dev}_snapshot_now",
            "command_topic": topics.command("snapshot"),
            "payload_press": "PRESS",
        },
    }
    for person in people:
        key = f"{dev}_person_{_slug(person)}"
        components[key] = {
            "p": "binary_sensor",
            "name": person,
            "unique_id": key,
            "device_class": "occupancy",
            "state_topic": topics.state(person),
            "payload_on": "ON",
            "payload_off": "OFF",
        }
    for person in removed or []:
        components[f"{dev}_person_{_slug(person)}"] = {"p": "binary_sensor"}
    return {
        "dev": {
            "ids": [dev],
            "name": f"edgecam {topics.camera}",
            "mf": "edgecam",
            "mdl": "edgecam face events daemon",
            "sw": __version__,
        },
        "o": {"name": "edgecam", "sw": __version__},
        "availability": [
            {"topic": topics.availability, "payload_available": "online", "payload_not_available": "offline"}
        ],
        "qos": 1,
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
