"""callwatch device: the field daemon (numpy, soundfile, sounddevice, paho-mqtt, LiteRT; never TensorFlow or SciPy)."""

__version__ = "0.1.0"
