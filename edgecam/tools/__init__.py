"""Tools around the pipeline, not stages of it.

- ``bench``: ``edgecam bench``, per-stage timings, with ``baseline`` (YuNet/Haar side by side) and ``macs``.
- ``show``: ``replay --annotate`` / ``--report``, the annotated video and the HTML report.
- ``verify``: ``edgecam models verify``, every shipped model against its ``model.json``.
- ``visitors``: ``edgecam visitors list|show|name|forget``, the visitor store of a state folder.
"""
