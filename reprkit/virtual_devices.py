"""Device bugs found without a GPU: every tensor gets a virtual device, and an operation that mixes
two of them without an explicit move fails, as it would on CUDA.

>>> with virtual_devices(model, split=False) as vd:   # the whole model on cuda:0, as model.to("cuda")
...     batch = {k: v.to(vd.input_device) for k, v in batch.items()}   # forgetting this fails the forward
...     model(**batch)
>>> with virtual_devices(model):                      # embedding + first half of the blocks on cuda:0, the rest on cuda:1
...     ...                                           # a mask built beside the input meets states on cuda:1: fails

- ``model``: split like a ``device_map`` over ``devices`` (two virtual devices by default): the input
  embedding and the first half of the decoder blocks on the first, the rest, the final norm and the
  LM head on the last; every other module outside the blocks (rotary embeddings) on the first.
- Each of those modules moves its inputs to its own device when it runs, as accelerate's
  ``AlignDevicesHook`` does under a ``device_map``; its parameters, buffers and gradients live there.
- A tensor made without a device (``torch.tensor(...)``, a collated batch) is on ``"cpu"``, the host.
- ``Tensor.device`` answers the virtual device, so code that follows devices (``x.to(h.device)``,
  ``torch.zeros(..., device=h.device)``) works as it would on the real machine.
- Allowed as on CUDA: zero-dimensional CPU tensors beside device tensors (Python-scalar-like), CPU
  index tensors into a device tensor, ``copy_`` across devices (and so ``t[i, :n] = v`` with plain
  indices), ``p.data = t`` (``p`` is then where ``t`` is), ``.item()`` and ``.tolist()``.
  Refused: any other mix (``VirtualDeviceError`` names the operation and the devices), and
  ``.numpy()`` of a device tensor.

All arithmetic really runs on the CPU: this checks where tensors are said to be, not kernels.
Optimiser internals (``torch._foreach_*``) are not checked: PyTorch groups their tensors by device
itself. ``tests/test_virtual_devices.py`` shows the harness failing on seeded device bugs and runs
reprkit's capabilities under it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode

TAG = "_reprkit_virtual_device"
HOST = "cpu"


class VirtualDeviceError(RuntimeError):
    """An operation mixed tensors on two (virtual) devices without an explicit move."""


def device_of(t: torch.Tensor) -> str:
    """The virtual device of ``t`` (``"cpu"`` unless something put it elsewhere)."""
    return getattr(t, TAG, HOST)


def _tag(t, device: str):
    if isinstance(t, torch.Tensor):
        try:
            setattr(t, TAG, device)
        except (AttributeError, RuntimeError):  # some C-level tensors refuse attributes
            pass
    elif isinstance(t, (tuple, list)):
        for x in t:
            _tag(x, device)
    return t


def _tensors(obj, out: list, depth: int = 0) -> list:
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif depth < 3 and isinstance(obj, (tuple, list)):
        for x in obj:
            _tensors(x, out, depth + 1)
    elif depth < 3 and isinstance(obj, dict):
        for x in obj.values():
            _tensors(x, out, depth + 1)
    return out


def _name(device) -> str | None:
    """A device argument as a virtual device name, or None where it is not one."""
    if isinstance(device, torch.Tensor):
        return device_of(device)
    if isinstance(device, int) and not isinstance(device, bool):
        return f"cuda:{device}"
    if isinstance(device, (str, torch.device)):
        d = torch.device(device)
        if d.type == "cpu":
            return HOST
        return f"{d.type}:{d.index or 0}"
    return None


_MOVES = {torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.cpu}
_LIKE = {torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like, torch.rand_like, torch.randn_like,
         torch.randint_like}
_NEW = {torch.Tensor.new_zeros, torch.Tensor.new_ones, torch.Tensor.new_empty, torch.Tensor.new_full,
        torch.Tensor.new_tensor}
_INDEXING = {torch.Tensor.__getitem__, torch.Tensor.__setitem__, torch.Tensor.index_put_, torch.Tensor.index_put}
_ANY_DEVICE = {torch.Tensor.copy_, torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__len__,
               torch.Tensor.dim, torch.Tensor.size, torch.Tensor.numel, torch.Tensor.__bool__,
               torch.Tensor.__repr__, torch.Tensor.__format__, torch.Tensor.data_ptr,
               torch._has_compatible_shallow_copy_type}  # Module.to asks it of a parameter and its moved copy


class _Mode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name == "__get__":  # a property
            attr = getattr(getattr(func, "__self__", None), "__name__", None)
            if attr == "device":
                return torch.device(device_of(args[0]))
            if attr == "is_cuda":
                return device_of(args[0]) != HOST
            out = func(*args, **kwargs)  # .T, .mT, .data, .grad, ...: beside the tensor they come from
            if isinstance(out, torch.Tensor) and TAG not in out.__dict__ and isinstance(args[0], torch.Tensor):
                _tag(out, device_of(args[0]))
            return out
        if name == "__set__" and getattr(getattr(func, "__self__", None), "__name__", None) == "data":
            func(*args, **kwargs)  # `p.data = t`: allowed across devices, as on CUDA; p is now where t is
            _tag(args[0], device_of(args[1]))
            return None
        if name.startswith("_foreach") or name == "_group_tensors_by_device_and_dtype":
            return func(*args, **kwargs)
        if func in _MOVES:
            return self._move(func, args, kwargs)
        if func is torch.Tensor.numpy and device_of(args[0]) != HOST:
            raise VirtualDeviceError(f"numpy() of a tensor on {device_of(args[0])}: move it with .cpu() first")
        if "device" in kwargs:  # a factory: the tensor is made where it was asked for
            target = _name(kwargs["device"])
            kwargs = {**kwargs, "device": "cpu"}
            return _tag(func(*args, **kwargs), target or HOST)
        if func in _LIKE or func in _NEW:
            return _tag(func(*args, **kwargs), device_of(args[0]))
        if func is torch.autograd.grad:  # the engine runs each device's part where it is, as on CUDA
            inputs = kwargs.get("inputs", args[1] if len(args) > 1 else None)
            inputs = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
            out = func(*args, **kwargs)
            return tuple(g if g is None else _tag(g, device_of(x)) for g, x in zip(out, inputs))
        if func in _ANY_DEVICE:
            out = func(*args, **kwargs)
            return _tag(out, device_of(args[0])) if func is torch.Tensor.copy_ else out
        device = self._common(func, args, kwargs)
        if func is torch.histc and not args[0].is_floating_point():  # an accelerator kernel the CPU lacks
            return _tag(torch.histc(args[0].float(), *args[1:], **kwargs).to(args[0].dtype), device)
        return _tag(func(*args, **kwargs), device)

    @staticmethod
    def _move(func, args, kwargs):
        t = args[0]
        if func is torch.Tensor.cpu:
            target, rest, rest_kw = HOST, (), kwargs
        elif func is torch.Tensor.cuda:
            target = _name(args[1] if len(args) > 1 else kwargs.get("device", 0)) or "cuda:0"
            rest, rest_kw = (), {k: v for k, v in kwargs.items() if k != "device"}
        else:
            target, rest = None, []
            for a in args[1:]:
                named = _name(a) if not isinstance(a, torch.dtype) else None
                if named is not None and target is None:
                    target = named
                    if isinstance(a, torch.Tensor):  # .to(other): its dtype too
                        rest.append(a.dtype)
                else:
                    rest.append(a)
            rest_kw = dict(kwargs)
            if "device" in rest_kw:
                target = _name(rest_kw.pop("device"))
            if target is not None and len(args) > 1 and _name(args[1]) is not None and not isinstance(args[1], torch.Tensor):
                # .to(device, dtype, non_blocking, copy) by position, as Module.to calls it: the rest by name
                names = ("dtype", "non_blocking", "copy")
                rest_kw.update({n: v for n, v in zip(names, args[2:]) if not (n == "dtype" and v is None)})
                rest = [a for a in args[2 + len(names):]]
            rest = tuple(rest)
        real = torch.Tensor.to(t, *rest, **rest_kw) if (rest or rest_kw) else t
        target = target or device_of(t)
        if real is t:
            if target == device_of(t):
                return t
            real = t.clone()  # a copy, as a move to another device makes (in-place changes stay apart)
        return _tag(real, target)

    @staticmethod
    def _common(func, args, kwargs) -> str:
        if func in _INDEXING:
            base = args[0]
            device = device_of(base)
            for t in _tensors(args[1:2], []):  # indices: on the host or beside the tensor
                if device_of(t) not in (HOST, device):
                    raise VirtualDeviceError(f"{_label(func)}: a tensor on {device} indexed with an index on "
                                             f"{device_of(t)}")
            basic = not _tensors(args[1:2], [])  # t[i, :n] = v copies (copy_ crosses devices); t[mask] = v does not
            for t in _tensors(list(args[2:]) + list(kwargs.values()), []):
                if basic and func is torch.Tensor.__setitem__:
                    continue
                if device_of(t) != device and not (t.dim() == 0 and device_of(t) == HOST):
                    raise VirtualDeviceError(f"{_label(func)}: a tensor on {device} assigned values on {device_of(t)}")
            return device
        tensors = _tensors(list(args) + list(kwargs.values()), [])
        devices = {device_of(t) for t in tensors if not (t.dim() == 0 and device_of(t) == HOST)}
        if len(devices) > 1:
            raise VirtualDeviceError(f"{_label(func)} mixes tensors on {sorted(devices)} without an explicit move")
        if devices:
            return devices.pop()
        return next((device_of(t) for t in tensors), HOST)


def _device_module(kind: str, count: int):
    """A stand-in for ``torch.cuda`` under the virtual device type: the CPU's functions, plus what
    autocast and checkpointing ask of an accelerator's module."""
    import types

    module = types.ModuleType(f"torch.{kind}")
    for name in dir(torch.cpu):
        if not name.startswith("__"):
            setattr(module, name, getattr(torch.cpu, name))
    module.is_available = lambda: True
    module.device_count = lambda: count
    module.current_device = lambda: 0
    module.get_amp_supported_dtype = lambda: [torch.bfloat16, torch.float16]
    module.is_bf16_supported = lambda *a, **k: True
    return module


