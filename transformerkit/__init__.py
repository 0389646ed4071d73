"""transformerkit: the Transformer family, built from first principles in PyTorch."""

from .config import PRESETS, ModelConfig, preset
from .errors import CheckpointError, ConfigError, DataError, TransformerkitError
from .inference.generate import generate
from .inference.translate import translate
from .interop.huggingface import export_hf
from .loading import load
from .models import DecoderOnly, EncoderDecoder, EncoderOnly, build_model
from .training.checkpoint import save

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "ConfigError", "DataError", "DecoderOnly", "EncoderDecoder", "EncoderOnly", "ModelConfig",
    "PRESETS", "TransformerkitError", "build_model", "export_hf", "generate", "load", "preset", "save",
    "translate",
]
