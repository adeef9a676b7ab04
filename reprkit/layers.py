"""Layer specs -> decoder-block indices and module names.

Layer ``i`` is the output of decoder block ``i``. A spec may be

- an int, negative ints counting from the end (``-1`` is the last block);
- a float fraction of depth in ``[0, 1]`` (``0.33`` -> ``int(0.33 * n_layers)``);
- a range string as in ReprPO, ``"range(.3,-2)"`` or ``"range(2,20,4)"``: Python ``range``
  semantics, so **the end is exclusive** (``"range(0,1.0,3)"`` on 30 blocks is 0, 3, ..., 27 and
  leaves out block 29; ``"range(0,30,3)"`` or ``"range(2,30,3)"`` ends at the last block when 29 is
  on the step), where each bound may itself be a fraction or negative;
- ``"all"`` (or ``":"``): every block;
- a ``slice``, a string ``"5:10"``, a comma-separated string ``"3,10,-1"``;
- a dotted module name (``"model.layers.3"`` or ``"model.layers.3.mlp"``);
- a list or tuple of any of these.

>>> sel = select_layers(model, "range(.3,-2)")
>>> sel.indices, sel.names
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

# attribute paths of the decoder-block list in common architectures, most specific first
_KNOWN_BLOCK_LISTS = ("layers", "h", "blocks", "block", "layer", "decoder_layers")


@dataclass(frozen=True)
class LayerSelection:
    """Resolved layers: block ``indices`` (sorted, unique) and the module ``names`` to hook.

    ``names[k]`` belongs to block ``block_of[k]`` (the block that contains the module, or None for a
    module outside the decoder blocks, e.g. the embeddings).
    """

    indices: tuple[int, ...]
    names: tuple[str, ...]
    block_of: tuple[int | None, ...]
    num_layers: int
    block_names: tuple[str, ...] = ()  # the module name of each of ``indices``

    @property
    def last(self) -> int | None:
        """The deepest block any selected module lives in (where a forward may stop)."""
        blocks = [b for b in self.block_of if b is not None]
        return max(blocks) if blocks else None


def find_blocks(model: nn.Module, block_name: str | None = None) -> tuple[list[str], list[nn.Module]]:
    """Return (names, modules) of the decoder blocks of a causal LM, in forward order.

    Works through peft wrappers (names then carry peft's ``base_model.model.`` prefix, as
    ``model.named_modules()`` reports them). ``block_name`` is the block's class name
    (e.g. ``"LlamaDecoderLayer"``) for architectures the search does not recognise.
    """
    if block_name is not None:
        found = [(n, m) for n, m in model.named_modules() if type(m).__name__ == block_name]
        if not found:
            classes = sorted({type(m).__name__ for m in model.modules()})
            raise ValueError(
                f"no module of class {block_name!r} in {type(model).__name__}; "
                f"classes present include {classes[:12]}"
            )
        return [n for n, _ in found], [m for _, m in found]

    candidates = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf in _KNOWN_BLOCK_LISTS:
            candidates.append((len(module), name, module))
    if not candidates:
        raise ValueError(
            f"could not find the decoder blocks of {type(model).__name__}; pass block_name= "
            "with the decoder block's class name (e.g. block_name='LlamaDecoderLayer')"
        )
    # the decoder stack is the longest homogeneous block list (vision towers etc. are shorter)
    _, name, blocks = max(candidates, key=lambda c: c[0])
    return [f"{name}.{i}" for i in range(len(blocks))], list(blocks)


def _index(value: int | float, n: int, *, end: bool = False) -> int:
    """One bound -> a block index. Floats are fractions of depth; negatives count from the end."""
    if isinstance(value, bool):
        raise ValueError(f"layer spec {value!r} is a bool, not a layer")
    if isinstance(value, float):
        if not -1.0 <= value <= 1.0:
            raise ValueError(f"fractional layer {value} must lie in [-1, 1]")
        value = int(value * n)
    original = value
    if value < 0:
        value = n + value
    upper = n if end else n - 1
    if not 0 <= value <= upper:
        raise ValueError(f"layer {original!r} is out of range")
    return value


def _number(text: str) -> int | float:
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        return float(text)


_RANGE = re.compile(r"^\s*range\((.*)\)\s*$")


def _expand(spec, n: int, names: set[str]) -> list[int | str]:
    """Expand one spec into block indices (ints) and module names (strs)."""
    if isinstance(spec, (list, tuple)):
        return [x for item in spec for x in _expand(item, n, names)]
    if isinstance(spec, slice):
        return [*range(n)][spec]
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return [_index(spec, n)]
    if isinstance(spec, str):
        s = spec.strip()
        if s in names:
            return [s]
        if s.lower() == "all":
            return [*range(n)]
        if m := _RANGE.match(s):
            parts = [_number(p) for p in m.group(1).split(",")]
            if not 1 <= len(parts) <= 3 or (len(parts) == 3 and not isinstance(parts[2], int)):
                raise ValueError(f"bad range spec {spec!r}: use range(start, stop[, step])")
            if len(parts) == 1:
                parts = [0, parts[0]]
            start, stop = _index(parts[0], n, end=True), _index(parts[1], n, end=True)
            step = int(parts[2]) if len(parts) == 3 else 1  # an int: checked above
            return [*range(start, stop, step)]
        if "," in s:
            return [x for part in s.split(",") if part.strip() for x in _expand(part, n, names)]
        if ":" in s:
            bounds = [int(p) if p.strip() else None for p in s.split(":")]
            return [*range(n)][slice(*bounds)]
        try:
            return [_index(_number(s), n)]
        except ValueError as err:
            if "could not convert" not in str(err) and "invalid literal" not in str(err):
                raise
        raise ValueError(f"{spec!r} is neither a layer number, a range nor a module name")
    raise ValueError(f"layer spec of type {type(spec).__name__} is not supported: {spec!r}")


def select_layers(model: nn.Module, spec, block_name: str | None = None) -> LayerSelection:
    """Resolve ``spec`` against ``model``'s decoder blocks. See the module docstring for specs.

    Raises ``ValueError`` naming the valid range and some real module names.
    """
    block_names, _ = find_blocks(model, block_name)
    n = len(block_names)
    all_names = {name for name, _ in model.named_modules() if name}
    try:
        items = _expand(spec, n, all_names)
    except ValueError as err:
        raise ValueError(_help(f"bad layer spec {spec!r}: {err}", block_names)) from None
    if not items:
        raise ValueError(_help(f"layer spec {spec!r} selects no layers", block_names))

    entries: dict[str, int | None] = {}
    for item in items:
        if isinstance(item, int):
            entries[block_names[item]] = item
        else:
            entries[item] = _containing_block(item, block_names)
    order = sorted(entries, key=lambda k: (entries[k] is None, entries[k] or 0, k))
    # modules outside the blocks (embeddings) run first; put them first
    order = [k for k in order if entries[k] is None] + [k for k in order if entries[k] is not None]
    indices = tuple(sorted({b for k, b in entries.items() if k in block_names and b is not None}))
    return LayerSelection(
        indices=indices,
        names=tuple(order),
        block_of=tuple(entries[k] for k in order),
        num_layers=n,
        block_names=tuple(block_names[i] for i in indices),
    )


def _containing_block(name: str, block_names: list[str]) -> int | None:
    for i, block in enumerate(block_names):
        if name == block or name.startswith(block + "."):
            return i
    return None


def _help(message: str, block_names: list[str]) -> str:
    n = len(block_names)
    shown = block_names[:2] + ["..."] + block_names[-1:] if n > 3 else block_names
    return (
        f"{message}. The model has {n} decoder blocks: valid layers are 0..{n - 1} "
        f"(or -{n}..-1, fractions 0.0..1.0, 'range(a,b)', 'a:b'), or module names such as "
        f"{', '.join(shown)}"
    )


def block_indices(model: nn.Module, spec, block_name: str | None = None) -> list[int]:
    """The decoder-block indices a layer spec selects, the same specs as ``capture`` takes (``5``,
    ``[5, 6]``, ``"5:7"``, ``"range(.3,-2)"``, ``-1``, ``0.5``) resolved by ``select_layers``, with its
    error where the spec is bad. Every argument of reprkit that takes layers goes through here or
    ``select_layers``. A module name that is not a block is refused: these arguments take blocks."""
    selection = select_layers(model, spec, block_name=block_name)
    others = [name for name in selection.names if name not in selection.block_names]
    if others:
        raise ValueError(_help(f"layer spec {spec!r} names module(s) {others[:3]} that are not decoder blocks; "
                               "this argument takes blocks", list(find_blocks(model, block_name)[0])))
    return list(selection.indices)
