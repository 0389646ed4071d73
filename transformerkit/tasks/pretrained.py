"""Starting an encoder task from a pretrained encoder, with new heads."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import CheckpointError, ConfigError
from ..models import EncoderOnly


def encoder_from(init: nn.Module | None, model_recipe: dict[str, Any], **changes: Any) -> nn.Module:
    """The pretrained encoder (`init`, or the recipe's [model] init path) rebuilt with `changes` (new heads),
    its encoder weights copied over."""
    from ..loading import load

    if init is None:
        if "init" not in model_recipe:
            raise ConfigError("[model] init: this task fine-tunes a pretrained encoder; name it with "
                              "--init MODEL or init = \"...\" in the recipe")
        try:
            init = load(model_recipe["init"], device="cpu")
        except CheckpointError as error:
            raise ConfigError(f"[model] init: {error} (train the pretraining recipe first, e.g. multi30k-bert)") \
                from None
    if not isinstance(init, EncoderOnly):
        raise ConfigError("the pretrained model must be an encoder-only model")
    config = init.config.replace(**changes, **({"dropout": model_recipe["dropout"]} if "dropout" in model_recipe
                                               else {}))
    model = EncoderOnly(config)
    ours = model.state_dict()
    copied = {k: v for k, v in init.state_dict().items() if k in ours and v.shape == ours[k].shape}
    model.load_state_dict(copied, strict=False)
    model.tokenizer = init.tokenizer
    return model.train()
