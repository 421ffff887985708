"""The MQTT sink (see device/mqtt/sink.py)."""

from device.mqtt.sink import (
    MqttSink,
    Topics,
    describe_connect_error,
    device_topics,
    make_client,
    mqtt_section,
    read_password,
)

__all__ = [
    "MqttSink",
    "Topics",
    "describe_connect_error",
    "device_topics",
    "make_client",
    "mqtt_section",
    "read_password",
]
