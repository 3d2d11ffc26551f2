"""A real backward pass under the measurement protocol, for comparison with predictions.

Protocol (docs/design.md §1): the model in train mode; inputs drawn afresh per
seed (N(0, 1) floats, uniform token ids); loss sum(g * y) with g ~ N(0, 1) per output
element; quantities averaged as mean squares over seeds, reported as RMS.

The numbers come from the model's own forward and ``loss.backward()``, on a copy in float64
(or, for a model that refuses to be copied, on the model itself with its state put back):
hooks, custom autograd Functions and in-place updates are in the measurement. Every
module's output is read on the way. The exported graph the engine analyzed is run too, on
the same draw, to read every graph node's activation and gradient: its parameter gradients
are compared with the model's own, and where they depart the probe says so. The user's
model is left as found: parameters, buffers, gradients, requires_grad flags, train/eval
mode and the RNG state.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch.nn.utils.rnn import PackedSequence

from gradlint.base.errors import ProbeError
from gradlint.capture.inputs import ExampleInputs
from gradlint.capture.outputs import output_tensors
from gradlint.capture.trace import export_program
from gradlint.load.tracebacks import forward_site


@dataclass(frozen=True)
class Measurement:
    """Measured quantities, as mean squares over seeds (RMS = sqrt).

    Attributes:
        param_ms: Per parameter name, per seed, mean(grad²) from the model's own backward.
        node_q: Per graph node name, mean over seeds of mean(h²) (the exported graph's run).
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
        graph_param_ms: Per parameter, per seed, mean(grad²) from the exported graph's run of
            the same draw (empty when there was no graph to run).
        module_q: Per module call ``"name#k"`` (the k-th call of module ``name``), mean over
            seeds of mean(out²) of its first output tensor, from the model's own run.
        module_s: The same for the gradient reaching that output (0 when none).
        module_nonfinite: The first module call of the model's own run whose output held
            inf/nan, else the first (from the output) whose gradient did; None when none did.
        graph_error: Why the exported graph could not run (its numbers are then missing).
        dtype: The dtype the model's own run used.
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
    graph_param_ms: dict[str, tuple[float, ...]] = field(default_factory=dict)
    module_q: dict[str, float] = field(default_factory=dict)
    module_s: dict[str, float] = field(default_factory=dict)
    module_nonfinite: tuple[str, str] | None = None
    graph_error: str | None = None
    dtype: str = "float64"

    @property
    def nonfinite(self) -> bool:
        return bool(self.nonfinite_forward or self.nonfinite_backward)

    def graph_param_rms(self, name: str) -> float | None:
        """Like ``param_rms``, from the exported graph's run."""
        return _log_mean_rms(self.graph_param_ms.get(name))

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
    def __init__(self, gm: fx.GraphModule, device: str, dtype: torch.dtype | None, clone: bool = False):
        super().__init__(gm, garbage_collect_values=False)
        self.values: dict[str, torch.Tensor] = {}
        self.computed: set[str] = set()
        self.device = torch.device(device)
        self.dtype = dtype
        self.clone = clone

    def call_function(self, target, args, kwargs):
        if self.clone and isinstance(target, torch._ops.OpOverload):
            # Copies of the views an op reads, not of what it writes into or returns a view of:
            # what autograd saves is then never written in place later through its base.
            schema = target._schema
            views = any(r.alias_info is not None for r in schema.returns)
            written = {i for i, x in enumerate(schema.arguments) if x.alias_info is not None and x.alias_info.is_write}
            if not views or written:
                args = tuple(x.clone() if isinstance(x, torch.Tensor) and x._is_view() and i not in written else x
                             for i, x in enumerate(args))
        return super().call_function(target, args, kwargs)


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


def _run_graph(gm, state, a, kw, loops, gen, device, dtype, clone: bool):
    """One seed's run of the graph module with the real tensors swapped in, the loops' per-step
    gradients, then the backward pass: (recorder, output, per-loop gradients, the failure)."""
    for t in state.values():
        if t.grad is not None:
            t.grad = None
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
        rec = _Recorder(gm, device, dtype, clone)
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
    seq_of: dict[str, list[float]] = {}
    try:
        seq_of = _loop_lag_grads(rec.values, loops, gen)
        ys = [y for y in _leaves(out) if (y.is_floating_point() or y.is_complex()) and y.requires_grad]
        if ys:  # else no output depends on a parameter or an input: every gradient is absent
            sum(_weighted(y, gen) for y in ys).backward()
    except torch.OutOfMemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - a custom autograd.Function's backward, an in-place op autograd refuses
        return rec, out, seq_of, _run_failed("runs the backward pass", dtype, e, _STATIC_HINT)
    return rec, out, seq_of, None


def _leaves(x: Any) -> list[torch.Tensor]:
    return output_tensors(x)


def measure(model: nn.Module, inputs: ExampleInputs, seeds: int = 3, dtype: torch.dtype | None = torch.float64,
            device: str = "cpu", seed0: int = 0, graph: bool = True,
            loops: dict | None = None) -> Measurement:
    """Run the protocol on ``model`` (a copy, or the model with its state put back) and on its
    exported graph, and measure every parameter, module call and graph node.

    Args:
        model: The model (real weights).
        inputs: Example inputs (shapes and token vocabularies).
        seeds: Number of independent draws of inputs and g.
        dtype: Floating dtype to run in (float64 keeps 1e-30 gradients from underflowing);
            None keeps the model's own.
        device: Where to run.
        seed0: First seed.
        graph: Also run the exported graph (node statistics); when it cannot be exported or
            run, ``graph_error`` says why and the model's own numbers stand alone.
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
        try:
            own = _measure_model(model, inputs, seeds, dtype, device, seed0)
        except ProbeError as first:
            if dtype is None or not first.message.startswith("the probe runs the model's"):
                raise
            # A forward that casts to a fixed dtype (x.float(), x.to(torch.cfloat)) refuses float64
            # weights: measure in the model's own dtype instead, and say so.
            try:
                own = _measure_model(model, inputs, seeds, None, device, seed0)
            except ProbeError as second:
                if second.message.startswith("the probe runs the model's forward"):
                    raise first from None  # its forward fails in either dtype: the float64 failure, with its hint
                # The forward ran in its own dtype: what stops the measurement there (an output with
                # no gradient, a backward that raises) is the model's real problem, not float64.
                raise
            dtype = None
        ran = None
        if graph:
            try:
                ran = _measure(model, inputs, seeds, dtype, device, seed0, loops or {})
            except torch.OutOfMemoryError:
                raise
            except Exception as e:  # noqa: BLE001 - no graph to run: the model's own numbers stand alone
                own = replace(own, graph_error=f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}")
        if ran is not None:
            own = replace(own, graph_param_ms=ran.param_ms, node_q=ran.node_q, node_s=ran.node_s,
                          nonfinite_forward=ran.nonfinite_forward, nonfinite_backward=ran.nonfinite_backward,
                          lag_ms={**own.lag_ms, **ran.lag_ms})
        meas = own
        if cuda:
            torch.cuda.synchronize(dev)
            meas = replace(meas, peak_memory_bytes=int(torch.cuda.max_memory_allocated(dev)))
    return meas


def _mean_square(g: torch.Tensor | None) -> float:
    """mean(|g|²) over every element of a gradient: sparse ones (``nn.Embedding(sparse=True)``)
    densified, complex ones by their modulus."""
    if g is None:
        return 0.0
    if g.is_sparse:
        g = g.coalesce()
        values = g.values()
        total = math.prod(g.shape) if g.shape else 1
        return float(values.abs().double().pow(2).sum() / total) if total else 0.0
    if not g.numel():
        return 0.0
    return float(g.detach().abs().double().pow(2).mean())


def _convert(t: torch.Tensor, device: str, dtype: torch.dtype | None) -> torch.Tensor:
    return t.to(device=device, dtype=_run_dtype(t.dtype, dtype))


def _copy_tensor_hooks(model: nn.Module, work: nn.Module) -> None:
    """Register the hooks of ``model``'s parameters on ``work``'s: a parameter's deepcopy drops
    them (``register_hook``, ``register_post_accumulate_grad_hook``), module hooks it keeps."""
    originals = dict(model.named_parameters(remove_duplicate=False))
    done: set[int] = set()
    for name, p in work.named_parameters(remove_duplicate=False):
        src = originals.get(name)
        if src is None or id(p) in done:
            continue
        done.add(id(p))
        for hook in (getattr(src, "_backward_hooks", None) or {}).values():
            p.register_hook(hook)
        for hook in (getattr(src, "_post_accumulate_grad_hooks", None) or {}).values():
            p.register_post_accumulate_grad_hook(hook)


class _Working:
    """The model to run: a deep copy, or (when the model refuses deepcopy, as legacy
    ``weight_norm`` does) the model itself, with everything put back by ``restore``."""

    def __init__(self, model: nn.Module, device: str, dtype: torch.dtype | None):
        self._saved = None
        try:
            self.module = copy.deepcopy(model)
        except Exception:  # noqa: BLE001 - any refusal to copy: run the original and put it back
            self.module = model
            self._saved = self._save(model)
        else:
            _copy_tensor_hooks(model, self.module)
        self.module._apply(lambda t: _convert(t, device, dtype))
        for p in self.module.parameters():
            if p.is_floating_point() or p.is_complex():
                p.requires_grad_(True)  # every parameter's gradient, frozen ones too, as the engine predicts
        self.module.train()

    @staticmethod
    def _save(model: nn.Module) -> dict:
        params = {}
        for p in model.parameters():
            params[p] = (p.data, p.detach().clone(), p.requires_grad, p.grad)
        buffers = {}
        for m in model.modules():
            for k, b in m._buffers.items():
                if b is not None:
                    buffers[(m, k)] = (b, b.detach().clone())
        modes = {m: m.training for m in model.modules()}
        return {"params": params, "buffers": buffers, "modes": modes}

    def restore(self) -> None:
        if self._saved is None:
            return
        with torch.no_grad():
            for p, (data, values, flag, grad) in self._saved["params"].items():
                data.copy_(values)
                p.data = data
                p.grad = grad
                p.requires_grad_(flag)
            for (m, k), (buf, values) in self._saved["buffers"].items():
                buf.copy_(values)
                m._buffers[k] = buf
        for m, mode in self._saved["modes"].items():
            m.training = mode


def _measure_model(model: nn.Module, inputs: ExampleInputs, seeds: int, dtype: torch.dtype | None, device: str,
                   seed0: int) -> Measurement:
    """The model's own forward and ``loss.backward()``, per seed: every parameter's gradient and
    every module call's output and output gradient."""
    work = _Working(model, device, dtype)
    net = work.module
    # Every forward starts from Python's random state as capture found it (and left it), so a
    # path chosen by random.random() (teacher forcing) is the path the prediction analyzed.
    py_rng = random.getstate()
    names = {}
    for name, m in net.named_modules(remove_duplicate=False):
        names.setdefault(id(m), name)
    calls: list[tuple[str, torch.Tensor]] = []

    def hook(m, args, out):
        first = next((t for t in output_tensors(out) if t.is_floating_point() or t.is_complex()), None)
        if first is None:
            return
        if first.requires_grad and first.grad_fn is not None:
            first.retain_grad()
        calls.append((names.get(id(m), ""), first))

    handles = [m.register_forward_hook(hook) for m in net.modules()]
    param_ms: dict[str, list[float]] = {}
    module_q: dict[str, float] = {}
    module_s: dict[str, float] = {}
    lag: dict[str, list[list[float]]] = {}
    bad: tuple[str, str] | None = None
    try:
        for i in range(seeds):
            gen = torch.Generator(device="cpu").manual_seed(seed0 + i)
            torch.manual_seed(seed0 + i)
            a, kw = inputs.materialize("cpu", gen)
            cast = lambda t: t.to(device=device, dtype=_run_dtype(t.dtype, dtype)) if isinstance(t, torch.Tensor) else t
            a = tuple(cast(t) for t in a)
            kw = {k: cast(v) for k, v in kw.items()}
            net.zero_grad(set_to_none=True)
            calls.clear()
            try:
                random.setstate(py_rng)
                out = net(*a, **kw)
            except torch.OutOfMemoryError:
                raise  # the caller retries with a smaller batch
            except Exception as e:
                raise _run_failed("runs the model's forward", dtype, e, _DTYPE_HINT) from e
            ys = [y for y in _leaves(out) if (y.is_floating_point() or y.is_complex()) and y.requires_grad]
            if not ys:
                raise _no_gradient_output(model, out)
            loss = sum(_weighted(y, gen) for y in ys)
            try:
                loss.backward()
            except torch.OutOfMemoryError:
                raise
            except Exception as e:  # a custom autograd.Function's backward, an in-place op autograd refuses
                raise _run_failed("runs the model's backward pass", dtype, e, _DTYPE_HINT) from e
            seen: dict[str, int] = {}
            keyed = []
            for name, t in calls:
                k = seen.get(name, 0)
                seen[name] = k + 1
                key = f"{name}#{k}"
                keyed.append((key, t))
                v = t.detach()
                module_q[key] = module_q.get(key, 0.0) + (_mean_square(v) / seeds)
                module_s[key] = module_s.get(key, 0.0) + (_mean_square(t.grad) / seeds)
                if bad is None and not bool(torch.isfinite(v).all()):
                    bad = (key, "forward")
            if bad is None:
                for key, t in reversed(keyed):
                    if t.grad is not None and not bool(torch.isfinite(t.grad).all()):
                        bad = (key, "backward")
                        break
            for name, prm in net.named_parameters(remove_duplicate=False):
                if prm.is_floating_point() or prm.is_complex():
                    param_ms.setdefault(name, []).append(_mean_square(prm.grad))
            calls.clear()
            random.setstate(py_rng)
            for rname, seq in _lag_grads(net, a, kw, dtype, gen).items():
                lag.setdefault(rname, []).append(list(seq))
    finally:
        random.setstate(py_rng)
        for h in handles:
            h.remove()
        calls.clear()
        work.restore()
    return Measurement({k: tuple(v) for k, v in param_ms.items()}, {}, {},
                       {k: tuple(tuple(x) for x in v) for k, v in lag.items()}, seeds=seeds,
                       batch_size=inputs.batch_size, module_q=module_q, module_s=module_s, module_nonfinite=bad,
                       dtype=str(dtype).removeprefix("torch.") if dtype is not None else "the model's own")


def _no_gradient_output(model: nn.Module, out: Any) -> ProbeError:
    """The model's output holds no tensor a gradient can flow back from (a Python float from
    ``.item()``, detached or integer tensors): there is nothing to measure."""
    path, line = forward_site(model)
    got = type(out).__name__
    return ProbeError(f"{type(model).__name__}.forward returned {got} with no tensor that depends on a parameter: no "
                      "gradient can flow back from it, so there is nothing to train", path=path, line=line,
                      hint="return the tensor the loss is computed from, not a Python number (.item(), float()) "
                           "or a detached tensor")


def _weighted(y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """sum(g * y) with g ~ N(0, 1) per element (per real and imaginary part for complex y)."""
    if y.is_complex():
        g = torch.randn(y.shape, generator=gen, dtype=torch.complex128).to(device=y.device, dtype=y.dtype)
        return (g.conj() * y).real.sum()
    return (torch.randn(y.shape, generator=gen, dtype=torch.float64).to(device=y.device, dtype=y.dtype) * y).sum()


_DTYPE_HINT = ("a forward that casts to a fixed dtype (x.float()) mixes it with the probe's float64 weights: let it "
               "follow its inputs' dtype; gradlint check without --probe still gives the static prediction")


def _measure(model, inputs, seeds, dtype, device, seed0, loops) -> Measurement:
    """The exported graph, interpreted on the same draws with the model's parameters swapped in:
    every node's value and gradient."""
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
        draws = gen.get_state(), torch.get_rng_state()
        for clone in (False, True):
            rec, out, seq_of, failed = _run_graph(gm, state, a, kw, loops, gen, device, dtype, clone)
            if failed is None or clone or "inplace" not in str(failed):
                break
            # The forward of a custom autograd.Function, inlined, writes in place into tensors
            # autograd saved (alxndrTL/mamba.py's parallel scan): again, on the same draws, each
            # op reading copies.
            rec = seq_of = None  # the refused run's graph, freed before the next one
            del out
            gen.set_state(draws[0])
            torch.set_rng_state(draws[1])
            for t in [*state.values(), *torch.utils._pytree.tree_leaves((a, kw))]:
                if isinstance(t, torch.Tensor):
                    t.grad = None
        if failed is not None:
            raise failed
        for lname, seq in seq_of.items():
            lag.setdefault(lname, []).append(seq)
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
                param_ms.setdefault(name, []).append(_mean_square(t.grad))
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
    """A ProbeError for the user's computation failing in the probe's run, at the line of the
    user's code that raised, with the user's traceback."""
    from gradlint.load.tracebacks import innermost_user_frame, user_error

    first = (str(e).strip().splitlines() or [""])[0]
    where = f"in {str(dtype).removeprefix('torch.')}" if dtype is not None else "in the model's own dtype"
    at = innermost_user_frame(e)
    return user_error(ProbeError, f"the probe {what} {where}, and it raised {type(e).__name__}: {first}", e,
                      at[0] if at else None, at[1] if at else None, hint=hint)


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

    def value(spec):
        """A node's tensor, or one step of it: ``(node, dim, index)`` (``capture.loops.lag_targets``)."""
        if isinstance(spec, (tuple, list)):
            base = values.get(spec[0])
            return (base, base.select(spec[1], spec[2])) if base is not None else (None, None)
        return values.get(spec), values.get(spec)

    for name, (steps, last) in loops.items():
        y = value(last)[1]
        xs = [[value(i) for i in step] for step in steps]
        flat = list({id(b): b for step in xs for b, _ in step if b is not None}.values())
        if y is None or not flat:
            continue
        g = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(y)
        grads = torch.autograd.grad((g * y).sum(), flat, retain_graph=True, allow_unused=True)
        by_id = {id(x): d for x, d in zip(flat, grads)}
        seq = []
        for step, spec in zip(xs, steps):
            num = den = 0.0
            for (base, x), sp in zip(step, spec):
                if x is None:
                    continue
                d = by_id.get(id(base))
                if d is not None and isinstance(sp, (tuple, list)):
                    d = d.select(sp[1], sp[2])
                num += float(d.double().pow(2).sum()) if d is not None else 0.0
                den += x.numel()
            seq.append(num / den if den else 0.0)
        res[name] = seq
    return res


def _lag_grads(work: nn.Module, a, kw, dtype, gen) -> dict[str, list[float]]:
    """Per recurrent module of the (already converted) working model: mean(δ_x_t²) for every t
    when only the last output step carries g. A module a loop calls once per step (one step per
    call, three calls or more) is measured over its calls: x_t is call t's input, the loss on the
    last call's output (R7, docs/design.md §6)."""
    rnns = [(n, m) for n, m in work.named_modules() if isinstance(m, nn.RNNBase)]
    if not rnns:
        return {}
    caught: dict[str, list[list[Any]]] = {}
    handles = []
    for name, mod in rnns:

        def pre(m, args, name=name):
            if isinstance(args[0], PackedSequence):
                # Time-major rows, longest sequences first (R7, docs/design.md §6).
                x = args[0].data.detach().requires_grad_(True)
                caught.setdefault(name, []).append([x, None, [int(b) for b in args[0].batch_sizes]])
                return (args[0]._replace(data=x),) + tuple(args[1:])
            x = args[0].detach().requires_grad_(True)
            caught.setdefault(name, []).append([x, None, m.batch_first])
            return (x,) + tuple(args[1:])

        def post(m, args, out, name=name):
            caught[name][-1][1] = out[0].data if isinstance(out[0], PackedSequence) else out[0]

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
    for name, calls in caught.items():
        x, y, bf = calls[-1]
        if y is None:
            continue
        if len(calls) >= 3 and all(not isinstance(c[2], list) and c[0].dim() == 3 and c[1] is not None
                                   and c[0].shape[1 if c[2] else 0] == 1 for c in calls):
            last = y[:, -1] if bf else y[-1]
            g = torch.randn(last.shape, generator=gen, dtype=torch.float64).to(last)
            dxs = torch.autograd.grad((g * last).sum(), [c[0] for c in calls], allow_unused=True)
            res[name] = [float(d.double().pow(2).mean()) if d is not None else 0.0 for d in dxs]
            continue
        if isinstance(bf, list):
            # A packed sequence: the samples that run every step, their last step's output.
            rows = [sum(bf[:t]) for t in range(len(bf) + 1)]
            full = bf[-1]
            last = y[rows[-2]:rows[-2] + full]
        else:
            last = y[:, -1] if bf else y[-1]
        g = torch.randn(last.shape, generator=gen, dtype=torch.float64).to(last)
        (dx,) = torch.autograd.grad((g * last).sum(), x, allow_unused=True)
        if dx is None:
            continue
        if isinstance(bf, list):
            res[name] = [float(dx[rows[t]:rows[t] + full].double().pow(2).mean()) for t in range(len(bf))]
            continue
        steps = dx.shape[1] if bf else dx.shape[0]
        res[name] = [float((dx[:, t] if bf else dx[t]).double().pow(2).mean()) for t in range(steps)]
    return res
