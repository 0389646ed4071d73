"""Parameter counts by stage, as the data flows: embeddings -> blocks -> output layer and heads."""

from __future__ import annotations

import re

from torch import nn

from .config import ModelConfig


def parameter_rows(model: nn.Module) -> list[tuple[str, int]]:
    """(stage, parameters) in data-flow order; a tied tensor is counted once, where it first appears."""
    counts: dict[str, int] = {}
    for name, p in model.named_parameters():
        counts[_stage(name)] = counts.get(_stage(name), 0) + p.numel()
    groups = list(dict.fromkeys(stage.split(": ")[0] for stage in counts))
    return sorted(counts.items(), key=lambda row: (groups.index(row[0].split(": ")[0]),
                                                   _PART_ORDER.get(row[0].split(": ")[-1], 0)))


_PART_ORDER = {"self-attention": 0, "cross-attention": 1, "feed-forward": 2, "norms": 3}


def _stage(name: str) -> str:
    match = re.match(r"(encoder|decoder)\.layers\.\d+\.(\w+)", name)
    if match:
        part = {"self_attn": "self-attention", "cross_attn": "cross-attention", "ffn": "feed-forward"}.get(
            match.group(2), "norms")
        return f"{match.group(1)} blocks: {part}"
    match = re.match(r"(encoder|decoder)\.embed\.(\w+)", name)
    if match:
        return f"{match.group(1)} embeddings: {match.group(2).replace('_', ' ')}"
    if re.match(r"(encoder|decoder)\.norm\.", name):
        return f"{name.split('.')[0]} final norm"
    return {"lm_head": "output layer", "mlm_head": "MLM head", "pooler": "pooler",
            "classifier": "classifier"}.get(name.split(".")[0], name.split(".")[0])


def count_parameters(model: nn.Module) -> int:
    return sum(n for _, n in parameter_rows(model))


def format_table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    """A plain aligned text table; numbers right-aligned."""
    cells = [header, *rows]
    widths = [max(len(str(row[i])) for row in cells) for i in range(len(header))]

    def line(row: tuple) -> str:
        return "  ".join(str(v).rjust(w) if isinstance(v, (int, float)) or _numeric(v) else str(v).ljust(w)
                         for v, w in zip(row, widths)).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def _numeric(value: object) -> bool:
    return isinstance(value, str) and bool(re.fullmatch(r"[\d,.]+[KMB%]?", value))


def parameter_table(model: nn.Module) -> str:
    rows = parameter_rows(model)
    total = sum(n for _, n in rows)
    body = [(stage, f"{n:,}", f"{100 * n / total:.1f}%") for stage, n in rows]
    return format_table([*body, ("total", f"{total:,}", "100.0%")], ("stage", "parameters", "share"))


def describe(config: ModelConfig) -> str:
    """One line naming a config's architecture choices."""
    c = config
    layers = f"{c.n_layers}+{c.decoder_layers}" if c.family == "encoder-decoder" else str(c.n_layers)
    heads = f"{c.n_heads}" + (f"/{c.kv_heads}kv" if c.kv_heads != c.n_heads else "")
    return (f"{c.family}, N={layers}, d_model={c.d_model}, d_ff={c.d_ff}, h={heads}, {c.positions} positions, "
            f"{c.norm_position}-norm {c.norm}, {c.activation}, dropout {c.dropout}, vocab {c.vocab_size}")


def human(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(int(n))
