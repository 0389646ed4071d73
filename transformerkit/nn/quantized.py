"""Weight-only quantized linear layers: what GGUF files hold and what `transformerkit quantize` writes.

A decoding step multiplies one token's activations by every weight of the model, so it is limited by how
many bytes of weights it reads, not by arithmetic. Storing weights in 8 or 4 bits (with a float scale per
output row, or per group of 32-256 weights) reads 4-8x fewer bytes; the activations stay in floating
point. The matmuls are PyTorch's own CPU kernels for this (`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`).

    int8, per output row:   w = q * scale                    q in [-127, 127]
    int4, per group of g:   w = (q - 8) * scale + zero       q in [0, 15], 2 to a byte

GGUF's Q4_1 (blocks of 32: w = q * d + m) is the int4 form exactly, with scale d and zero m + 8d; its Q8_0
(a scale per block of 32) is re-quantized to one scale per row.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

INT4_INNER_K_TILES = 2  # the packing PyTorch's CPU int4 kernel reads (it must be 2, 4 or 8)


class Int8Linear(nn.Module):
    """y = x W^T (+ b) with W stored as int8 codes and one float scale per output row."""

    def __init__(self, codes: Tensor, scale: Tensor, bias: Tensor | None = None):
        super().__init__()
        self.register_buffer("codes", codes.to(torch.int8).contiguous())  # (N, K)
        self.register_buffer("scale", scale.float().contiguous())  # (N,)
        self.bias = nn.Parameter(bias.detach().float(), requires_grad=False) if bias is not None else None
        self.kernel_dtype: torch.dtype | None = None  # the activations' dtype inside the kernel (None: as given)

    @property
    def in_features(self) -> int:
        return self.codes.shape[1]

    @property
    def out_features(self) -> int:
        return self.codes.shape[0]

    @classmethod
    def from_float(cls, weight: Tensor, bias: Tensor | None = None) -> Int8Linear:
        """Symmetric per-row quantization: the row's largest magnitude maps to 127."""
        weight = weight.detach().float().contiguous()  # a loaded model's may be re-strided
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127  # (N,)
        codes = torch.round(weight / scale[:, None]).clamp(-127, 127)
        return cls(codes, scale, bias)

    def dequantize(self) -> Tensor:
        return self.codes.float() * self.scale[:, None]  # (N, K)

    def rows(self, ids: Tensor, dtype: torch.dtype) -> Tensor:
        """Rows `ids` of the weight, dequantized: the embedding lookup of a table tied to this layer."""
        return (self.codes[ids].to(dtype) * self.scale[ids, None].to(dtype))  # (..., K)

    def forward(self, x: Tensor) -> Tensor:
        shape, dtype = x.shape, self.kernel_dtype or x.dtype
        flat = x.reshape(-1, shape[-1]).to(dtype)  # (M, K)
        out = torch.ops.aten._weight_int8pack_mm(flat, self.codes, self.scale.to(dtype)).to(x.dtype)  # (M, N)
        if self.bias is not None:
            out = out + self.bias.to(x.dtype)
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per row"


