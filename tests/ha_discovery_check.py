"""Validate edgecam's Home Assistant device discovery payloads with Home Assistant's own code (run by
tests/test_mqtt_ha.py under a Python that has ``homeassistant`` 2025.4+, e.g. ``EDGECAM_HA_PYTHON``).

Reads ``{"name": payload, ...}`` as JSON on stdin and does what HA's MQTT discovery does with a device config
(``homeassistant/components/mqtt/discovery.py``): expand the abbreviations, check the device payload with
``DEVICE_DISCOVERY_SCHEMA``, then give each component the device, origin and shared options and check it with
its platform's ``DISCOVERY_SCHEMA``. Those schemas drop unknown keys silently (``REMOVE_EXTRA``), so the keys
a schema dropped are reported too. Prints ``{"homeassistant": version, "payloads": {name: {"errors": [...],
"dropped_keys": [...], "components": N, "removed": N}}}``; exit 0 unless the input is unreadable.
"""

from __future__ import annotations

import asyncio
import copy
import importlib
import json
import sys
import tempfile
from typing import Any

import voluptuous as vol
from homeassistant.components.mqtt import discovery
from homeassistant.components.mqtt.const import CONF_COMPONENTS, CONF_ORIGIN
from homeassistant.components.mqtt.schemas import DEVICE_DISCOVERY_SCHEMA, SHARED_OPTIONS
from homeassistant.const import CONF_DEVICE, CONF_PLATFORM, __version__
from homeassistant.core import HomeAssistant


def check(payload: dict[str, Any]) -> dict[str, Any]:
    """Errors, dropped keys and counts of one device discovery payload."""
    errors: list[str] = []
    dropped: list[str] = []
    device = discovery.MQTTDiscoveryPayload(copy.deepcopy(payload))
    discovery._replace_all_abbreviations(device)
    try:
        DEVICE_DISCOVERY_SCHEMA(device)
    except vol.Invalid as exc:
        return {"errors": [f"device: {exc}"], "dropped_keys": [], "components": 0, "removed": 0}
    n = removed = 0
    for key, component in device[CONF_COMPONENTS].items():
        config = dict(component)
        platform = config.pop(CONF_PLATFORM)
        if not config:  # {"p": ...}: HA's removal form
            removed += 1
            continue
        n += 1
        config[CONF_DEVICE] = device[CONF_DEVICE]
        config[CONF_ORIGIN] = device.get(CONF_ORIGIN)
        for option in SHARED_OPTIONS:
            if option in device and option not in config:
                config[option] = device[option]
        schema = importlib.import_module(f"homeassistant.components.mqtt.{platform}").DISCOVERY_SCHEMA
        try:
            valid = schema(config)
        except vol.Invalid as exc:
            errors.append(f"{key} ({platform}): {exc}")
            continue
        dropped += [f"{key}.{k}" for k in config if k not in valid and config[k] is not None]
    return {"errors": errors, "dropped_keys": dropped, "components": n, "removed": removed}


async def check_all(payloads: dict[str, Any]) -> dict[str, Any]:
    """Check every payload inside a (bare) Home Assistant instance: templates are validated against it."""
    with tempfile.TemporaryDirectory() as config_dir:
        HomeAssistant(config_dir)  # registers itself as the current instance for config validation
        return {k: check(v) for k, v in payloads.items()}


def main() -> int:
    payloads = json.load(sys.stdin)
    print(json.dumps({"homeassistant": __version__, "payloads": asyncio.run(check_all(payloads))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
