"""A real backward pass under the measurement protocol, for comparison with predictions.

Protocol (docs/design.md §1): the model in train mode; inputs drawn afresh per
seed (N(0, 1) floats, uniform token ids); loss sum(g * y) with g ~ N(0, 1) per output
element; quantities averaged as mean squares over seeds, reported as RMS.

The model is run through the same exported graph the engine analyzed (its parameters
swapped for the real ones with ``functional_call``), so every graph node's activation and
gradient can be read and compared with the prediction at that node. The user's model is
not modified: parameters and buffers are cloned, and the RNG state is restored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from gradlint.base.errors import ProbeError
from gradlint.capture.inputs import ExampleInputs
from gradlint.capture.trace import export_program


@dataclass(frozen=True)
class Measurement:
    """Measured quantities, as mean squares over seeds (RMS = sqrt).

    Attributes:
        param_ms: Per parameter name, per seed, mean(grad²).
        node_q: Per graph node name, mean over seeds of mean(h²).
        node_s: Per graph node name, mean over seeds of mean(δ²) (0 when no gradient).
        lag_ms: Per recurrent module (by module name) and per loop over time steps (by the
            node that names it in reports), per seed, per time step, mean(δ_x²) when only the
            last step's output carries the loss.
        nonfinite_forward: Nodes whose value held inf/nan, in execution order.
        nonfinite_backward: Nodes whose gradient held inf/nan while their value was finite,
            in backward order (the node nearest the output first).
        seeds: Number of seeds.
        batch_size: Samples per seed (None without tensor inputs).
        peak_memory_bytes: On CUDA, the peak memory allocated while measuring.
    """

    param_ms: dict[str, tuple[float, ...]]
    node_q: dict[str, float]
    node_s: dict[str, float]
    lag_ms: dict[str, tuple[tuple[float, ...], ...]] = field(default_factory=dict)
    nonfinite_forward: tuple[str, ...] = ()
    nonfinite_backward: tuple[str, ...] = ()
    seeds: int = 0
    batch_size: int | None = None
    peak_memory_bytes: int | None = None

    @property
    def nonfinite(self) -> bool:
        return bool(self.nonfinite_forward or self.nonfinite_backward)

    def param_rms(self, name: str) -> float | None:
        """Geometric mean over seeds of the gradient RMS (the convention of docs/design.md §1)."""
        return _log_mean_rms(self.param_ms.get(name))

    def lag_rms(self, name: str) -> tuple[float, ...]:
        """Per time step, geometric mean over seeds of RMS(δ_x_t) under a last-step loss."""
        per_seed = self.lag_ms.get(name) or ()
        if not per_seed:
            return ()
        return tuple(_log_mean_rms(tuple(seq[t] for seq in per_seed)) or 0.0 for t in range(len(per_seed[0])))


def _log_mean_rms(values) -> float | None:
    # Seeds are averaged in log space: gradients deep in a model are log-normal across seeds,
    # and a mean of squares would be ruled by the luckiest seed.
    if not values:
        return None
    if any(v <= 0 for v in values):
        return 0.0 if all(v <= 0 for v in values) else math.sqrt(sum(values) / len(values))
    return 10 ** (sum(0.5 * math.log10(v) for v in values) / len(values))


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, device: str, dtype: torch.dtype | None):
        super().__init__(gm, garbage_collect_values=False)
        self.values: dict[str, torch.Tensor] = {}
        self.computed: set[str] = set()
        self.device = torch.device(device)
        self.dtype = dtype


    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        t = out[0] if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor) else out
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.requires_grad:
            if t.grad_fn is not None or t.is_leaf:
                t.retain_grad()
            self.values[n.name] = t
            if n.op == "call_function":
                self.computed.add(n.name)
        return out


def _leaves(x: Any) -> list[torch.Tensor]:
    return [t for t in torch.utils._pytree.tree_leaves(x) if isinstance(t, torch.Tensor)]


def measure(model: nn.Module, inputs: ExampleInputs, seeds: int = 3, dtype: torch.dtype | None = torch.float64,
            device: str = "cpu", seed0: int = 0, loops: dict | None = None) -> Measurement:
    """Run the protocol on a copy of ``model`` and measure every node and parameter.

    Args:
        model: The model (real weights).
        inputs: Example inputs (shapes and token vocabularies).
        seeds: Number of independent draws of inputs and g.
        dtype: Floating dtype to run in (float64 keeps 1e-30 gradients from underflowing);
            None keeps the model's own.
        device: Where to run.
        seed0: First seed.
        loops: Loops over time steps to measure the long-range gradient of, by name: the
            exported program's nodes holding each step's inputs, and the last step's state
            (``capture.loops.lag_targets``).
    """
    dev = torch.device(device)
    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    # Dropout draws from the global generators: they are forked, so the user's random stream
    # continues as if gradlint had never run.
    with torch.random.fork_rng(devices=cuda):
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        meas = _measure(model, inputs, seeds, dtype, device, seed0, loops or {})
        if cuda:
            torch.cuda.synchronize(dev)
            meas = replace(meas, peak_memory_bytes=int(torch.cuda.max_memory_allocated(dev)))
    return meas


def _measure(model, inputs, seeds, dtype, device, seed0, loops) -> Measurement:
    ep = export_program(model, inputs)
    gm = ep.module()
    _retarget(gm, torch.device(device), dtype)
    real: dict[str, torch.Tensor] = {}
    by_id: dict[int, torch.Tensor] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) not in by_id:  # tied weights stay one tensor
            t = p.detach().to(device)
            # copy=True: in the run dtype already, .to() would alias the user's tensor.
            by_id[id(p)] = (t.to(dtype, copy=True) if dtype is not None and t.is_floating_point()
                            else t.clone()).requires_grad_(True)
        real[name] = by_id[id(p)]
    for name, b in model.named_buffers(remove_duplicate=False):
        t = b.detach().to(device)
        # A copy even in the run dtype: train-mode BatchNorm updates its running stats in place.
        real[name] = t.to(dtype, copy=True) if dtype is not None and t.is_floating_point() else t.clone()
    gm_names = ({n for n, _ in gm.named_parameters(remove_duplicate=False)}
                | {n for n, _ in gm.named_buffers(remove_duplicate=False)})
    state = {k: v for k, v in real.items() if k in gm_names}
    for k, v in list(real.items()):
        if k not in state and k in gm_names:
            state[k] = v
    param_ms: dict[str, list[float]] = {}
    node_q: dict[str, float] = {}
    node_s: dict[str, float] = {}
    lag: dict[str, list[list[float]]] = {}
    bad_fwd: list[str] = []
    bad_bwd: list[str] = []
    for i in range(seeds):
        gen = torch.Generator(device="cpu").manual_seed(seed0 + i)
        torch.manual_seed(seed0 + i)
        a, kw = inputs.materialize("cpu", gen)
        cast = lambda t: t.to(device=device, dtype=_run_dtype(t.dtype, dtype)) if isinstance(t, torch.Tensor) else t
        # Nested inputs too: an LSTM's (h, c) state.
        a, kw = torch.utils._pytree.tree_map(cast, (tuple(a), dict(kw)))
        if loops:
            # A loop's step inputs are slices of the model's inputs, often: they must be part of
            # the autograd graph to have a gradient.
            grad = lambda t: t.requires_grad_(True) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
            a, kw = torch.utils._pytree.tree_map(grad, (tuple(a), dict(kw)))
        for t in state.values():
            if t.grad is not None:
                t.grad = None
        # Interpret the graph module with the real tensors swapped in.
        orig = {}
        for name, t in state.items():
            owner, _, attr = name.rpartition(".")
            mod = gm.get_submodule(owner) if owner else gm
            orig[name] = (mod, attr, getattr(mod, attr))
            if isinstance(orig[name][2], nn.Parameter):
                mod._parameters[attr] = t  # plain tensor with requires_grad, so grads land on `t`
            else:
                mod._buffers[attr] = t
        try:
            rec = _Recorder(gm, device, dtype)
            out = rec.run(*_flatten_for(gm, a, kw))
        except torch.OutOfMemoryError:
            raise  # the caller retries with a smaller batch
        except Exception as e:
            # Kernels differ by dtype (a transposed convolution with an empty output passes in
            # float32 and raises in float64): the model's own code, not a gradlint failure.
            raise _run_failed("runs the exported graph on real tensors", dtype, e, _STATIC_HINT) from e
        finally:
            for mod, attr, val in orig.values():
                if isinstance(val, nn.Parameter):
                    mod._parameters[attr] = val
                else:
                    mod._buffers[attr] = val
        for lname, seq in _loop_lag_grads(rec.values, loops, gen).items():
            lag.setdefault(lname, []).append(seq)
        ys = [y for y in _leaves(out) if y.is_floating_point() and y.requires_grad]
        loss = sum((torch.randn(y.shape, generator=gen, dtype=torch.float64).to(device=device, dtype=y.dtype) * y).sum()
                   for y in ys)
        if ys:  # else no output depends on a parameter or an input: every gradient is absent
            try:
                loss.backward()
            except torch.OutOfMemoryError:
                raise
            except Exception as e:  # a custom autograd.Function's backward, an in-place op autograd refuses
                raise _run_failed("runs the backward pass", dtype, e, _STATIC_HINT) from e
        for name, t in rec.values.items():
            q = float(t.detach().double().pow(2).mean()) if t.numel() else 0.0
            node_q[name] = node_q.get(name, 0.0) + q / seeds
            g = t.grad
            sv = float(g.double().pow(2).mean()) if g is not None and g.numel() else 0.0
            node_s[name] = node_s.get(name, 0.0) + sv / seeds
            if name not in rec.computed:
                continue  # parameters and inputs: their values are GL103's static part
            if not bool(torch.isfinite(t.detach()).all()):
                if name not in bad_fwd:
                    bad_fwd.append(name)
            elif g is not None and not bool(torch.isfinite(g).all()) and name not in bad_bwd:
                bad_bwd.append(name)
        for name, t in real.items():
            if isinstance(t, torch.Tensor) and t.requires_grad:
                g = t.grad
                v = float(g.double().pow(2).mean()) if g is not None else 0.0
                param_ms.setdefault(name, []).append(v)
        for rname, seq in _lag_grads(model, a, kw, device, dtype, gen).items():
            lag.setdefault(rname, []).append(list(seq))
    order = {name: k for k, name in enumerate(rec.values)} if seeds else {}
    return Measurement({k: tuple(v) for k, v in param_ms.items()}, node_q, node_s,
                       {k: tuple(tuple(x) for x in v) for k, v in lag.items()},
                       tuple(sorted(bad_fwd, key=lambda n: order.get(n, 0))),
                       tuple(sorted(bad_bwd, key=lambda n: -order.get(n, 0))), seeds, inputs.batch_size)


def _retarget(gm: nn.Module, device: torch.device, dtype: torch.dtype | None) -> None:
    """Point tensor-creating ops and casts at the run device and dtype.

    The graph was exported on the meta device: tensors it creates (an RNN's zero initial
    state, masks, rotary tables inside no-grad regions) carry device=meta, casts name the
    export dtype, and export's metadata asserts check both. Running in float64 needs all
    of them moved.
    """
    def fix(a):
        if isinstance(a, torch.device) and a.type == "meta":
            return device
        if isinstance(a, torch.dtype):
            return _run_dtype(a, dtype)
        return a

    for sub in gm.modules():
        if not isinstance(sub, fx.GraphModule):
            continue
        for n in list(sub.graph.nodes):
            if n.op != "call_function":
                continue
            if "_assert_tensor_metadata" in str(n.target) and not n.users:
                sub.graph.erase_node(n)
                continue
            n.args = torch.utils._pytree.tree_map(fix, n.args)
            n.kwargs = torch.utils._pytree.tree_map(fix, dict(n.kwargs))
            if n.target is torch.ops.aten.histc.default and device.type != "cuda" and n.args:
                # Code that counts tokens per expert (transformers' MoE) takes the integer
                # histc that CUDA has when it is not on the CPU, as on the meta device at
                # export; the CPU kernel wants floats. Small integers are exact in float64.
                x = n.args[0]
                val = x.meta.get("val") if isinstance(x, fx.Node) else None
                if isinstance(val, torch.Tensor) and not val.is_floating_point():
                    with sub.graph.inserting_before(n):
                        cast = sub.graph.call_function(torch.ops.aten._to_copy.default, (x,),
                                                       {"dtype": torch.float64})
                    n.args = (cast, *n.args[1:])
            if n.target is torch.ops.aten._grouped_mm.default and dtype not in (None, torch.float32,
                                                                               torch.bfloat16, torch.float16):
                n.target = _grouped_mm_any_dtype  # the kernels take 16- and 32-bit floats only
        sub.recompile()


def _grouped_mm_any_dtype(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor | None = None,
                          bias: torch.Tensor | None = None, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``aten._grouped_mm`` by plain matmuls, in any dtype (the probe runs in float64)."""
    ends = [int(e) for e in offs.tolist()] if offs is not None else []
    starts = [0, *ends[:-1]]
    if offs is None:
        out = torch.bmm(a, b) if a.dim() == 3 and b.dim() == 3 else torch.matmul(a, b)
    elif a.dim() == 2 and b.dim() == 3:  # rows of a cut into groups, group i times b[i]
        parts = [a[s:e] @ b[i] + (bias[i] if bias is not None else 0) for i, (s, e) in enumerate(zip(starts, ends))]
        out = torch.cat(parts + [a.new_zeros(a.shape[0] - ends[-1], b.shape[-1])] if ends else parts)
        bias = None
    elif a.dim() == 3 and b.dim() == 2:  # columns of b cut into groups, a[i] times group i
        out = torch.cat([a[i] @ b[:, s:e] for i, (s, e) in enumerate(zip(starts, ends))], dim=-1)
    else:  # 2-D by 2-D: the shared dim cut into groups, one product per group
        out = torch.stack([a[:, s:e] @ b[s:e] for s, e in zip(starts, ends)])
    if bias is not None:
        out = out + bias
    return out if out_dtype is None else out.to(out_dtype)


