"""The MQTT sink and its parts (the facade and a map of the parts: device/mqtt/sink.py)."""

from device.mqtt.connection import describe_connect_error, make_client, read_password
from device.mqtt.sink import MqttSink
from device.mqtt.topics import Topics, device_topics

__all__ = [
    "MqttSink",
    "Topics",
    "describe_connect_error",
    "device_topics",
    "make_client",
    "read_password",
]
