"""The one site convention shared by extraction, steering, tuning and discovery.

**Layer L** is the residual stream at the *output of decoder block L* (0-based; negative
indices count from the end, so ``-1`` is the last block). With ``transformers``'
``output_hidden_states=True`` this is ``hidden_states[L + 1]`` (``hidden_states[0]`` is the
embedding output) for every block except the last: for ``L = num_layers - 1`` transformers
returns the output *after* the final norm, while reptune's layer ``-1`` is the raw block output.
Reading, steering and tuning at layer L all hook the same module (``layers[L]``) and read or
change its output, so a vector read at layer L is added back at exactly the place it came from,
and a vector added at layer L first shows up in ``hidden_states[L + 1]``.

llama.cpp control vectors use the same numbering: tensor ``direction.L`` is added to the output
of block L (their layer 0 cannot carry a vector; see :mod:`reptune.vectors`).

**Positions** (which tokens are read, or steered) are given as a :class:`Positions` or a
spec string:

=================  ==============================================================
``all``            every real (non-padding) token
``last`` / ``last:N``  the last N tokens of the input (default 1)
``marker:TEXT``    the last token of the last occurrence of ``TEXT`` in the input;
``marker:TEXT:K``  ... shifted by K tokens (K may be negative: ``marker:Answer:-1``)
``generated``      the completion tokens of a (prompt, completion) example; while
                   steering, the tokens produced by ``generate`` (not the prompt)
=================  ==============================================================

Layer specs: ``15``, ``-1``, ``10-17`` (inclusive), ``-8..-1`` (inclusive, negatives allowed),
``10,12,14``, ``all``, and ``middle`` (the middle third of the stack).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from reptune.errors import ReptuneError

SITE_CONVENTION = "block_output"  # stored in vector metadata; the only convention reptune writes
SITE_CONVENTION_DOC = "layer L = output of decoder block L (0-based) = hidden_states[L+1]"


def parse_layers(spec: str | int | Iterable[int] | None, num_layers: int) -> list[int]:
    """Turn a layer spec into sorted, de-duplicated, non-negative block indices.

    Args:
        spec: ``None``/``"all"`` (every block), an int, an iterable of ints, or a string
            like ``"10-17"``, ``"-8..-1"``, ``"3,5,-1"``, ``"middle"`` (the middle third,
            ``n // 3 <= L < 2n // 3``). An empty string is refused.
        num_layers: number of decoder blocks of the model.

    Raises:
        ReptuneError: unknown syntax or a layer outside ``[-num_layers, num_layers)``.
    """
    if spec is None:
        return list(range(num_layers))
    if isinstance(spec, bool):
        raise ReptuneError(f"invalid layer spec {spec!r}")
    if isinstance(spec, int):
        return [normalize_layer(spec, num_layers)]
    if not isinstance(spec, str):
        layers = [normalize_layer(int(item), num_layers) for item in spec]
        if not layers:
            raise ReptuneError("empty layer list")
        return sorted(set(layers))
    text = spec.strip().lower()
    if not text:  # an unset shell variable (--layers "$L"), not a wish for every layer
        raise ReptuneError("empty layer spec: name layers (e.g. 15, 10-17) or all")
    if text == "all":
        return list(range(num_layers))
    if text == "middle":
        return list(range(num_layers // 3, max(num_layers // 3 + 1, (2 * num_layers) // 3)))
    layers: list[int] = []
    for part in text.split(","):
        part = part.strip()
        match = re.fullmatch(r"(-?\d+)\s*(?:\.\.|(?<=\d)-)\s*(-?\d+)", part)
        if match:
            start = normalize_layer(int(match.group(1)), num_layers)
            stop = normalize_layer(int(match.group(2)), num_layers)
            if stop < start:
                raise ReptuneError(f"layer range {part!r} runs backwards")
            layers.extend(range(start, stop + 1))
        elif re.fullmatch(r"-?\d+", part):
            layers.append(normalize_layer(int(part), num_layers))
        else:
            raise ReptuneError(f"invalid layer spec {spec!r}: use e.g. 15, -1, 10-17, -8..-1, 3,5,7, all or middle")
    return sorted(set(layers))


def normalize_layer(layer: int, num_layers: int) -> int:
    """Map a possibly negative layer index to ``[0, num_layers)``, or raise ReptuneError."""
    if not -num_layers <= layer < num_layers:
        raise ReptuneError(f"layer {layer} is out of range: the model has {num_layers} layers (0..{num_layers - 1})")
    return layer % num_layers


@dataclass(frozen=True)
class Positions:
    """Which token positions of an input are read (or steered).

    Attributes:
        kind: ``all``, ``last``, ``marker`` or ``generated``.
        count: for ``last``: how many final tokens.
        marker: for ``marker``: the string whose last token anchors the position.
        offset: for ``marker``: tokens after (positive) or before (negative) the anchor.
    """

    kind: str = "last"
    count: int = 1
    marker: str | None = None
    offset: int = 0

    def __post_init__(self) -> None:
        if self.kind not in {"all", "last", "marker", "generated"}:
            raise ReptuneError(f"unknown positions kind {self.kind!r}: use all, last[:N], marker:TEXT[:K] or generated")
        if self.kind == "last" and self.count < 1:
            raise ReptuneError(f"positions last:{self.count} must select at least one token")
        if self.kind == "marker" and not self.marker:
            raise ReptuneError("positions marker needs a non-empty marker string, e.g. marker:Answer:")

    @classmethod
    def parse(cls, spec: str | Positions) -> Positions:
        """Parse ``all``, ``last``, ``last:N``, ``marker:TEXT``, ``marker:TEXT:K`` or ``generated``."""
        if isinstance(spec, Positions):
            return spec
        text = spec.strip()
        if text in {"all", "generated", "last"}:
            return cls(kind=text)
        if text.startswith("last:"):
            try:
                count = int(text[5:])
            except ValueError:
                raise ReptuneError(f"invalid positions {spec!r}: last:N needs an integer N") from None
            return cls(kind="last", count=count)
        if text.startswith("marker:"):
            body = spec.split("marker:", 1)[1]
            marker, sep, tail = body.rpartition(":")
            if sep and re.fullmatch(r"[+-]?\d+", tail.strip()):
                return cls(kind="marker", marker=marker, offset=int(tail))
            return cls(kind="marker", marker=body)
        raise ReptuneError(f"invalid positions {spec!r}: use all, last, last:N, marker:TEXT[:K] or generated")

    def spec(self) -> str:
        """The spec string this object parses from (stored in vector metadata)."""
        if self.kind == "last":
            return "last" if self.count == 1 else f"last:{self.count}"
        if self.kind == "marker":
            return f"marker:{self.marker}" + (f":{self.offset:+d}" if self.offset else "")
        return self.kind

    def mask(
        self,
        attention_mask: torch.Tensor,
        offsets: Sequence[Sequence[tuple[int, int]]] | None = None,
        texts: Sequence[str] | None = None,
        completion_starts: Sequence[int | None] | None = None,
    ) -> torch.Tensor:
        """Boolean mask ``[batch, seq]`` of the selected positions.

        Args:
            attention_mask: ``[batch, seq]``, 1 for real tokens (left or right padding).
            offsets: per row, the ``(start, end)`` character span of each token, aligned with
                ``attention_mask`` columns (needed for ``marker`` and ``generated``).
            texts: the input strings (needed for ``marker``).
            completion_starts: per row, the character index where the completion starts
                (needed for ``generated``).

        Raises:
            ReptuneError: a marker not found in a text, or a completion with no tokens.
        """
        real = attention_mask.bool()
        if self.kind == "all":
            return real
        batch, seq = real.shape
        # rank of each real token counted from the end: 0 for the last real token
        from_end = real.flip(-1).long().cumsum(-1).flip(-1) - 1
        if self.kind == "last":
            return real & (from_end < self.count)
        if offsets is None:
            raise ReptuneError(f"positions {self.spec()!r} need token offsets (use a fast tokenizer)")
        out = torch.zeros_like(real)
        for row in range(batch):
            spans = offsets[row]
            cols = [col for col in range(seq) if real[row, col]]
            if self.kind == "generated":
                start_char = completion_starts[row] if completion_starts is not None else None
                if start_char is None:
                    raise ReptuneError("positions 'generated' need (prompt, completion) examples")
                chosen = [col for col in cols if spans[col][1] > start_char and spans[col][1] > spans[col][0]]
                if not chosen:
                    raise ReptuneError(f"example {row} has an empty completion: nothing for positions 'generated'")
                out[row, chosen] = True
                continue
            assert texts is not None and self.marker is not None
            char = texts[row].rfind(self.marker)
            if char < 0:
                raise ReptuneError(f"marker {self.marker!r} not found in input: {texts[row][:60]!r}")
            end_char = char + len(self.marker)
            anchor = None
            for idx, col in enumerate(cols):
                start, end = spans[col]
                if start < end_char and end > start >= 0:
                    anchor = idx
            if anchor is None:
                raise ReptuneError(f"marker {self.marker!r} maps to no token in input: {texts[row][:60]!r}")
            target = anchor + self.offset
            if not 0 <= target < len(cols):
                raise ReptuneError(f"marker {self.marker!r} offset {self.offset:+d} falls outside the input")
            out[row, cols[target]] = True
        return out


def block_output_tensor(output: object) -> torch.Tensor:
    """The hidden-state tensor ``[batch, seq, hidden]`` from a decoder block's output.

    Blocks return a bare tensor (Llama-style in transformers 5) or a tuple whose first item
    is the hidden state (GPT-2, NeoX and older layouts).
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    hidden = getattr(output, "hidden_states", None)
    if isinstance(hidden, torch.Tensor):
        return hidden
    raise TypeError(f"cannot find the hidden state in a block output of type {type(output).__name__}")


def replace_block_output(output: object, hidden: torch.Tensor) -> object:
    """Return ``output`` with its hidden-state tensor replaced by ``hidden``."""
    if isinstance(output, torch.Tensor):
        return hidden
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    if isinstance(output, list):
        return [hidden, *output[1:]]
    output.hidden_states = hidden  # type: ignore[attr-defined]
    return output