_STATIC_HINT = "gradlint check without --probe still gives the static prediction, which runs no arithmetic"


def _run_failed(what: str, dtype: torch.dtype | None, e: BaseException, hint: str) -> Exception:
    """A ProbeError for the user's computation failing in the probe's run."""

    first = (str(e).strip().splitlines() or [""])[0]
    where = f"in {str(dtype).removeprefix('torch.')}" if dtype is not None else "in the model's own dtype"
    return ProbeError(f"the probe {what} {where}, and it raised {type(e).__name__}: {first}", hint=hint)


def _run_dtype(own: torch.dtype, run: torch.dtype | None) -> torch.dtype:
    """What a tensor of dtype ``own`` becomes in a run in ``run``: floats take it, complex
    values its complex counterpart (else their real parts meet float64 weights in float32)."""
    if run is None:
        return own
    if own.is_floating_point:
        return run
    if own.is_complex:
        return torch.complex128 if run == torch.float64 else torch.complex64
    return own


def _flatten_for(gm, a, kw) -> list:
    # The unlifted module's forward takes the user's (args, kwargs) flattened in order.
    return list(torch.utils._pytree.tree_leaves((a, kw)))


def _loop_lag_grads(values: dict[str, torch.Tensor], loops: dict, gen) -> dict[str, list[float]]:
    """Per loop: at every step, the mean over its inputs' elements of δ² when the loss is
    g · (the last step's state), g ~ N(0, 1), read from the tensors of the real forward."""
    res = {}
    for name, (steps, last) in loops.items():
        y = values.get(last)
        xs = [[values.get(i) for i in step] for step in steps]
        flat = [x for step in xs for x in step if x is not None]
        if y is None or not flat:
            continue
        g = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(y)
        grads = torch.autograd.grad((g * y).sum(), flat, retain_graph=True, allow_unused=True)
        by_id = {id(x): d for x, d in zip(flat, grads)}
        seq = []
        for step in xs:
            num = den = 0.0
            for x in step:
                if x is None:
                    continue
                d = by_id.get(id(x))
                num += float(d.double().pow(2).sum()) if d is not None else 0.0
                den += x.numel()
            seq.append(num / den if den else 0.0)
        res[name] = seq
    return res


