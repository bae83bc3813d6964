"""edged: an edge-device daemon that finds defective parts with a camera and a model trained on good parts.

Pipeline: source -> frame queue -> detector -> verdict -> sinks (SQLite log, MQTT outbox, image archive).
"""

__version__ = "0.1.0"
