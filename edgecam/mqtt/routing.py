"""Incoming messages: commands validated and handed to the subscribers, Home Assistant's status noticed.

``CommandRouter.route(topic, payload)`` is what paho's ``on_message`` calls (network thread); it needs no
broker, so every rule here is tested with plain calls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from edgecam.mqtt.topics import DETECTION_STATE, CommandError, Topics, parse_command

logger = logging.getLogger(__name__)

CommandCallback = Callable[[str, bytes], None]
"""``callback(command, payload)`` for every valid command (from paho's network thread: be quick)."""


class CommandRouter:
    """Routes the messages of the topics this camera subscribes to.

    Args:
        topics: The camera's topics (``<base>/set/<command>``).
        allow_enroll: Whether ``set/enroll`` is accepted (``mqtt.allow_enroll``).
        ha_status_topic: Home Assistant's birth/will topic (``<discovery_prefix>/status``).
        on_ha_online: Called when Home Assistant comes (back) online.
        echo_state: ``echo_state(name, value)`` publishes a state: the new ``detection`` state after its command
            was applied by every callback.
        allow_visitors: Whether ``set/visitor`` is accepted (``mqtt.allow_visitors``).
    """

    def __init__(self, topics: Topics, allow_enroll: bool, ha_status_topic: str,
                 on_ha_online: Callable[[], None], echo_state: Callable[[str, str], None],
                 allow_visitors: bool = False) -> None:
        self.topics, self.allow_enroll, self.ha_status_topic = topics, allow_enroll, ha_status_topic
        self.allow_visitors = allow_visitors
        self.on_ha_online, self.echo_state = on_ha_online, echo_state
        self.callbacks: list[CommandCallback] = []
        self.counts = {"commands": 0, "bad_commands": 0}

    def route(self, topic: str | None, payload: bytes) -> None:
        """One incoming message; ``topic`` None when it was not UTF-8 (counted as a bad command)."""
        if topic is None:
            self.counts["bad_commands"] += 1
            logger.warning("MQTT: ignored a message with a non-UTF-8 topic")
        elif topic == self.ha_status_topic:
            if payload.strip() == b"online":
                self.on_ha_online()
        elif (command := self.topics.command_name(topic)) is not None:
            self.dispatch(command, payload)

    def dispatch(self, command: str, payload: bytes) -> None:
        """Validate a command and hand it to the callbacks; a bad one is logged and ignored."""
        try:
            value = parse_command(command, payload, self.allow_enroll, self.allow_visitors)
        except CommandError as exc:
            self.counts["bad_commands"] += 1
            logger.warning("MQTT: ignored command %s/set/%s: %s", self.topics.base, command[:60], exc)
            return
        self.counts["commands"] += 1
        logger.info("MQTT: command %s %r", command, value)
        ok = True
        for callback in list(self.callbacks):
            try:
                callback(command, value)
            except Exception:
                ok = False
                logger.exception("MQTT: command callback failed for %s", command)
        if ok and command == DETECTION_STATE:
            self.echo_state(DETECTION_STATE, value.decode())
