"""Values a forward reads from its tensors while it is captured on fake tensors.

Fake tensors have shapes but no values, so a forward that reads one (``.item()``, ``if
mask.any():``, ``x[mask]``, ``nonzero``; ``nn.Transformer`` compares its mask with a causal
one to choose a kernel) cannot go on by itself. The policy:

* A value computed from the example inputs, buffers and constants only, never from a
  parameter, is computed for real: the part of the forward recorded so far that does not
  touch a parameter is replayed on real tensors (``_Draw``), then the op that reads. Masks,
  position ids, padding checks and input validation are such values; replaying them costs
  about what the forward spends on them, and no weight is read.
* Inputs gradlint drew itself (a declared shape, not a tensor the user passed) could take
  another branch on another draw, and the probe draws afresh. Their replay runs on
  ``DRAWS`` independent draws; the value is accepted only when every draw gives the same
  one, the path every such forward takes. Tensors the user passed are used as they are
  (one draw): their own forward takes that path. Random ops (``uniform_``, ``bernoulli``,
  dropout) draw the same numbers on every draw, each at its median where its distribution has
  one (``_at_median``): a path chosen by chance (layer dropout) is taken with every choice at
  its more likely outcome, not refused as a difference between inputs. For a layer dropped
  with probability p < 1/2 that is the kept path, whose gradient is the one the layer gets on
  the steps that train it (the mean over steps is (1 - p) of it); a seeded draw dropped some
  of CaiT's layers and predicted them 0 (docs/design.md §2.1).
* A value that depends on a parameter (``if self.gate(x).mean() > 0:``, routing by
  weights), or on a tensor a parameter-dependent value was written into, is refused: only
  real arithmetic on the weights could decide it. Capture then falls back, and the report
  says why (``Unsupported``).
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import FakeTensor, unset_fake_temporarily
from torch.utils._python_dispatch import _disable_current_modes
from torch.utils._pytree import tree_flatten, tree_leaves, tree_map

from gradlint.capture.fakemode import fake_tensor
from gradlint.capture.inputs import ExampleInputs, TensorSpec

try:
    import numpy as np
except ImportError:  # torch runs without NumPy; then no forward calls .numpy()
    np = None

if TYPE_CHECKING:
    from torch._subclasses.fake_tensor import FakeTensorMode

DRAWS = 8  # a branch taken by half of all draws passes all of them with probability 1/256

# Ops whose output shape depends on the values of their indices or mask only, never on those of
# the tensor they select from: ``h[:, mask]`` with ``h`` computed from the weights is decided by
# the mask alone. The selected tensor is replaced by zeros of its shape, and the result's values
# stay unknown (only its shape is used). Per op, which outputs hold the selection; the others are
# computed from the indices alone and keep their real values: packing a padded batch by its
# lengths (the packed data, and ``batch_sizes``) and padding it back (the padded data, and the
# lengths).
_SHAPE_FROM_INDICES = {torch.ops.aten.index.Tensor: (True,), torch.ops.aten.masked_select.default: (True,),
                       torch.ops.aten._pack_padded_sequence.default: (True, False),
                       torch.ops.aten._pad_packed_sequence.default: (True, False)}


class _Unknown:
    """A value that depends on a parameter."""

    def __repr__(self) -> str:
        return "<depends on a parameter>"


UNKNOWN = _Unknown()


def _storage(t: torch.Tensor) -> int | None:
    try:
        return t.untyped_storage()._cdata
    except (RuntimeError, NotImplementedError):
        return None


def _same(a: Any, b: Any) -> bool:
    fa, sa = tree_flatten(a)
    fb, sb = tree_flatten(b)
    if sa != sb:
        return False
    for x, y in zip(fa, fb):
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.shape == y.shape
                    and x.dtype == y.dtype and torch.equal(x, y)):
                return False
        elif x != y:
            return False
    return True


class _Draw:
    """The parameter-free part of the forward recorded so far, replayed on one set of real inputs."""

    def __init__(self, reader: ValueReader, leaves: list[Any]):
        self.reader = reader
        self.leaves = leaves  # the real input leaves, in the order of the recorded user inputs
        self.state: dict[fx.Node, Any] = {}
        self.tainted: set[int] = set()  # storages a parameter-dependent value was written into
        self.clones: dict[int, torch.Tensor] = {}
        self.random_ops = 0  # random ops replayed so far: the seed of the next one
        self.random: set[int | None] = set()  # storages of values computed from random numbers

    def from_random(self, leaves: list[Any]) -> bool:
        return any(isinstance(x, torch.Tensor) and _storage(x) in self.random for x in leaves)

    def catch_up(self, builder: Any) -> None:
        for node in builder.graph.nodes:
            if node not in self.state:
                self.state[node] = self._eval(node, builder)

    def value(self, a: Any) -> Any:
        return self.state.get(a, UNKNOWN) if isinstance(a, fx.Node) else a

    def _clone(self, t: torch.Tensor) -> torch.Tensor:
        # The replay may run the forward's in-place ops: never on the user's tensors.
        if id(t) not in self.clones:
            self.clones[id(t)] = t.clone()
        return self.clones[id(t)]

    def _eval(self, node: fx.Node, builder: Any) -> Any:
        sig = builder.sig
        if node.op == "placeholder":
            if node.name in sig.inputs_to_parameters:
                return UNKNOWN
            if node.name in sig.inputs_to_buffers:
                real = self.reader.buffers.get(sig.inputs_to_buffers[node.name])
                return UNKNOWN if real is None else self._clone(real)
            if node.name in sig.inputs_to_lifted_tensor_constants:
                val = node.meta.get("val")
                real = self.reader.constants.get(id(val), val)
                return UNKNOWN if isinstance(real, FakeTensor) or not isinstance(real, torch.Tensor) \
                    else self._clone(real)
            if node.name in sig.user_inputs:
                leaf = self.leaves[sig.user_inputs.index(node.name)]
                return self._clone(leaf) if isinstance(leaf, torch.Tensor) else leaf
            return UNKNOWN
        if node.op != "call_function":
            return UNKNOWN
        if node.target is operator.getitem:
            base = self.value(node.args[0])
            return UNKNOWN if base is UNKNOWN else base[node.args[1]]
        if not isinstance(node.target, torch._ops.OpOverload):
            return None  # grad-mode switches: the replay runs without autograd
        return self.run(node.target, tree_map(self.value, node.args), tree_map(self.value, dict(node.kwargs)))

    def run(self, func: torch._ops.OpOverload, args: Any, kwargs: Any) -> Any:
        leaves = tree_leaves((args, kwargs))
        known = not any(x is UNKNOWN or (isinstance(x, torch.Tensor) and _storage(x) in self.tainted)
                        for x in leaves)
        out: Any = UNKNOWN
        if known:
            try:
                if torch.Tag.nondeterministic_seeded in func.tags:
                    # Random numbers are not the inputs: every draw gets the same ones, each at its
                    # median where it has one, so a value read from them (CaiT's layer dropout) is
                    # the same on every draw: the path where every random choice takes its more
                    # likely outcome (every layer kept, for a drop rate under 1/2).
                    self.random_ops += 1
                    with torch.random.fork_rng(devices=[]):
                        torch.manual_seed(self.random_ops)
                        out = _at_median(func, args, kwargs, func(*args, **kwargs))
                else:
                    out = func(*args, **kwargs)
            except Exception:  # noqa: BLE001 - an op that does not run on these tensors decides nothing
                out = UNKNOWN
        if out is not UNKNOWN and (torch.Tag.nondeterministic_seeded in func.tags or self.from_random(leaves)):
            self.random.update(_storage(x) for x in tree_leaves(out) if isinstance(x, torch.Tensor))
        if out is UNKNOWN:
            # What it writes into now depends on something unknown too.
            bound = func._schema.arguments
            for i, a in enumerate(bound):
                if a.alias_info is not None and a.alias_info.is_write:
                    target = args[i] if i < len(args) else kwargs.get(a.name)
                    if isinstance(target, torch.Tensor):
                        self.tainted.add(_storage(target))
        return out


class UnknownArray(np.ndarray if np is not None else object):
    """``.numpy()`` of a tensor whose values only the weights decide (seq2seq's decoder compares
    its argmax with the end-of-sequence token to count output lengths, a Python-side record).
    The values are placeholders: NumPy arithmetic and indexing on it go on (their results are
    unknown too), but any Python value taken from it (a bool for an ``if``, an int, ``item``,
    ``tolist``, iteration) refuses capture, as a read of the weights by torch does."""

    def _refuse(self, *_args: Any, **_kwargs: Any) -> Any:
        from gradlint.capture.record import Unsupported

        raise Unsupported("the forward reads a value computed from the weights through NumPy (.numpy()); only "
                          "real arithmetic on the weights decides it")

    __bool__ = __int__ = __float__ = __index__ = __iter__ = item = tolist = _refuse


def _at_median(func: torch._ops.OpOverload, args: tuple, kwargs: dict, out: Any) -> Any:
    """``out`` (a seeded draw of the random op ``func``) with every number set to the median of
    its distribution, for the draws that have one: ``u < p`` then takes the outcome of
    probability at least 1/2 (docs/design.md §2.1, step 1). Other random ops keep the draw."""
    name = func.overloadpacket.__name__.rstrip("_")
    if not isinstance(out, torch.Tensor) or name not in ("uniform", "rand", "randn", "normal", "bernoulli",
                                                         "randint", "rand_like", "randn_like", "randint_like"):
        return out
    bound = dict(zip((a.name for a in func._schema.arguments), args)) | dict(kwargs)
    if name == "uniform":
        return out.fill_((float(bound.get("from", 0.0)) + float(bound.get("to", 1.0))) / 2)
    if name in ("rand", "rand_like"):
        return out.fill_(0.5)
    if name in ("randn", "randn_like"):
        return out.fill_(0.0)
    if name == "normal":
        mean = bound.get("mean", 0.0)
        return out.copy_(mean.expand_as(out)) if isinstance(mean, torch.Tensor) else out.fill_(float(mean))
    if name == "bernoulli":
        names = [a.name for a in func._schema.arguments]
        p = bound.get("p", 0.5) if "p" in names else bound.get("self")
        p = p.to(out.dtype).expand_as(out) if isinstance(p, torch.Tensor) else torch.full_like(out, float(p))
        return out.copy_((p > 0.5).to(out.dtype))
    low, high = bound.get("low", 0), bound.get("high")
    return out.fill_((int(low) + int(high) - 1) // 2) if high is not None else out


class ValueReader:
    """Answers the values a fake-tensor forward reads (see the module doc for the policy)."""

    def __init__(self, mode: FakeTensorMode, inputs: ExampleInputs, leaves: list[Any], spec: Any,
                 device: torch.device, buffers: dict[str, torch.Tensor], constants: dict[int, torch.Tensor]):
        self.mode = mode
        self.inputs = inputs
        self.leaves = leaves  # the inputs' leaves as given: TensorSpec, real tensors, constants
        self.spec = spec  # their tree
        self.device = device
        self.buffers = buffers
        self.constants = constants
        self._draws: list[_Draw] | None = None
        self.pending: list[Any] | None = None
        self.random_reads: list[str] = []  # reads of values computed from random numbers: where

    def draws(self) -> list[_Draw]:
        if self._draws is None:
            concrete: list[Any] | None = None
            if self.inputs.concrete is not None:
                flat, spec = tree_flatten(self.inputs.concrete)
                if spec == self.spec:
                    concrete = flat
            given = [concrete[i] if concrete is not None and isinstance(leaf, TensorSpec)
                     and isinstance(concrete[i], torch.Tensor) and tuple(concrete[i].shape) == leaf.shape
                     else leaf for i, leaf in enumerate(self.leaves)]
            drawn = any(isinstance(leaf, TensorSpec) for leaf in given)
            self._draws = []
            for k in range(DRAWS if drawn else 1):
                gen = torch.Generator().manual_seed(k)
                leaves = [leaf.materialize("cpu", gen).to(self.device) if isinstance(leaf, TensorSpec) else leaf
                          for leaf in given]
                self._draws.append(_Draw(self, leaves))
        return self._draws

    def read(self, builder: Any, func: torch._ops.OpOverload, args: tuple, kwargs: dict, where: str) -> Any:
        """The op's real result, as the forward receives it (a number, or a fake tensor).

        Integer metadata computed from the inputs alone by a packing op (a packed sequence's
        ``batch_sizes``, the lengths padding returns) is handed back real, as the forward would
        hold it: the kernels that take it (a packed ``nn.GRU``) read its values on the CPU.

        Raises:
            Unsupported: When the value depends on a parameter, or differs between draws.
        """
        from gradlint.capture.record import Unsupported

        nodes = tree_map(builder.arg, (args, kwargs))
        results = []
        shape_only = False
        with unset_fake_temporarily(), torch._C.DisableTorchFunction(), torch.no_grad():
            outs = []
            for draw in self.draws():
                draw.catch_up(builder)
                a, kw = tree_map(draw.value, nodes)
                if func in _SHAPE_FROM_INDICES and a[0] is UNKNOWN and isinstance(args[0], torch.Tensor):
                    shape_only = True
                    a = (torch.zeros(args[0].shape, dtype=args[0].dtype, device=self.device), *a[1:])
                if draw is self._draws[0] and draw.from_random(tree_leaves((a, kw))):
                    self.random_reads.append(f"{func.overloadpacket.__name__} at {where}")
                outs.append(draw.run(func, a, kw))
        for out in outs:
            if out is UNKNOWN:
                raise Unsupported(f"the forward reads a value computed from the weights ({func.overloadpacket.__name__}"
                                  f" at {where}); only real arithmetic on the weights decides it")
            if shape_only:
                selected = _SHAPE_FROM_INDICES[func]
                parts = out if isinstance(out, (tuple, list)) else (out,)
                shapes = tuple(p.shape for p, sel in zip(parts, selected) if sel)
                known = tuple(p for p, sel in zip(parts, selected) if not sel)
                if results and (results[0][0] != shapes or not _same(results[0][1], known)):
                    raise Unsupported(f"the forward selects by a mask of the inputs that differs between draws "
                                      f"({func.overloadpacket.__name__} at {where}): its shape depends on the "
                                      "inputs; declare the inputs as tensors to analyze the path they take")
                results.append((shapes, known, out))
            elif results and not _same(results[0], out):
                raise Unsupported(f"the forward reads a value of the inputs that differs between draws "
                                  f"({func.overloadpacket.__name__} at {where}): it takes different paths for "
                                  "different inputs; declare the inputs as tensors to analyze the path they take")
            else:
                results.append(out)
        if shape_only:
            # A selection from a tensor of unknown values has unknown values: only its shape is real.
            selected = _SHAPE_FROM_INDICES[func]
            self.pending = [(tuple(UNKNOWN if sel else p for p, sel in zip(r[2], selected))
                             if isinstance(r[2], (tuple, list)) else UNKNOWN) for r in results]
            results = [r[2] for r in results]
        else:
            self.pending = results
        fake = lambda x: fake_tensor(self.mode, x) if isinstance(x, torch.Tensor) else x
        if False in _SHAPE_FROM_INDICES.get(func, ()):
            with unset_fake_temporarily():
                real = [p.clone() for p in results[0]]
            return tuple(fake(p) if sel else r for p, r, sel in zip(results[0], real, _SHAPE_FROM_INDICES[func]))
        return tree_map(fake, results[0])

    def numpy(self, builder: Any, t: torch.Tensor) -> Any:
        """``t.numpy()`` of a fake tensor: its real values when the inputs alone decide them, the
        same on every draw; else an ``UnknownArray`` of its shape and dtype."""
        node = builder.arg(t)
        values: list[Any] = []
        # Called above the recorder (``.numpy()`` reaches no dispatcher): the replay must not be
        # recorded, nor run on fake tensors.
        with _disable_current_modes(), torch._C.DisableTorchFunction(), torch.no_grad():
            for draw in self.draws():
                draw.catch_up(builder)
                v = draw.value(node)
                if not isinstance(v, torch.Tensor) or _storage(v) in draw.tainted \
                        or (values and not _same(values[0], v)):
                    break
                values.append(v)
            else:
                return values[0].detach().cpu().clone().numpy()
        try:
            dtype = np.dtype(str(t.dtype).removeprefix("torch."))
        except TypeError:  # bfloat16 and the like: the values are placeholders anyway
            dtype = np.dtype("float32")
        return np.zeros(tuple(t.shape), dtype=dtype).view(UnknownArray)

    def bind(self, node: fx.Node) -> None:
        """Gives the node just recorded for the last read its real values."""
        for draw, value in zip(self.draws(), self.pending or ()):
            draw.state[node] = value
        self.pending = None
