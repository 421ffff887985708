"""callwatch conversion: run folder -> verified int8 TFLite model bundle.

Stages, one module each: :mod:`convert.run_folder` (read and check what training left),
:mod:`convert.export` (Keras -> TFLite, full-integer check), :mod:`convert.verify` (float vs
converted on the test split), :mod:`convert.edgetpu` (the Coral compiler and its log),
:mod:`convert.report` (report.md and metrics.json), :mod:`convert.core` (the whole run) and
:mod:`convert.cli` (``python -m convert``).
"""


class ConvertInputError(Exception):
    """Bad input (run folder, config, a model the int8 converter cannot map): exit code 2.

    str() is one line naming the file or key and what to do.
    """


class ConvertFailure(Exception):
    """A run-time failure (e.g. the Edge TPU compiler crashed): exit code 1, one line."""