class Int4Linear(nn.Module):
    """y = x W^T (+ b) with W stored as 4-bit codes in groups of `group_size` along the input, each group with
    its own scale and zero.

    Layers that read the same input (q, k and v; gate and up) can be joined (`join_int4`): their rows are
    packed into one kernel layout, held by the first of them, and `project` computes all of them in one call.
    One token's matmuls are so small that a call's fixed cost matters: measured at SmolLM2's shapes on a 2-core
    Xeon, q, k and v took 158 us as three calls (v timed as k, whose shape it has) and 67 us as one.
    """

    def __init__(self, codes: Tensor, scale: Tensor, zero: Tensor, group_size: int, bias: Tensor | None = None):
        super().__init__()
        N, K = codes.shape
        if K % group_size or group_size not in (32, 64, 128, 256):
            raise ValueError(f"int4: group size {group_size} must be 32, 64, 128 or 256 and divide {K}")
        self.group_size, self.out_features, self.in_features = group_size, N, K
        self.register_buffer("codes", pack_nibbles(codes))  # (N, K / 2) uint8: the portable form that is saved
        self.register_buffer("scale", scale.float().contiguous())  # (N, K / g)
        self.register_buffer("zero", zero.float().contiguous())  # (N, K / g)
        self.bias = nn.Parameter(bias.detach().float(), requires_grad=False) if bias is not None else None
        self.kernel_dtype: torch.dtype | None = None  # the activations' dtype inside the kernel (None: as given)
        # The kernel's own layout, made on first use; it then replaces `codes`, so memory holds one copy
        self.register_buffer("packed", None, persistent=False)  # (N_all, K / 2) uint8 in the kernel's order
        self.register_buffer("scales_and_zeros", None, persistent=False)  # (K / g, N_all, 2) in the kernel dtype
        self.joined: tuple[Int4Linear, ...] = (self,)  # the layers whose rows share one layout (the first holds it)

    @staticmethod
    def fits(shape: torch.Size, group_size: int) -> bool:
        """The kernel takes whole groups along K and tiles of 16 output rows; other shapes stay in int8."""
        return shape[1] % group_size == 0 and shape[0] % 16 == 0

    @classmethod
    def from_float(cls, weight: Tensor, group_size: int, bias: Tensor | None = None) -> Int4Linear:
        """Asymmetric quantization of each group: its minimum and maximum span the 16 levels."""
        weight = weight.detach().float().contiguous()  # a loaded model's may be re-strided
        N, K = weight.shape
        groups = weight.reshape(N, K // group_size, group_size)
        low, high = groups.amin(dim=-1), groups.amax(dim=-1)  # (N, G)
        scale = ((high - low) / 15).clamp(min=1e-12)
        codes = torch.round((groups - low[..., None]) / scale[..., None]).clamp(0, 15)
        return cls(codes.reshape(N, K), scale, low + 8 * scale, group_size, bias)

    @classmethod
    def from_q4_1(cls, codes: Tensor, d: Tensor, m: Tensor, bias: Tensor | None = None) -> Int4Linear:
        """GGUF Q4_1 blocks of 32 (w = q d + m) with nothing rounded: codes (N, K), d and m (N, K / 32)."""
        return cls(codes, d, m + 8 * d, 32, bias)

    def dequantize(self) -> Tensor:
        N, K = self.out_features, self.in_features
        codes = self.unpacked_codes().float().reshape(N, K // self.group_size, self.group_size)
        return ((codes - 8) * self.scale[..., None] + self.zero[..., None]).reshape(N, K)

    def unpacked_codes(self) -> Tensor:
        """The (N, K) codes 0..15. Once the kernel's layout has replaced them, they are read back through the
        kernel itself (its packing order is PyTorch's private business): with every scale 1 and zero 8, w = q,
        so the identity times W^T is the codes, transposed; exact in bfloat16, whose 8 bits hold 0..15."""
        if self.codes is not None:
            return unpack_nibbles(self.codes)
        holder, K = self.joined[0], self.in_features
        ones = torch.ones(K // self.group_size, holder.packed.shape[0], dtype=torch.bfloat16)
        unit = torch.stack([ones, 8 * ones], dim=-1)  # (K / g, N_all, 2)
        eye = torch.eye(K, dtype=torch.bfloat16)
        weight_t = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, holder.packed, self.group_size, unit)  # (K, N_all)
        return weight_t.t()[self._rows()].float().round().to(torch.uint8)

    def _rows(self) -> slice:
        """This layer's rows in its joined layout."""
        start = sum(layer.out_features for layer in self.joined[:self.joined.index(self)])
        return slice(start, start + self.out_features)

    def _kernel_layout(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(the first joined layer's) The int4 kernel's packed weights of every joined layer, and their
        (K / g, N_all, 2) scales and zeros in the activation dtype."""
        if self.packed is None:
            if self.codes.device.type != "cpu":
                raise NotImplementedError("int4 layers run on the CPU here; load the model with quantize=None")
            codes = torch.cat([unpack_nibbles(layer.codes) for layer in self.joined]).to(torch.int32)  # (N_all, K)
            self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, INT4_INNER_K_TILES)
            for layer in self.joined:
                layer.codes = None
        if self.scales_and_zeros is None or self.scales_and_zeros.dtype != dtype:
            scale, zero = (torch.cat([getattr(layer, name) for layer in self.joined]) for name in ("scale", "zero"))
            self.scales_and_zeros = torch.stack([scale.t(), zero.t()], dim=-1).to(dtype).contiguous()
        return self.packed, self.scales_and_zeros

    def matmul_joined(self, x: Tensor) -> Tensor:
        """x (..., K) -> the outputs of every joined layer side by side (..., N_all), without biases."""
        holder = self.joined[0]
        shape, dtype = x.shape, holder.kernel_dtype or x.dtype
        packed, scales_and_zeros = holder._kernel_layout(dtype)
        flat = x.reshape(-1, shape[-1]).to(dtype)  # (M, K)
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, packed, self.group_size, scales_and_zeros)
        return out.to(x.dtype).reshape(*shape[:-1], -1)

    def add_bias(self, out: Tensor) -> Tensor:
        return out + self.bias.to(out.dtype) if self.bias is not None else out

    def forward(self, x: Tensor) -> Tensor:
        out = self.matmul_joined(x)
        return self.add_bias(out[..., self._rows()] if len(self.joined) > 1 else out)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        """Checkpoints hold the portable codes, also after the kernel's layout has replaced them."""
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.codes is None:
            destination[prefix + "codes"] = pack_nibbles(self.unpacked_codes())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Loading codes into a layer that has already run starts its kernel layout afresh."""
        if prefix + "codes" in state_dict and self.codes is None:
            if len(self.joined) > 1:
                raise RuntimeError("int4: load weights into a model before its layers are joined (join_int4)")
            N, K = self.out_features, self.in_features
            self.codes, self.packed, self.scales_and_zeros = torch.empty(N, K // 2, dtype=torch.uint8), None, None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        joined = f", joined with {len(self.joined) - 1} more" if len(self.joined) > 1 else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, int4 in groups of "
                f"{self.group_size}{joined}")


def join_int4(layers: list[nn.Module]) -> bool:
    """Join Int4Linear layers that read the same input into one kernel layout (see Int4Linear); returns whether
    they were joined (layers of another kind, or already joined, are left as they are)."""
    first = layers[0]
    if len(layers) < 2 or not all(isinstance(layer, Int4Linear) and len(layer.joined) == 1 and
                                  (layer.in_features, layer.group_size, layer.kernel_dtype) ==
                                  (first.in_features, first.group_size, first.kernel_dtype) for layer in layers):
        return False
    for layer in layers:
        if layer.codes is None:  # it has run alone: its codes come back from its own layout
            layer.codes = pack_nibbles(layer.unpacked_codes())
        layer.packed = layer.scales_and_zeros = None
        layer.joined = tuple(layers)
    return True


def project(x: Tensor, *layers: nn.Module) -> list[Tensor]:
    """x through several layers that all read it: one int4 kernel call where exactly these layers were joined
    (join_int4), one call each otherwise."""
    first = layers[0]
    if isinstance(first, Int4Linear) and first.joined == layers:
        parts = first.matmul_joined(x).split([layer.out_features for layer in layers], dim=-1)
        return [layer.add_bias(part) for layer, part in zip(layers, parts)]
    return [layer(x) for layer in layers]


def pack_nibbles(codes: Tensor) -> Tensor:
    """(N, K) values 0..15 -> (N, K / 2) bytes: element 2i in the low nibble, 2i + 1 in the high one."""
    codes = codes.to(torch.uint8)
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).contiguous()


def unpack_nibbles(packed: Tensor) -> Tensor:
    """The inverse of pack_nibbles: (N, K / 2) bytes -> (N, K) values 0..15 (uint8)."""
    return torch.stack([packed & 15, packed >> 4], dim=-1).reshape(packed.shape[0], -1)


class QuantizedEmbedding(nn.Module):
    """A token embedding whose table is an Int8Linear's weight (a tied output layer, as in SmolLM2): looking a
    token up dequantizes its row only, so the table stays in 8 bits."""

    def __init__(self, table: Int8Linear, scale: float = 1.0):
        super().__init__()
        self.table, self.scale = table, scale

    def forward(self, ids: Tensor) -> Tensor:
        x = self.table.rows(ids, self.table.scale.dtype)  # (B, T, C), in the model's dtype
        return x * self.scale if self.scale != 1.0 else x
