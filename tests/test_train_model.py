"""train.model: a small CNN of int8-friendly layers, logits out, gain-invariant, under 100 KB."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from train.model import build_model, int8_size_estimate  # noqa: E402

FRAMES, MELS = 149, 40
ALLOWED = {"InputLayer", "AveragePooling2D", "Subtract", "Conv2D", "DepthwiseConv2D", "BatchNormalization",
           "ReLU", "MaxPooling2D", "GlobalMaxPooling2D", "GlobalAveragePooling2D", "Dropout", "Dense"}


def model(**kw):
    args = dict(frames=FRAMES, n_mels=MELS, n_labels=2, filters=[16, 24, 32, 48], dropout=0.2)
    return build_model(**(args | kw))


def test_shapes_logits_and_layer_types():
    m = model()
    assert m.input_shape == (None, FRAMES, MELS, 1)
    assert m.output_shape == (None, 2)
    assert {type(layer).__name__ for layer in m.layers} <= ALLOWED
    assert m.layers[-1].get_config()["activation"] == "linear"  # logits: the device applies the sigmoid
    x = np.random.default_rng(0).normal(-50, 10, (3, FRAMES, MELS, 1)).astype(np.float32)
    out = m.predict(x, verbose=0)
    assert out.shape == (3, 2) and np.isfinite(out).all()


def test_under_100_kb_as_int8():
    m = model()
    assert m.count_params() < 100_000
    assert int8_size_estimate(m) < 100 * 1024
    big = model(filters=[32, 64, 96, 128])
    assert int8_size_estimate(big) < 100 * 1024


def test_band_normalisation_makes_the_model_gain_invariant():
    m = model()
    x = np.random.default_rng(1).normal(-50, 10, (2, FRAMES, MELS, 1)).astype(np.float32)
    np.testing.assert_allclose(m.predict(x, verbose=0), m.predict(x + 12.0, verbose=0), atol=1e-3)


def test_saves_and_loads_without_custom_objects(tmp_path):
    m = model(pooling="avg", normalisation="none")
    m.save(tmp_path / "model.keras")
    again = keras.models.load_model(tmp_path / "model.keras")
    x = np.random.default_rng(2).normal(-50, 10, (2, FRAMES, MELS, 1)).astype(np.float32)
    np.testing.assert_allclose(m.predict(x, verbose=0), again.predict(x, verbose=0), atol=1e-5)


@pytest.mark.parametrize("pooling", ["max", "time"])
def test_converts_to_full_integer_int8_with_builtin_ops(pooling):
    tf = pytest.importorskip("tensorflow")
    from ai_edge_litert.interpreter import Interpreter

    m = model(n_labels=1, pooling=pooling, stem_stride=2)
    rng = np.random.default_rng(3)

    def representative():
        for _ in range(8):
            yield [rng.normal(-50, 10, (1, FRAMES, MELS, 1)).astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(m)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    blob = converter.convert()
    assert len(blob) < 100 * 1024
    interpreter = Interpreter(model_content=blob)
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert ops <= {"AVERAGE_POOL_2D", "SUB", "CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D", "REDUCE_MAX",
                   "MEAN", "FULLY_CONNECTED", "RESHAPE"}, ops
    assert interpreter.get_input_details()[0]["dtype"] == np.int8


@pytest.mark.parametrize("stem_stride", [1, 2])
def test_time_pooling_weighs_each_time_step(stem_stride):
    # Fixed initial weights: with some random draws the blip's features happen to weigh the
    # same early and late (the test failed once in a targeted run without the seed).
    keras.utils.set_random_seed(17)
    m = model(pooling="time", stem_stride=stem_stride)
    assert {type(layer).__name__ for layer in m.layers} <= ALLOWED
    steps, freq, channels = m.get_layer("freq_pool").output.shape[1:]
    assert freq == 1 and steps > 1  # frequency pooled, time kept
    assert m.get_layer("time_weights").kernel.shape[:2] == (steps, 1)
    assert m.get_layer("time_weights").output.shape[1:3] == (1, 1)
    # a weight per time step: the same blip early or late in the window scores differently
    kernel = np.zeros(m.get_layer("time_weights").kernel.shape, np.float32)
    kernel[: steps // 2] = 1.0
    m.get_layer("time_weights").kernel.assign(kernel)
    x = np.full((2, FRAMES, MELS, 1), -60.0, np.float32)
    x[0, 10:30, 15:20] = 0.0
    x[1, FRAMES - 30:FRAMES - 10, 15:20] = 0.0
    out = m.predict(x, verbose=0)[0]  # [window logits, frame logits]
    assert abs(out[0, 0] - out[1, 0]) > 1e-3
    kernel[:] = 1.0 / steps  # ...and the same weight everywhere treats them (nearly) alike
    m.get_layer("time_weights").kernel.assign(kernel)
    out_flat = m.predict(x, verbose=0)[0]
    assert abs(out_flat[0, 0] - out_flat[1, 0]) < abs(out[0, 0] - out[1, 0])


@pytest.mark.parametrize("stem_stride", [1, 2])
def test_time_pooling_has_a_frame_output_where_the_call_is(stem_stride):
    from train.model import FRAME_OUTPUT, has_frames, step_frames

    m = model(pooling="time", stem_stride=stem_stride)
    assert has_frames(m) and not has_frames(model())
    steps = m.get_layer("freq_pool").output.shape[1]
    assert m.output_shape[1] == (None, steps, 1, 2)
    step = step_frames(frames=FRAMES, n_mels=MELS, filters=[16, 24, 32, 48], stem_stride=stem_stride)
    assert steps * step <= FRAMES < (steps + 1) * step
    # Only the 1x1 head sits between the time steps and the frame logits: a step's logit
    # depends on that step's features alone.
    head = m.get_layer(FRAME_OUTPUT)
    assert head.kernel.shape[:2] == (1, 1) and head.kernel.shape[-1] == 2


def test_the_frame_output_converts_to_a_second_int8_output():
    pytest.importorskip("tensorflow")
    from convert.export import check_full_integer, export_tflite, float_ops, tensor_io

    m = model(n_labels=1, pooling="time", stem_stride=2)
    rng = np.random.default_rng(4)
    content = export_tflite(m, kind="int8", representative=rng.normal(-50, 10, (8, FRAMES, MELS, 1)).astype(np.float32))
    check_full_integer(content)
    assert not float_ops(content)
    io_ = tensor_io(content)
    assert io_.output_shape == (1, 1) and io_.frames_shape == (1, m.output_shape[1][1], 1, 1)
    assert io_.frames_dtype == "int8" and io_.frames_quantization is not None


@pytest.mark.parametrize("stem_stride", [1, 2])
def test_frame_layout_places_the_frame_output_on_a_grid_of_the_hop(stem_stride):
    from device.features import FeatureParams
    from train.model import frame_layout, step_frames

    params = FeatureParams()
    frames = params.window_frames(3.0)
    step = step_frames(frames=frames, n_mels=MELS, filters=[16, 24, 32, 48], stem_stride=stem_stride)
    m = build_model(frames=frames, n_mels=MELS, n_labels=2, filters=[16, 24, 32, 48], dropout=0.2,
                    pooling="time", stem_stride=stem_stride)
    layout = frame_layout(m, params=params, step_frames=step, hop_s=0.5)
    assert layout is not None
    assert layout.steps == m.output_shape[1][1] and layout.step_frames == step
    assert layout.frame_s == pytest.approx(1 / params.frame_rate)
    hop_frames = round(0.5 * params.frame_rate)
    # every window starts on a cell boundary, and a cell is finer than the steps it stitches
    assert hop_frames % layout.cell_frames == 0 and layout.cell_frames <= max(1, step // 2)
    assert layout.first_frame(7 * 0.5) == 7 * hop_frames
    # a hop shorter than one spectrogram frame still has cells of one frame
    assert frame_layout(m, params=params, step_frames=step, hop_s=0.1 / params.frame_rate).cell_frames == 1
    assert frame_layout(model(), params=params, step_frames=step, hop_s=0.5) is None
