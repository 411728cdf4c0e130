"""What stays on the broker: the retained latest-wins messages, and the people announced to Home Assistant.

``RetainedCache`` keeps the last payload of each retained topic (states, snapshot, discovery, last recognized):
a topic is published only when its payload changes, and everything is published again after a reconnect or
when Home Assistant comes back. ``AnnouncedPeople`` remembers, in the state dir, whom the discovery config
announced, so a person removed from the gallery (in this run or while the daemon was down) is sent in Home
Assistant's removal form for ``REMOVAL_KEEP_S``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

logger = logging.getLogger(__name__)

Send = Callable[[str, bytes, int], None]
"""``send(topic, payload, qos)``: publish one retained message now."""

REMOVAL_KEEP_S = 30 * 86400.0
"""A person removed from the gallery stays in the discovery config as HA's removal form this long (Home
Assistant may be away when it is first sent; the retained config is what it reads when it comes back)."""


class RetainedCache:
    """Latest payload and QoS per retained topic; thread-safe.

    ``lock`` is held while a message is published, so a caller that holds it while re-sending everything after
    a reconnect (``republish``) is never overtaken by an older value.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._latest: dict[str, tuple[bytes, int]] = {}

    def put(self, topic: str, payload: bytes, qos: int, send: Send) -> bool:
        """Remember ``payload`` for ``topic`` and, when it changed, ``send`` it (under ``lock``: ``send`` decides
        whether it can go out now). True when it changed."""
        with self.lock:
            if self._latest.get(topic) == (payload, qos):
                return False
            self._latest[topic] = (payload, qos)
            send(topic, payload, qos)
            return True

    def get(self, topic: str) -> bytes | None:
        """The payload remembered for ``topic`` (None when nothing was put)."""
        with self.lock:
            got = self._latest.get(topic)
        return None if got is None else got[0]

    def republish(self, send: Send) -> None:
        """Publish every remembered message again; the caller holds ``lock``."""
        for topic, (payload, qos) in self._latest.items():
            send(topic, payload, qos)


class AnnouncedPeople:
    """People announced to Home Assistant and people removed since, kept in ``path`` (JSON)."""

    def __init__(self, path: Path, keep_s: float = REMOVAL_KEEP_S) -> None:
        self.path, self.keep_s = path, keep_s
        self.people: list[str] = []  # announced by this run

    def update(self, people: Iterable[str], now: float) -> list[str]:
        """Announce ``people`` now; returns the people removed within ``keep_s`` (to send in removal form)."""
        people = list(people)
        announced, removed = self._load()
        for person in [*announced, *self.people]:
            removed.setdefault(person, now)
        removed = {p: t for p, t in removed.items() if p not in people and now - t < self.keep_s}
        self.people = people
        self._save(people, removed)
        return sorted(removed)

    def _load(self) -> tuple[list[str], dict[str, float]]:
        """People announced by an earlier call or run, and people removed since (name -> time)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            announced = [str(p) for p in data.get("announced", [])]
            removed = {str(p): float(t) for p, t in data.get("removed", {}).items()}
        except FileNotFoundError:
            return [], {}
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            logger.warning("MQTT: %s unreadable (%s); people removed earlier stay in Home Assistant",
                           self.path, exc)
            return [], {}
        return announced, removed

    def _save(self, people: list[str], removed: dict[str, float]) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"announced": people, "removed": removed}, indent=1), encoding="utf-8")
            tmp.replace(self.path)
        except OSError as exc:
            logger.warning("MQTT: cannot write %s (%s); a person removed later may stay in Home Assistant",
                           self.path, exc)
