"""Recover the *intended* init distribution of every parameter/buffer of a model built on the meta device.

Idea: on the meta device nothing is materialised, and transformers (5.x) even skips `initialize_weights()`
when the model is constructed under `with torch.device("meta")` (see PreTrainedModel.init_weights).  So we
re-run the model's own init code (`model.initialize_weights()`) on the meta model while *recording* every
init call analytically instead of sampling: each call is turned into (mean, second moment) of the distribution
it would have drawn from, keyed by the storage of the target tensor.

Interception points (all three are needed):
  1. `transformers.initialization.TORCH_INIT_FUNCTIONS[...]` -- the HF `init.normal_`/`init.trunc_normal_`/...
     wrappers that every `_init_weights` uses call the torch originals *through this dict* (looked up at call
     time), so replacing its values catches every HF-level init, incl. `torch.nn.init.*` calls made inside
     `initialize_weights()` (HF's `guard_torch_init_functions` reroutes those to the HF wrappers).
  2. `torch.nn.init.<fn>` (and the copies bound in torch.nn.modules.*, same list HF uses) -- catches calls made
     outside initialize_weights, e.g. nn.Linear.reset_parameters at construction time, or user init code.
  3. a TorchFunctionMode for raw tensor methods: `.normal_() .uniform_() .fill_() .zero_() .copy_()` and
     `.mul_/.div_` by a scalar (old-style `module.weight.data.normal_(0, 0.02)` code).
The recording functions do not sample anything; on non-meta tensors they also perform the real init (with the
mode disabled) so the same code can be used on CPU.

Keying by storage (`t.untyped_storage()._cdata`) makes `.data` aliases and views (e.g. the padding row
`init.zeros_(emb.weight[padding_idx])`) map to their parameter; a write that covers only a fraction f of the
storage updates the second moment as m2 = (1-f)*m2_old + f*m2_new.
"""
from __future__ import annotations

import math
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode

_nn_init_originals = {n: getattr(torch.nn.init, n) for n in [
    "uniform_", "normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_", "xavier_uniform_", "xavier_normal_",
    "kaiming_uniform_", "kaiming_normal_", "trunc_normal_", "orthogonal_", "sparse_"]}
_MODULES_TO_PATCH = ("torch.nn.init", "torch.nn.modules.activation", "torch.nn.modules.transformer",
                     "torch.nn.modules.linear", "torch.nn.modules.loss", "torch.nn.modules.batchnorm",
                     "torch.nn.modules.conv", "torch.nn.modules.normalization", "torch.nn.modules.rnn",
                     "torch.nn.modules.sparse")


@dataclass
class InitInfo:
    kind: str          # e.g. "normal(0,0.02)", "const(1)", "kaiming_uniform(a=2.236,fan_in=64)", "copy"
    base_mean: float   # distribution of the last write that covered the whole storage
    base_m2: float     # E[x^2] of it
    history: list = field(default_factory=list)
    # partial writes after the last full one: {(offset, shape, stride): (fraction, mean, m2)}
    partial: dict = field(default_factory=dict)

    @property
    def mean(self):
        f = sum(v[0] for v in self.partial.values())
        return (1 - f) * self.base_mean + sum(v[0] * v[1] for v in self.partial.values())

    @property
    def m2(self):
        f = sum(v[0] for v in self.partial.values())
        return (1 - f) * self.base_m2 + sum(v[0] * v[2] for v in self.partial.values())

    @property
    def std(self):
        return math.sqrt(max(self.m2 - self.mean ** 2, 0.0))

    @property
    def rms(self):
        return math.sqrt(max(self.m2, 0.0))

    def scale(self, s):
        self.base_mean *= s
        self.base_m2 *= s * s
        self.partial = {k: (f, m * s, m2 * s * s) for k, (f, m, m2) in self.partial.items()}
        self.kind += f"*{s:.4g}"


