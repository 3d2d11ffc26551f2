"""What input a layer takes, and the sizes a model states about its own inputs.

``layer_draws`` gives, for the layer an input first reaches, the candidate inputs it can take in
order of likelihood (a conv: its channels and a spatial size; an embedding: token ids below its
table size; an LSTM: a sequence; an LSTMCell: one step, or a sequence when forward loops over
it). ``ModelSizes`` collects what the model says about its inputs: image sizes, maximum sequence
lengths and class counts from attributes and configs, and grid sizes from positional tables.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gradlint.base.targets import Tokens

if TYPE_CHECKING:
    from torch import nn

__all__ = ["DEFAULT_SEQ_LEN", "DEFAULT_SPATIAL", "Draw", "ModelSizes", "layer_draws", "shape_kind"]

DEFAULT_SEQ_LEN = 32
# Per spatial rank: small enough for CPU, large enough for a few stride-2 stages.
DEFAULT_SPATIAL = {1: 64, 2: 32, 3: 16}
# Larger sizes tried, in order, when the forward does not run at the default (a U-Net of valid
# convolutions, a VAE whose encoder ends in a fixed-size Linear).
_SPATIAL_GROWTH = {1: (128, 256, 512, 1024), 2: (64, 128, 256, 512), 3: (32, 64)}

_IMAGE_NAMES = ("image_size", "img_size", "input_resolution", "image_resolution", "resolution", "input_size",
                "img_res", "image_res", "im_size", "imsize", "img_shape", "image_shape")
_SEQ_NAMES = ("block_size", "max_seq_len", "max_seq_length", "context_length", "max_position_embeddings",
              "n_positions", "n_ctx", "ctx_len", "max_len", "max_length", "seq_len", "sequence_length",
              "max_sequence_length", "context_len", "maxlen", "num_tokens")
_CLASS_NAMES = ("num_classes", "n_classes", "n_class", "class_num", "num_class", "nclasses", "num_labels",
                "n_labels", "class_count")
_CONFIG_NAMES = ("config", "cfg", "args", "params", "hparams", "opt", "model_args", "conf")
_POSITIONAL = re.compile(r"pos|position", re.IGNORECASE)


def _positive_int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 1_000_000:
        return value
    return None


def _image(value: Any) -> tuple[int, int] | None:
    side = _positive_int(value)
    if side is not None:
        return side, side
    if (isinstance(value, (tuple, list)) and len(value) == 2
            and all(_positive_int(v) is not None for v in value)):
        return int(value[0]), int(value[1])
    return None


def _said(name: str, value: Any, where: str) -> str:
    # Made only for a field that matches: a repr of every field would print every weight.
    shown = tuple(value) if isinstance(value, (list, tuple)) else value
    return f"{name}={shown!r} from {where}"


def _fields(obj: Any) -> Iterator[tuple[str, Any]]:
    """(name, value) of an object's attributes or a dict's items, without running properties."""
    if isinstance(obj, Mapping):
        yield from ((k, v) for k, v in obj.items() if isinstance(k, str))
        return
    try:
        yield from vars(obj).items()
    except TypeError:
        pass
    for name in getattr(type(obj), "__dataclass_fields__", {}) or {}:
        if name not in getattr(obj, "__dict__", {}):
            yield name, getattr(obj, name, None)


@dataclass(frozen=True)
class Size:
    """A size the model states, and where: ``image_size=64 from model.config``."""

    value: Any
    said: str


@dataclass
class ModelSizes:
    """The sizes a model states about its inputs, each with where it was read.

    Attributes:
        images: Image sizes (height, width), from attributes and configs.
        seq_lens: Maximum sequence lengths, from attributes, configs and positional tables.
        grids: Patch grids (side of a square grid of patches) from positional tables.
        classes: Class counts.
    """

    images: list[Size] = field(default_factory=list)
    seq_lens: list[Size] = field(default_factory=list)
    grids: list[Size] = field(default_factory=list)
    classes: list[Size] = field(default_factory=list)

    @classmethod
    def read(cls, model: nn.Module) -> ModelSizes:
        """Reads the model, its submodules and their configs (dicts, dataclasses, namespaces)."""
        sizes = cls()
        for prefix, module in model.named_modules():
            where = f"model.{prefix}" if prefix else "model"
            sizes._read_fields(module, where, depth=1)
        for name, tensor in _named_tensors(model):
            if not _POSITIONAL.search(name.rsplit(".", 1)[-1]) or tensor.dim() < 2:
                continue
            # (N, D), (1, N, D) or (N, 1, D): N positions of width D.
            n = int(max(tensor.shape[:-1]))
            said = f"the positional table {name} {tuple(tensor.shape)}"
            sizes.seq_lens.append(Size(n, said))
            for tokens in (n, n - 1):  # with or without a class token
                side = math.isqrt(max(tokens, 0))
                if side > 1 and side * side == tokens:
                    sizes.grids.append(Size(side, said))
        from torch import nn

        for name, module in model.named_modules():
            if isinstance(module, nn.Embedding) and (_POSITIONAL.search(name.rsplit(".", 1)[-1])
                                                     or name.endswith("wpe")):
                sizes.seq_lens.append(Size(module.num_embeddings, f"{name} = Embedding({module.num_embeddings}, ...)"))
        return sizes

    def _read_fields(self, obj: Any, where: str, depth: int) -> None:
        for name, value in _fields(obj):
            if name in _IMAGE_NAMES and _image(value) is not None:
                self.images.append(Size(_image(value), _said(name, value, where)))
            elif name in _SEQ_NAMES and _positive_int(value) is not None:
                self.seq_lens.append(Size(value, _said(name, value, where)))
            elif name in _CLASS_NAMES and _positive_int(value) is not None:
                self.classes.append(Size(value, _said(name, value, where)))
            elif depth > 0 and name in _CONFIG_NAMES and value is not None and not isinstance(value, (int, float, str)):
                self._read_fields(value, f"{where}.{name}", depth - 1)


def _named_tensors(model: nn.Module) -> Iterator[tuple[str, Any]]:
    """Parameters, buffers and plain tensor attributes (a sin-cos table kept as ``self.pos = ...``)."""
    import torch

    try:
        yield from model.named_parameters()
        yield from model.named_buffers()
        for prefix, module in model.named_modules():
            for name, value in vars(module).items():
                if isinstance(value, torch.Tensor) and not isinstance(value, torch.nn.Parameter):
                    yield (f"{prefix}.{name}" if prefix else name), value
    except Exception:  # noqa: BLE001 - exotic modules: no positional tables then
        return


@dataclass(frozen=True)
class Draw:
    """One candidate for one forward input.

    Attributes:
        value: A shape tuple or ``Tokens`` (turned into a ``TensorSpec`` with the model's float
            dtype), a ``TensorSpec`` or tuple of them, a ``SequenceLengths``, or None.
        said: What it was inferred from, for the report: the layer (``conv1 = Conv2d(in_channels=3)``)
            or the convention.
        detail: Where a size came from (``image size 64 (image_size=64 from model)``); may be empty.
        defaults: Which of its sizes are gradlint's defaults (``"spatial size 32"``).
        batch_dim: The batch dim of the tensor.
        seq_dim: The sequence dim, for inputs whose length other inputs follow (lengths); None if none.
        layer: Whether ``said`` names the layer the input reaches (rather than a convention).
    """

    value: Any
    said: str
    detail: str = ""
    defaults: tuple[str, ...] = ()
    batch_dim: int = 0
    seq_dim: int | None = None
    layer: bool = True


def shape_kind(module: Any) -> str | None:
    """``"same"`` for a layer whose output has its input's rank and says nothing about it
    (dropout, activations, padding, upsampling), ``"flatten"`` for ``nn.Flatten``, else None."""
    from torch import nn

    if not isinstance(module, nn.Module):
        return None
    if isinstance(module, nn.Flatten):
        return "flatten"
    if isinstance(module, (nn.Identity, nn.modules.dropout._DropoutNd, nn.Upsample,
                           nn.modules.padding._ReflectionPadNd, nn.modules.padding._ReplicationPadNd,
                           nn.modules.padding._ConstantPadNd)):
        return "same"
    if isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict)) and not module._modules:
        return "same"
    if (type(module).__module__ == "torch.nn.modules.activation"
            and not isinstance(module, nn.MultiheadAttention)):
        return "same"
    return None


def _spatial_sizes(rank: int, sizes: ModelSizes | None, patch: int | None,
                   ) -> list[tuple[tuple[int, ...], str, tuple[str, ...]]]:
    """Spatial sizes to try for a rank-``rank`` input: stated ones first, then the default and larger."""
    out: list[tuple[tuple[int, ...], str, tuple[str, ...]]] = []
    if sizes is not None and rank == 2:
        for size in sizes.images:
            out.append((tuple(size.value), f"image size {size.value[0]}" + (
                f"x{size.value[1]}" if size.value[0] != size.value[1] else "") + f" ({size.said})", ()))
        if patch:
            for grid in sizes.grids:
                side = grid.value * patch
                out.append(((side, side), f"image size {side} ({grid.value}x{grid.value} patches of {patch} "
                                          f"in {grid.said})", ()))
    default = DEFAULT_SPATIAL.get(rank)
    if default is None:
        return out
    tried: list[str] = []
    for side in (default, *_SPATIAL_GROWTH.get(rank, ())):
        if patch and side % patch:
            continue
        # A larger size is tried only once the forward failed at every smaller one.
        grown = f" (the forward does not run at {', '.join(tried)})" if tried else ""
        out.append(((side,) * rank, "", (f"spatial size {side}{grown}",)))
        tried.append(str(side))
    seen: set[tuple[int, ...]] = set()
    return [o for o in out if not (o[0] in seen or seen.add(o[0]))]


def _seq_lens(sizes: ModelSizes | None) -> list[tuple[int, str, tuple[str, ...]]]:
    """Sequence lengths to try: the default (capped by the model's maximum), then each stated one."""
    stated = list(sizes.seq_lens) if sizes is not None else []
    cap = min((s.value for s in stated), default=None)
    out: list[tuple[int, str, tuple[str, ...]]] = []
    if cap is not None and cap < DEFAULT_SEQ_LEN:
        out.append((cap, f"sequence length {cap} ({next(s.said for s in stated if s.value == cap)})", ()))
    else:
        out.append((DEFAULT_SEQ_LEN, "", (f"sequence length {DEFAULT_SEQ_LEN}",)))
    for size in stated:
        if size.value <= 4096:
            out.append((size.value, f"sequence length {size.value} ({size.said})", ()))
    seen: set[int] = set()
    return [o for o in out if not (o[0] in seen or seen.add(o[0]))]


def _factorizations(features: int) -> list[tuple[tuple[int, ...], str]]:
    """Images whose flattened size is ``features``: (C, H, W) with C in 3, 1 and H = W."""
    out = []
    for channels in (3, 1):
        side = math.isqrt(features // channels) if features % channels == 0 else 0
        if side >= 4 and channels * side * side == features:
            out.append(((channels, side, side), f"read as {channels} channel{'s' if channels > 1 else ''} "
                                                f"of {side}x{side} ({features} = {channels}·{side}·{side})"))
    return out


def layer_draws(module: Any, batch: int, how: str = "exact", sizes: ModelSizes | None = None,
                seq_first: bool = False, flow_sizes: tuple[int, ...] = (), time_first: bool = False,
                label: str = "") -> list[Draw] | None:
    """The inputs ``module`` can take when it is the first layer an input reaches, most likely first.

    Args:
        module: The layer.
        batch: The batch size.
        how: How the input was changed before it reached the layer (see ``forward_reads.Flow``).
        sizes: What the model states about its inputs.
        seq_first: Whether token ids are (sequence, batch): the model's sequence layers are.
        flow_sizes: Split sizes, or the number of one-hot classes.
        time_first: For ``how == "step"``: whether the sequence is indexed time first.
        label: How the report names the layer: ``"conv1 = Conv2d(in_channels=3)"`` is built from it.

    Returns:
        The candidates; None when gradlint has no rule for this layer.
    """
    from torch import nn
    from torch.nn.modules.conv import _ConvNd
    from torch.nn.modules.lazy import LazyModuleMixin

    if isinstance(module, LazyModuleMixin):
        return None
    name = type(module).__name__
    at = f"{label} = " if label else ""
    if how == "one_hot":
        return _one_hot_draws(module, batch, sizes, flow_sizes, at)
    if how == "split":
        width = getattr(module, "in_features", None)
        if isinstance(module, nn.Linear) and flow_sizes and width in flow_sizes:
            total = sum(flow_sizes)
            parts = " + ".join(map(str, flow_sizes))
            return [Draw((batch, total), f"{at}Linear(in_features={width})",
                         f"after forward splits the input into {parts}")]
        return None
    if how == "step":
        return _step_draws(module, batch, time_first, at)
    if isinstance(module, nn.Linear):
        layer = f"{at}Linear(in_features={module.in_features})"
        if how == "flatten":
            draws = [Draw((batch, *shape), f"{layer} after a flatten", said)
                     for shape, said in _factorizations(module.in_features)]
            return [*draws, Draw((batch, module.in_features), f"{layer} after a flatten")]
        return [Draw((batch, module.in_features), layer)]
    if isinstance(module, _ConvNd):
        rank = len(module.kernel_size)
        layer = f"{at}{name}(in_channels={module.in_channels})"
        patch = module.stride[0] if module.kernel_size == module.stride and module.stride[0] > 1 else None
        return [Draw((batch, module.in_channels, *spatial), layer, said, defaults)
                for spatial, said, defaults in _spatial_sizes(rank, sizes, patch)] or None
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        layer = f"{at}{name}(num_embeddings={module.num_embeddings})"
        draws = []
        for length, said, defaults in _seq_lens(sizes):
            # The model's sequence layers say which order is likely; the other one is tried too
            # (CLIP permutes batch-first embeddings for its sequence-first transformer).
            for first in (seq_first, not seq_first):
                shape = (length, batch) if first else (batch, length)
                order = ", sequence first like the model's sequence layers" if first else ""
                draws.append(Draw(Tokens(shape, module.num_embeddings), layer + order, said,
                                  defaults, batch_dim=1 if first else 0, seq_dim=0 if first else 1))
        return draws
    if isinstance(module, (nn.RNNBase, nn.MultiheadAttention)):
        width = module.input_size if isinstance(module, nn.RNNBase) else module.embed_dim
        field_name = "input_size" if isinstance(module, nn.RNNBase) else "embed_dim"
        first = module.batch_first
        layer = f"{at}{name}({field_name}={width}, batch_first={first})"
        return [Draw((batch, length, width) if first else (length, batch, width), layer, said, defaults,
                     batch_dim=0 if first else 1, seq_dim=1 if first else 0)
                for length, said, defaults in _seq_lens(sizes)]
    if isinstance(module, nn.modules.rnn.RNNCellBase):
        return [Draw((batch, module.input_size), f"{at}{name}(input_size={module.input_size}), one step")]
    if isinstance(module, nn.LayerNorm) or _is_custom_norm(module):
        dims = tuple(module.normalized_shape) if isinstance(module, nn.LayerNorm) else tuple(module.weight.shape)
        layer = (f"{at}LayerNorm(normalized_shape={dims})" if isinstance(module, nn.LayerNorm)
                 else f"{at}{name}(weight of shape {dims})")
        # LayerNorm(d) sees (B, T, d); LayerNorm([C, H, W]) normalizes whole samples.
        if len(dims) == 1:
            return [Draw((batch, length, *dims), layer, said, defaults, seq_dim=1)
                    for length, said, defaults in _seq_lens(sizes)]
        return [Draw((batch, *dims), layer)]
    rank = {nn.BatchNorm1d: 0, nn.BatchNorm2d: 2, nn.BatchNorm3d: 3}.get(type(module))
    if rank is not None:
        layer = f"{at}{name}(num_features={module.num_features})"
        if not rank:
            return [Draw((batch, module.num_features), layer)]
        return [Draw((batch, module.num_features, *spatial), layer, said, defaults)
                for spatial, said, defaults in _spatial_sizes(rank, sizes, None)]
    return None


def _is_custom_norm(module: Any) -> bool:
    """A normalization layer the file defines (RMSNorm and the like): 'Norm' in its name and a 1-D weight."""
    weight = getattr(module, "weight", None)
    return ("norm" in type(module).__name__.lower() and not module._modules
            and not type(module).__module__.startswith("torch.")
            and getattr(weight, "dim", lambda: 0)() == 1)


def _one_hot_draws(module: Any, batch: int, sizes: ModelSizes | None, flow_sizes: tuple[int, ...],
                   at: str) -> list[Draw] | None:
    from torch import nn
    from torch.nn.modules.conv import _ConvNd

    classes = flow_sizes[0] if flow_sizes else None
    if isinstance(module, _ConvNd):
        classes = classes or module.in_channels
        rank = len(module.kernel_size)
        layer = f"{at}{type(module).__name__}(in_channels={module.in_channels}) after forward one-hot encodes it"
        return [Draw(Tokens((batch, *spatial), classes), layer, said, defaults)
                for spatial, said, defaults in _spatial_sizes(rank, sizes, None)] or None
    if isinstance(module, nn.Linear):
        classes = classes or module.in_features
        layer = f"{at}Linear(in_features={module.in_features}) after forward one-hot encodes it"
        return [Draw(Tokens((batch, length), classes), layer, said, defaults, seq_dim=1)
                for length, said, defaults in _seq_lens(sizes)]
    return None


def _step_draws(module: Any, batch: int, time_first: bool, at: str) -> list[Draw] | None:
    """The input of a forward that loops over time steps, calling ``module`` on each."""
    from torch import nn

    width = getattr(module, "input_size", None) or getattr(module, "in_features", None)
    if not isinstance(module, (nn.modules.rnn.RNNCellBase, nn.Linear)) or not width:
        return None
    layer = f"{at}{type(module).__name__}(input_size={width})" if isinstance(module, nn.modules.rnn.RNNCellBase) \
        else f"{at}Linear(in_features={width})"
    order = "x[t]" if time_first else "x[:, t]"
    shape = (DEFAULT_SEQ_LEN, batch, width) if time_first else (batch, DEFAULT_SEQ_LEN, width)
    return [Draw(shape, f"{layer}, called per time step ({order})", "", (f"sequence length {DEFAULT_SEQ_LEN}",),
                 batch_dim=1 if time_first else 0, seq_dim=0 if time_first else 1)]


def _axes(side: str) -> list[list[str]] | None:
    groups = []
    for token in re.findall(r"\([^)]*\)|\S+", side):
        names = token.strip("()").split()
        if "..." in names or any(not n.isidentifier() for n in names):
            return None
        groups.append(names)
    return groups


def _takes_width(module: Any) -> int | None:
    """The last-dim size a layer takes (Linear's in_features, a 1-D LayerNorm's size)."""
    from torch import nn

    if isinstance(module, nn.Linear):
        return module.in_features
    if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1:
        return module.normalized_shape[0]
    return None


def rearrange_draws(module: Any, following: Any, batch: int, sizes: ModelSizes | None,
                    label: str = "") -> list[Draw] | None:
    """Inputs of an einops ``Rearrange`` layer (a ViT's patch embedding) followed by ``following``.

    The pattern's left side gives the input's rank; its known axis lengths (``p1=32``) and the
    width the next layer takes fix the channels; the patch grid comes from the model's stated
    image size or positional table, else the default spatial sizes that the patch size divides.
    """
    pattern = getattr(module, "pattern", None)
    lengths = dict(getattr(module, "axes_lengths", None) or {})
    if not isinstance(pattern, str) or "->" not in pattern:
        return None
    left, right = (_axes(part) for part in pattern.split("->", 1))
    width = _takes_width(following)
    if not left or not right or len(left[0]) != 1:
        return None
    known = {k: v for k, v in lengths.items() if _positive_int(v)}
    if width is not None:
        unknown = [a for a in right[-1] if a not in known]
        product = math.prod(known[a] for a in right[-1] if a in known)
        if len(unknown) == 1 and product and width % product == 0:
            known[unknown[0]] = width // product
    patch = max((known[a] for group in left[1:] if len(group) > 1 for a in group if a in known), default=None)
    grids = [(spatial[0] // patch if patch else spatial[0], said, defaults)
             for spatial, said, defaults in _spatial_sizes(2, sizes, patch)]
    at = f"{label} = " if label else ""
    layer = f"{at}Rearrange('{pattern}')"
    draws = []
    for side, said, defaults in grids:
        shape = [batch]
        for group in left[1:]:
            dims = [known.get(a) for a in group]
            missing = [a for a, d in zip(group, dims) if d is None]
            if len(missing) > 1:
                return None
            shape.append(math.prod(d for d in dims if d is not None) * (side if missing else 1))
        draws.append(Draw(tuple(shape), layer, said, defaults))
    return draws or None


def is_rearrange(module: Any) -> bool:
    """An einops ``Rearrange`` layer (read by its attributes; einops is not imported)."""
    return type(module).__name__ == "Rearrange" and isinstance(getattr(module, "pattern", None), str)
