"""MQTT: the publisher and what it is made of.

- ``publish``: ``Publisher``, events through the outbox (QoS 1), retained states, snapshots, stats, commands.
- ``outbox``: the SQLite outbox; a row leaves only when its PUBACK arrives.
- ``topics``: topic names, command parsing, Home Assistant discovery payloads.
- ``config``: the ``mqtt:`` config section, broker URLs, secrets and the log filter that masks them.
"""
