"""Typed errors: library code raises them, the CLI prints them as one line and exits 2."""


class TransformerkitError(Exception):
    """Base class: a problem with the user's input, not a bug in transformerkit."""


class ConfigError(TransformerkitError, ValueError):
    """A configuration or recipe value is invalid; the message names the field and what is allowed."""


class DataError(TransformerkitError):
    """A data file is missing or malformed; the message names the file and, where it can, the line."""


class CheckpointError(TransformerkitError):
    """A checkpoint cannot be read into a model; the message names the file or tensor."""


class TrainingError(TransformerkitError):
    """Training cannot go on (a NaN loss); the message says where the last good checkpoint is."""


class Interrupted(TransformerkitError):
    """Ctrl-C or SIGTERM: a checkpoint was saved; the message says how to resume. The process exits with
    128 + the signal's number (130 for SIGINT, 143 for SIGTERM), as shells expect."""

    def __init__(self, message: str, signal_number: int = 2):
        super().__init__(message)
        self.exit_code = 128 + signal_number