def _lag_grads(model: nn.Module, a, kw, device, dtype, gen) -> dict[str, list[float]]:
    """Per recurrent module: mean(δ_x_t²) for every t when only the last output step carries g."""
    rnns = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.RNNBase)]
    if not rnns:
        return {}
    import copy
    work = copy.deepcopy(model).to(device)
    if dtype is not None:
        work = work.to(dtype)
    work.train()
    caught: dict[str, tuple[torch.Tensor, torch.Tensor, bool]] = {}
    handles = []
    for name, _ in rnns:
        mod = work.get_submodule(name)

        def pre(m, args, name=name):
            x = args[0].detach().requires_grad_(True)
            caught[name] = (x, None, m.batch_first)
            return (x,) + tuple(args[1:])

        def post(m, args, out, name=name):
            x, _, bf = caught[name]
            caught[name] = (x, out[0], bf)

        handles.append(mod.register_forward_pre_hook(pre))
        handles.append(mod.register_forward_hook(post))
    try:
        work(*a, **kw)
    except torch.OutOfMemoryError:
        raise  # the caller retries with a smaller batch
    except Exception as e:
        raise _run_failed("re-runs the model to measure its recurrent layers' per-step gradients", dtype, e,
                          "let the forward follow the dtype of its inputs and weights rather than casting to a "
                          "fixed one") from e
    finally:
        for h in handles:
            h.remove()
    res = {}
    for name, (x, y, bf) in caught.items():
        if y is None:
            continue
        last = y[:, -1] if bf else y[-1]
        g = torch.randn(last.shape, generator=gen, dtype=torch.float64).to(last)
        (dx,) = torch.autograd.grad((g * last).sum(), x, allow_unused=True)
        if dx is None:
            continue
        steps = dx.shape[1] if bf else dx.shape[0]
        res[name] = [float((dx[:, t] if bf else dx[t]).double().pow(2).mean()) for t in range(steps)]
    return res
