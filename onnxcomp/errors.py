"""The exceptions onnxcomp raises. Only the CLI turns them into exit codes and one-line messages."""


class OnnxcompError(Exception):
    """Base class: a problem the user can act on. The message says what is wrong and what to do."""


class InvalidOptionError(OnnxcompError):
    """An option value is out of range or inconsistent."""


class UnsupportedModelError(OnnxcompError):
    """The model cannot be read or compressed as given."""


class CalibrationError(OnnxcompError):
    """Calibration or evaluation data does not fit the model."""


class CorruptSidecarError(OnnxcompError):
    """A sidecar file or weight record fails validation."""


class OutputError(OnnxcompError):
    """The output cannot be written where asked."""


class FidelityError(OnnxcompError):
    """The compressed model's outputs miss the fidelity the user required (--min-cosine); nothing was written."""
