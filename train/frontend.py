"""Model inputs from cached log-mel dB: the front end the bundle names, as training sees it.

Training caches log-mel dB of whole recordings and augments windows in dB (mixing in the power
domain, gain). With ``features.front_end: logmel`` the dB windows are the model's inputs. With
``pcen`` they are turned into PCEN after augmentation, so a mixed-in background or a gain
change goes through the normalisation as it would in the field:

- held-out recordings (validation, test, timelines): PCEN of the whole recording from its first
  frame, exactly the frames a device streaming the file computes
  (:func:`device.features.pcen_of_logmel`);
- training crops carry ``CONTEXT_S`` of audio before the window (the file's first frame
  repeated where the file starts later), the smoother starts at the context's first frame and
  the context is dropped. A window within the context of the file's start is then exactly the
  device's; a later one differs by what is left of that cold start, (1 - s)^150 (5e-4 at the
  default 0.4 s) of the power it started from: about a percent at most, less than augmentation
  changes.
"""

from __future__ import annotations

import numpy as np

from device.features import FeatureParams, pcen_from_power, pcen_of_logmel

CONTEXT_S = 3.0
"""Seconds of audio before a PCEN training window, for the smoother to settle (7.5 time constants
at the default 0.4 s)."""


def context_frames(params: FeatureParams) -> int:
    """Frames a training crop carries before the window: 0 for log-mel."""
    return 0 if params.front_end == "logmel" else round(CONTEXT_S * params.frame_rate)


def recording_inputs(logmel_db: np.ndarray, params: FeatureParams) -> np.ndarray:
    """(frames, n_mels) float32 model inputs of a whole recording from its log-mel dB."""
    if params.front_end == "logmel":
        return logmel_db
    return pcen_of_logmel(logmel_db, params)


def window_inputs(x_db: np.ndarray, params: FeatureParams) -> np.ndarray:
    """(n, context + frames, n_mels) dB crops -> (n, frames, n_mels) float32 model inputs.

    PCEN's smoother runs along each crop from its first row (a cold start there) and the
    ``context_frames(params)`` leading rows are dropped; log-mel crops pass through."""
    context = context_frames(params)
    if context == 0:
        return x_db
    power = np.power(np.float32(10.0), x_db / np.float32(10.0), dtype=np.float32)
    s = np.float32(params.pcen_smoothing)
    smooth = np.empty_like(power)
    state = power[:, 0].copy()
    for t in range(power.shape[1]):
        state *= 1 - s
        state += s * power[:, t]
        smooth[:, t] = state
    return pcen_from_power(power[:, context:], smooth[:, context:], params)