def _trunc_normal_moments(mean, std, a, b):
    # moments of N(mean, std^2) truncated to [a, b] (absolute bounds, as in torch.nn.init.trunc_normal_)
    al, be = (a - mean) / std, (b - mean) / std
    phi = lambda x: math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    Phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))
    Z = max(Phi(be) - Phi(al), 1e-300)
    d1 = (phi(al) - phi(be)) / Z
    var = std ** 2 * (1 + (al * phi(al) - be * phi(be)) / Z - d1 ** 2)
    mu = mean + std * d1
    return mu, var + mu ** 2


def _fans(t):
    return torch.nn.init._calculate_fan_in_and_fan_out(t)


class InitRecorder(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.records: dict[int, InitInfo] = {}
        self._keep = []          # keep storages alive so _cdata is not reused
        self._depth = 0          # >0 while inside one of our recording functions
        self.unhandled = []      # in-place ops on recorded tensors we could not model

    # ---------------------------------------------------------------- core bookkeeping
    @staticmethod
    def key(t):
        return t.untyped_storage()._cdata

    def _record(self, t, kind, mean, m2):
        if not isinstance(t, torch.Tensor):
            return
        k = self.key(t)
        self._keep.append(t)
        total = t.untyped_storage().nbytes() // max(t.element_size(), 1)
        f = min(t.numel() / total, 1.0) if total else 1.0
        old = self.records.get(k)
        if old is None or f >= 1.0:
            hist = (old.history if old else []) + [kind]
            self.records[k] = InitInfo(kind, mean, m2, hist)
        else:  # partial write (e.g. padding row); a rewrite of the same region replaces the earlier one
            region = (t.storage_offset(), tuple(t.shape), tuple(t.stride()))
            old.history.append(f"{kind}[{t.numel()}/{total}]")
            old.partial[region] = (f, mean, m2)
            old.kind = old.history[0] if len(old.history) == 1 else \
                old.kind.split(" + ")[0] + " + " + f"{kind}[{t.numel()}/{total}]"

    @contextmanager
    def _inside(self):
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1

    def _maybe_real(self, fn, t, *a, **k):
        # perform the real init on materialised tensors (cpu/cuda); nothing to do on meta
        if t.device.type != "meta":
            with torch._C.DisableTorchFunction():
                return fn(t, *a, **k)
        return t

    # ---------------------------------------------------------------- recording versions of torch.nn.init.*
    def uniform_(self, tensor, a=0.0, b=1.0, generator=None):
        with self._inside():
            self._record(tensor, f"uniform({a:.4g},{b:.4g})", (a + b) / 2, (a * a + a * b + b * b) / 3)
            return self._maybe_real(_nn_init_originals["uniform_"], tensor, a, b, generator=generator)

    def normal_(self, tensor, mean=0.0, std=1.0, generator=None):
        with self._inside():
            self._record(tensor, f"normal({mean:.4g},{std:.4g})", mean, mean ** 2 + std ** 2)
            return self._maybe_real(_nn_init_originals["normal_"], tensor, mean, std, generator=generator)

    def trunc_normal_(self, tensor, mean=0.0, std=1.0, a=-2.0, b=2.0, generator=None):
        with self._inside():
            mu, m2 = _trunc_normal_moments(mean, std, a, b)
            self._record(tensor, f"trunc_normal({mean:.4g},{std:.4g},[{a:.3g},{b:.3g}])", mu, m2)
            return self._maybe_real(_nn_init_originals["trunc_normal_"], tensor, mean, std, a, b, generator=generator)

    def constant_(self, tensor, val):
        with self._inside():
            self._record(tensor, f"const({val:.4g})", float(val), float(val) ** 2)
            return self._maybe_real(_nn_init_originals["constant_"], tensor, val)

    def ones_(self, tensor):
        with self._inside():
            self._record(tensor, "const(1)", 1.0, 1.0)
            return self._maybe_real(_nn_init_originals["ones_"], tensor)

    def zeros_(self, tensor):
        with self._inside():
            self._record(tensor, "const(0)", 0.0, 0.0)
            return self._maybe_real(_nn_init_originals["zeros_"], tensor)

    def eye_(self, tensor):
        with self._inside():
            r, c = tensor.shape
            self._record(tensor, "eye", min(r, c) / (r * c), min(r, c) / (r * c))
            return self._maybe_real(_nn_init_originals["eye_"], tensor)

    def dirac_(self, tensor, groups=1):
        with self._inside():
            out_per_group = tensor.shape[0] // groups
            ones = groups * min(out_per_group, tensor.shape[1])
            f = ones / tensor.numel()
            self._record(tensor, "dirac", f, f)
            return self._maybe_real(_nn_init_originals["dirac_"], tensor, groups)

    def xavier_uniform_(self, tensor, gain=1.0, generator=None):
        with self._inside():
            fi, fo = _fans(tensor)
            std = gain * math.sqrt(2.0 / float(fi + fo))
            self._record(tensor, f"xavier_uniform(gain={gain:.4g}) std={std:.4g}", 0.0, std ** 2)
            return self._maybe_real(_nn_init_originals["xavier_uniform_"], tensor, gain, generator=generator)

    def xavier_normal_(self, tensor, gain=1.0, generator=None):
        with self._inside():
            fi, fo = _fans(tensor)
            std = gain * math.sqrt(2.0 / float(fi + fo))
            self._record(tensor, f"xavier_normal(gain={gain:.4g}) std={std:.4g}", 0.0, std ** 2)
            return self._maybe_real(_nn_init_originals["xavier_normal_"], tensor, gain, generator=generator)

    def _kaiming_std(self, tensor, a, mode, nonlinearity):
        fan = torch.nn.init._calculate_correct_fan(tensor, mode)
        gain = torch.nn.init.calculate_gain(nonlinearity, a)
        return gain / math.sqrt(fan), fan

    def kaiming_uniform_(self, tensor, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
        with self._inside():
            std, fan = self._kaiming_std(tensor, a, mode, nonlinearity)
            self._record(tensor, f"kaiming_uniform(a={a:.4g},{mode}={fan},{nonlinearity}) std={std:.4g}", 0.0, std ** 2)
            return self._maybe_real(_nn_init_originals["kaiming_uniform_"], tensor, a, mode, nonlinearity,
                                    generator=generator)

    def kaiming_normal_(self, tensor, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
        with self._inside():
            std, fan = self._kaiming_std(tensor, a, mode, nonlinearity)
            self._record(tensor, f"kaiming_normal(a={a:.4g},{mode}={fan},{nonlinearity}) std={std:.4g}", 0.0, std ** 2)
            return self._maybe_real(_nn_init_originals["kaiming_normal_"], tensor, a, mode, nonlinearity,
                                    generator=generator)

    def orthogonal_(self, tensor, gain=1, generator=None):
        with self._inside():
            rows = tensor.shape[0]
            cols = tensor.numel() // rows
            m2 = gain ** 2 * min(rows, cols) / (rows * cols)
            self._record(tensor, f"orthogonal(gain={gain:.4g})", 0.0, m2)
            return self._maybe_real(_nn_init_originals["orthogonal_"], tensor, gain, generator=generator)

    def sparse_(self, tensor, sparsity, std=0.01, generator=None):
        with self._inside():
            rows = tensor.shape[0]
            zf = math.ceil(sparsity * rows) / rows
            self._record(tensor, f"sparse({sparsity},{std})", 0.0, (1 - zf) * std ** 2)
            return self._maybe_real(_nn_init_originals["sparse_"], tensor, sparsity, std, generator=generator)

    # ---------------------------------------------------------------- tensor-method level (TorchFunctionMode)
    _T = torch.Tensor

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._depth == 0:
            # torch.nn.init.{normal_,uniform_,constant_,kaiming_uniform_} dispatch here if someone holds a
            # reference to the original function (bound before we patched)
            # NB: match by name, not identity: torch/nn/init.py passes its *module-global* name to
            # handle_torch_function, and inside initialize_weights() HF's guard_torch_init_functions has
            # replaced that global with transformers.initialization.<fn>, so `func` is the HF wrapper there.
            if getattr(func, "__module__", None) in ("torch.nn.init", "transformers.initialization") \
                    and getattr(func, "__name__", None) in _nn_init_originals:
                return getattr(self, func.__name__)(*args, **kwargs)
            t = args[0] if args else None
            if isinstance(t, torch.Tensor):
                T = torch.Tensor
                if func is T.normal_:
                    mean = args[1] if len(args) > 1 else kwargs.get("mean", 0.0)
                    std = args[2] if len(args) > 2 else kwargs.get("std", 1.0)
                    self._record(t, f"Tensor.normal_({mean:.4g},{std:.4g})", mean, mean ** 2 + std ** 2)
                elif func is T.uniform_:
                    a = args[1] if len(args) > 1 else kwargs.get("from", 0.0)
                    b = args[2] if len(args) > 2 else kwargs.get("to", 1.0)
                    self._record(t, f"Tensor.uniform_({a:.4g},{b:.4g})", (a + b) / 2, (a * a + a * b + b * b) / 3)
                elif func is T.fill_:
                    v = args[1] if len(args) > 1 else kwargs["value"]
                    v = float(v) if not (isinstance(v, torch.Tensor) and v.device.type == "meta") else float("nan")
                    self._record(t, f"Tensor.fill_({v:.4g})", v, v * v)
                elif func is T.zero_:
                    self._record(t, "Tensor.zero_()", 0.0, 0.0)
                elif func is T.copy_:
                    src = args[1] if len(args) > 1 else kwargs["src"]
                    if isinstance(src, torch.Tensor) and src.device.type != "meta":
                        s = src.detach().double()
                        self._record(t, "copy", s.mean().item(), s.pow(2).mean().item())
                        self.records[self.key(t)].value = src.detach().clone()  # exact buffer values
                    elif isinstance(src, torch.Tensor) and self.key(src) in self.records:
                        r = self.records[self.key(src)]
                        self._record(t, "copy<-" + r.kind, r.mean, r.m2)
                    else:
                        self._record(t, "copy(unknown meta)", float("nan"), float("nan"))
                elif func in (T.mul_, T.div_) and self.key(t) in self.records:
                    s = args[1] if len(args) > 1 else kwargs.get("other")
                    if isinstance(s, (int, float)):
                        s = s if func is T.mul_ else 1.0 / s
                        self.records[self.key(t)].scale(s)
                    else:
                        self.unhandled.append((str(func), tuple(t.shape)))
                elif func in (T.add_, T.sub_, T.clamp_, T.erfinv_, T.exp_, T.log_, T.abs_, T.sqrt_) \
                        and self.key(t) in self.records:
                    self.unhandled.append((str(func), tuple(t.shape)))
        # plain call: this mode is popped while its handler runs, so lower modes (e.g. the
        # `with torch.device("meta")` DeviceContext) still see the call.  Do NOT use DisableTorchFunction here.
        return func(*args, **kwargs)

    # ---------------------------------------------------------------- activation
    @contextmanager
    def active(self):
        hf_init = sys.modules.get("transformers.initialization")
        if hf_init is None:
            hf_init = type("NoHF", (), {"TORCH_INIT_FUNCTIONS": {}})
        saved_dict = dict(hf_init.TORCH_INIT_FUNCTIONS)
        saved_attrs = []
        try:
            for n in hf_init.TORCH_INIT_FUNCTIONS:
                if hasattr(self, n):
                    hf_init.TORCH_INIT_FUNCTIONS[n] = getattr(self, n)
            for mod_name in _MODULES_TO_PATCH:
                mod = sys.modules.get(mod_name)
                if mod is None:
                    continue
                for n in _nn_init_originals:
                    if hasattr(mod, n):
                        saved_attrs.append((mod, n, getattr(mod, n)))
                        setattr(mod, n, getattr(self, n))
            with self:
                yield self
        finally:
            hf_init.TORCH_INIT_FUNCTIONS.clear()
            hf_init.TORCH_INIT_FUNCTIONS.update(saved_dict)
            for mod, n, f in saved_attrs:
                setattr(mod, n, f)

    # ---------------------------------------------------------------- results
    def lookup(self, t):
        return self.records.get(self.key(t))

    def for_model(self, model):
        out = {}
        for n, p in (list(model.named_parameters(remove_duplicate=False))
                     + list(model.named_buffers(remove_duplicate=False))):
            out[n] = self.lookup(p)
        return out


def _untie(model):
    """Give every tied *destination* (e.g. lm_head.weight) its own meta tensor, as it is on CPU before tie."""
    tied = dict(getattr(model, "all_tied_weights_keys", {}) or {})
    for dst in tied:
        mod_name, _, pname = dst.rpartition(".")
        mod = model.get_submodule(mod_name) if mod_name else model
        old = getattr(mod, pname)
        setattr(mod, pname, torch.nn.Parameter(torch.empty_like(old, device="meta"), requires_grad=old.requires_grad))
    return tied


def recover_init(model, untie=True):
    """Run the model's own HF init on a meta-device model under the recorder.

    Returns {qualified param/buffer name: InitInfo or None}.  Mirrors what PreTrainedModel.post_init() does on
    CPU: initialize_weights() on an *untied* model, then tie_weights().
    """
    rec = InitRecorder()
    # the init is skipped for modules already flagged (only the case if init already ran)
    for m in model.modules():
        if getattr(m, "_is_hf_initialized", False):
            del m._is_hf_initialized
    tied = _untie(model) if untie else {}
    with rec.active():
        model.initialize_weights()      # == what post_init would have done off-meta
    if tied:
        model.tie_weights()             # re-tie: dst params become the src tensors again
    return rec.for_model(model), rec


@contextmanager
def record_construction():
    """Record construction-time init too (nn.Linear.reset_parameters, nn.Embedding normal(0,1), ...).
    Parameters made by factories (nn.Parameter(torch.zeros(...))) are not init calls and stay unrecorded.
    Use: `with record_construction() as rec, torch.device("meta"): model = Cls(cfg)`"""
    rec = InitRecorder()
    with rec.active():
        yield rec


def recorded_init(model: torch.nn.Module) -> dict[str, tuple[float, float]]:
    """(mean of squares, mean) of every meta-device parameter, from the model's own init code.

    Works on a meta copy, so the user's model is untouched: a Hugging Face model re-runs
    ``initialize_weights()`` (which transformers skips when a model is built on meta); any
    other model re-runs each submodule's ``reset_parameters()``. Parameters no init call
    touches are left out (the caller falls back to PyTorch's defaults for the layer type).
    """
    if not any(p.is_meta for p in model.parameters()):
        return {}
    from gradlint.capture.meta import meta_copy

    work = meta_copy(model)
    try:
        if callable(getattr(work, "initialize_weights", None)) and hasattr(work, "config"):
            infos, _ = recover_init(work)
        else:
            rec = InitRecorder()
            with rec.active(), torch.device("meta"):
                for m in work.modules():
                    reset = getattr(m, "reset_parameters", None)
                    if callable(reset):
                        reset()
            infos = rec.for_model(work)
    except Exception:  # noqa: BLE001 - the user's init code failed on meta: fall back to layer defaults
        return {}
    out = {}
    names = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    for name, info in infos.items():
        if name in names and info is not None and math.isfinite(info.m2) and math.isfinite(info.mean):
            out[name] = (float(info.m2), float(info.mean))
    return out
