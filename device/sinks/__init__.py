"""Where events go (see device/sinks/files.py)."""

from device.sinks.files import *  # noqa: F403
from device.sinks.files import _BaseSink, _open_text, _position  # noqa: F401
