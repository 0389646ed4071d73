"""Typed errors: library code raises them, the CLI prints them as one line and exits 2."""


class TransformerkitError(Exception):
    """Base class: a problem with the user's input, not a bug in transformerkit."""


class ConfigError(TransformerkitError, ValueError):
    """A configuration or recipe value is invalid; the message names the field and what is allowed."""


class DataError(TransformerkitError):
    """A data file is missing or malformed; the message names the file and, where it can, the line."""


class CheckpointError(TransformerkitError):
    """A checkpoint cannot be read into a model; the message names the file or tensor."""
