"""Starting an encoder task from a pretrained encoder, with new heads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from ..config import Config, require
from ..errors import CheckpointError, ConfigError
from ..models import EncoderOnly


@dataclass(frozen=True)
class PretrainedTable(Config):
    """[model] of a fine-tuning task: the pretrained encoder to start from, and its dropout."""

    KIND: ClassVar[str] = "key"
    init: str | None = None  # a model folder (or give it with `train --init MODEL`)
    dropout: float | None = None  # default: the pretrained model's

    def validate(self) -> None:
        require(self, "dropout", self.dropout is None or 0 <= self.dropout < 1, "in [0, 1) (or unset)")


def encoder_from(init: nn.Module | None, table: PretrainedTable, **changes: Any) -> nn.Module:
    """The pretrained encoder (`init`, or the recipe's [model] init path) rebuilt with `changes` (new heads),
    its encoder weights copied over."""
    from ..loading import load

    if init is None:
        if table.init is None:
            raise ConfigError("[model] init: this task fine-tunes a pretrained encoder; name it with "
                              "--init MODEL or init = \"...\" in the recipe")
        try:
            init = load(table.init, device="cpu", for_training=True)
        except CheckpointError as error:
            raise ConfigError(f"[model] init: {error} (train the pretraining recipe first, e.g. multi30k-bert)") \
                from None
    if not isinstance(init, EncoderOnly):
        raise ConfigError("the pretrained model must be an encoder-only model")
    config = init.config.replace(**changes, **({"dropout": table.dropout} if table.dropout is not None else {}))
    model = EncoderOnly(config)
    ours = model.state_dict()
    copied = {k: v for k, v in init.state_dict().items() if k in ours and v.shape == ours[k].shape}
    model.load_state_dict(copied, strict=False)
    model.tokenizer = init.tokenizer
    return model.train()
