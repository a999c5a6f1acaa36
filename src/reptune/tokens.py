"""Model-input helpers shared by every stage: answer-token ids, ``logits_to_keep``, left
padding, JSONL reading.

* :func:`next_token_ids` / :func:`choice_token_ids` / :func:`letter_token_ids`: the id of each
  answer string *as the model would produce it right after a prompt* (tokenise
  ``prompt + choice`` and take the first token past the prompt, so tokenisers that merge a
  leading space or newline still give the right id; when the prompt's tokens change, the first
  token of the choice alone);
* :func:`first_token_id`: the first token of a string on its own (logit readouts);
* :func:`forward_keeping_logits`: a forward pass that computes only the logits asked for,
  when the model class takes ``logits_to_keep``;
* :func:`cache_argument` / :func:`output_cache`: the KV cache's name in and out of a forward
  (it was renamed within transformers 5.x);
* :func:`left_pad`: token-id rows to a left-padded ``[batch, width]`` batch;
* :func:`jsonl_records`: the one JSON-lines reader (blank lines skipped, one-line errors
  naming file and line).

(Normalising "a SteeringVector or ``{layer: tensor}``" needs the vector class, so it lives with
it: :func:`reptune.vectors.as_vector`.)
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

from reptune.errors import DataError, ReptuneError

LETTERS = ("A", "B")


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def next_token_ids(tokenizer: Any, prompt: str, choices: Sequence[str]) -> list[int]:
    """First token id of each choice string as produced right after ``prompt`` (not checked for
    distinctness; see :func:`choice_token_ids`)."""
    base = _ids(tokenizer, prompt)
    ids = []
    for choice in choices:
        full = _ids(tokenizer, prompt + choice)
        if full[: len(base)] == base and len(full) > len(base):
            ids.append(full[len(base)])
        else:  # the prompt's own tokens changed (a merge across the boundary): the choice alone
            ids.append(_ids(tokenizer, choice)[0])
    return ids


def choice_token_ids(tokenizer: Any, prompt: str, choices: Sequence[str]) -> list[int]:
    """First token id of each choice string as produced right after ``prompt`` (distinct ids).

    Raises:
        DataError: two choices start with the same token.
    """
    ids = next_token_ids(tokenizer, prompt, choices)
    if len(set(ids)) != len(ids):
        raise DataError(f"the tokenizer maps the choices {list(choices)} to the same first token")
    return ids


def letter_token_ids(tokenizer: Any, prompt: str = "") -> tuple[int, int]:
    """Token ids of the answer letters ``A`` and ``B`` as the model would produce them right
    after ``prompt``.

    Raises:
        DataError: both letters map to the same token.
    """
    first, second = next_token_ids(tokenizer, prompt, LETTERS)
    if first == second:
        raise DataError("the tokenizer maps the answer letters A and B to the same token")
    return first, second


def first_token_id(tokenizer: Any, text: str) -> int | None:
    """The first token of ``text`` alone (no special tokens); ``None`` if it encodes to none."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    return int(ids[0]) if ids else None


def forward_keeping_logits(model: torch.nn.Module, kwargs: dict[str, Any], keep: int | torch.Tensor) -> tuple[Any, bool]:
    """``model(**kwargs, logits_to_keep=keep)``, or a plain call for a model class without it.

    Args:
        keep: ``logits_to_keep``: an int (the last ``keep`` positions; 0 = all) or a tensor of
            position indices.

    Returns:
        ``(output, kept)``: ``kept`` is False when the model took no ``logits_to_keep``, so its
        logits ``[batch, seq, vocab]`` cover every position.
    """
    try:
        return model(**kwargs, logits_to_keep=keep), True
    except TypeError:  # an older model class without logits_to_keep
        return model(**kwargs), False


def cache_argument(model: torch.nn.Module) -> str:
    """The name ``model.forward`` takes a KV cache under: ``cache`` (transformers >= 5.2x, which
    warns on the old name) or ``past_key_values`` (earlier 5.x, and wrappers such as peft's)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def output_cache(output: Any) -> Any:
    """The KV cache a forward returned (``output.cache`` or, on older versions, ``past_key_values``)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def set_output_cache(output: Any, cache: Any) -> None:
    """Replace the KV cache a forward returned (under whichever name :func:`output_cache` reads)."""
    if "cache" in getattr(output, "__dataclass_fields__", {}):
        output.cache = cache
    else:
        output.past_key_values = cache


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad token-id rows into one batch.

    Returns:
        ``(input_ids, attention_mask, position_ids)``, each ``[len(rows), max row length]``
        (long, on ``device``); position ids count real tokens only (0 on padding).
    """
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        if row:
            ids[index, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
            mask[index, width - len(row) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


def jsonl_records(
    lines: Iterable[str],
    where: str,
    *,
    error: type[ReptuneError] = DataError,
    bad_json: str = "{where}:{number}: invalid JSON ({msg})",
    too_deep: str = "{where}:{number}: JSON nested too deeply to read",
) -> Iterator[tuple[int, Any]]:
    """Parse JSON lines: yields ``(line number, value)`` for every non-blank line (1-based).

    Args:
        lines: the file's lines (a list, or a generator that decodes lazily).
        where: the file name used in messages.
        error: the exception class raised (a :class:`ReptuneError`).
        bad_json / too_deep: message templates (fields ``where``, ``number``, ``msg``,
            ``lineno``) for a line that is not JSON / nested too deeply for Python.
    """
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(bad_json.format(where=where, number=number, msg=exc.msg, lineno=exc.lineno)) from None
        except RecursionError:
            raise error(too_deep.format(where=where, number=number)) from None
        yield number, value