def _label(func) -> str:
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))


@dataclass
class VirtualDevices:
    """What ``virtual_devices`` set up: ``input_device`` (where the embedding lives) and the
    device of each decoder block (``block_devices``)."""

    input_device: torch.device
    block_devices: list[str]
    module_devices: dict[str, str] = field(default_factory=dict)


def _send(obj, device: str):
    """``obj`` with every tensor in it (tuples, lists, dicts) moved to ``device``, as accelerate's
    ``send_to_device`` does; other objects (caches) as they are."""
    if isinstance(obj, torch.Tensor):  # a copy said to be there (not .to(): a backward recompute runs outside the mode)
        return _tag(obj.clone(), device) if device_of(obj) != device else obj
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_send(x, device) for x in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(_send(x, device) for x in obj)
    if isinstance(obj, dict):
        return {k: _send(v, device) for k, v in obj.items()}
    return obj


def _place(model, devices: tuple[str, ...]) -> dict[str, str]:
    """A ``device_map``-like placement: ``{module name: device}`` for the modules that hold
    parameters or buffers of their own or are decoder blocks."""
    from .layers import find_blocks

    names, _ = find_blocks(model)
    n = len(names)
    per = max(1, -(-n // len(devices)))
    blocks = {name: devices[min(i // per, len(devices) - 1)] for i, name in enumerate(names)}
    inner = getattr(model, "module", model)
    try:
        head = inner.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        head = None
    head_names = {name for name, m in model.named_modules() if m is head}
    placement = dict(blocks)
    for name, module in model.named_modules():
        if not name or any(name == b or name.startswith(b + ".") for b in names):
            continue
        own = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
        if not own:
            continue
        last = name in head_names or name.split(".")[-1] in ("norm", "final_layernorm", "ln_f", "norm_f", "final_norm")
        tied = name in head_names and head.weight is inner.get_input_embeddings().weight
        placement[name] = devices[-1] if last and not tied else devices[0]  # a tied head lives with the embedding
    return placement


@contextlib.contextmanager
def virtual_devices(model, devices: tuple[str, ...] = ("privateuseone:0", "privateuseone:1"), split: bool = True):
    """Run the body with ``model`` split over virtual ``devices`` (``split``: as a ``device_map``
    does, each module moving its inputs to itself) or wholly on the first (``split=False``: as
    ``model.to("cuda")`` does, nothing moved for you), and every tensor operation checked for a
    device mix (see the module docstring). Undone on exit: hooks are removed, the mode ends."""
    from .layers import find_blocks

    devices = tuple(devices) if split else tuple(devices[:1])
    for kind in {torch.device(d).type for d in devices}:  # code that asks torch for the device's module
        if not hasattr(torch, kind):                       # (torch.utils.checkpoint, autocast) gets a CPU-like one
            torch._register_device_module(kind, _device_module(kind, len(devices)))
    placement = _place(model, devices)
    modules = dict(model.named_modules())
    handles = []
    blocks = set(find_blocks(model)[0])
    weight_device: dict[int, str] = {}
    for name, device in placement.items():
        for p in list(modules[name].parameters(recurse=name in blocks)) + list(modules[name].buffers(recurse=name in blocks)):
            weight_device.setdefault(id(p), device)
    for name, device in placement.items():
        module = modules[name]

        def pre_hook(mod, args, kwargs, device=device):
            for p in list(mod.parameters()) + list(mod.buffers()):  # adapters added after set-up too
                if TAG not in p.__dict__:
                    _tag(p, device)
            return (_send(args, device), _send(kwargs, device)) if split else None

        handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True, prepend=True))
    for p in list(model.parameters()) + list(model.buffers()):
        if id(p) in weight_device:
            _tag(p, weight_device[id(p)])
    def grad_beside(q):  # a gradient lives where its parameter does
        _tag(q.grad, device_of(q))

    for p in model.parameters():
        if p.requires_grad:
            handles.append(p.register_post_accumulate_grad_hook(grad_beside))
    names, _ = find_blocks(model)
    inner = getattr(model, "module", model)
    first = torch.device(weight_device.get(id(inner.get_input_embeddings().weight), devices[0]))
    info = VirtualDevices(first, [placement[n] for n in names], placement)
    try:
        with _Mode():
            yield info
    finally:
        for h in handles:
            h.remove()


def put(t: torch.Tensor, device) -> torch.Tensor:
    """``t`` said to be on ``device`` (a virtual one), outside the mode: for a test's inputs."""
    return _tag(t.clone(), _name(device) or HOST)
