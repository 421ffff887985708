"""callwatch device: the field daemon (numpy, scipy, sounddevice, paho-mqtt, LiteRT; never TensorFlow)."""

__version__ = "0.1.0"
