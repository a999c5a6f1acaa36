"""``perplexity`` and ``kl``: how much steering or tuning changes the model's language.

| task | items | scoring | primary metric |
|---|---|---|---|
| ``perplexity`` | WikiText-2 sliding windows | token-weighted NLL | perplexity |
| ``kl`` | a text corpus | mean next-token KL(reference || model) | kl |
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from reptune._io import sha256_json
from reptune.data.sources import read_source
from reptune.errors import DataError, ReptuneError
from reptune.evaluation import data as evaldata
from reptune.evaluation.registry import RunContext, Task
from reptune.evaluation.scoring import prompt_token_ids, sliding_windows, token_row_logprobs
from reptune.evaluation.statistics import bootstrap_ratio_ci
from reptune.evaluation.tasks.base import Advance
from reptune.models import ModelHandle
from reptune.steering import paused
from reptune.tokens import left_pad


class Perplexity(Task):
    name = "perplexity"
    description = "WikiText-2 perplexity: sliding window (window, stride), token-weighted; --limit counts windows"
    primary = "perplexity"
    binary_key = None
    continuous_key = "nll_per_token"
    defaults: ClassVar[dict[str, Any]] = {"data": "wikitext2", "window": 512, "stride": 256}
    chunk_items = 16

    def load_items(self, handle: ModelHandle, limit: int | None) -> tuple[list[dict[str, Any]], str, str]:
        window, stride = int(self.options["window"]), int(self.options["stride"])
        sliding_windows(10**6, window, stride)  # validates the options before reading data
        text, origin, digest = evaldata.load_text(self.options["data"])
        if limit is not None:  # read only what the first `limit` windows need (generous: 16 chars per token)
            needed = 16 * (window + limit * stride + 1)
            while True:
                ids = handle.tokenizer(text[:needed], add_special_tokens=False, verbose=False)["input_ids"]
                if needed >= len(text) or len(ids) > window + limit * stride:
                    break
                needed *= 2
        else:
            ids = handle.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        self._tokens = list(ids)
        windows = sliding_windows(len(self._tokens), window, stride)
        if limit is not None:
            windows = windows[:limit]
        items = [{"id": f"w{index}", "begin": b, "end": e, "n_target": n} for index, (b, e, n) in enumerate(windows)]
        return items, origin, digest

    def score(self, handle: ModelHandle, items: Sequence[dict[str, Any]], *, batch_size: int, context: RunContext, advance: Advance) -> list[dict[str, Any]]:
        rows = [(self._tokens[item["begin"] : item["end"]], item["n_target"]) for item in items]
        scores = token_row_logprobs(handle, rows, batch_size=batch_size, advance=advance)
        return [
            {"begin": item["begin"], "end": item["end"], "n_tokens": s.n_tokens, "nll": -s.logprob, "nll_per_token": -s.logprob / s.n_tokens}
            for item, s in zip(items, scores)
        ]

    def summarize(self, records: Sequence[dict[str, Any]], seed: int) -> dict[str, dict[str, Any]]:
        return perplexity_metrics([r["nll"] for r in records], [r["n_tokens"] for r in records], seed=seed)


def perplexity_metrics(nll: Sequence[float], n_tokens: Sequence[int], *, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Token-weighted NLL and perplexity, with a bootstrap CI over windows done in log space.

    The CI is taken on the mean NLL (a ratio of sums, windows resampled whole) and then
    exponentiated: exp is monotone, so percentiles carry over and nothing underflows.
    """
    total_nll = float(np.sum(np.asarray(nll, dtype=np.float64)))
    total = int(np.sum(np.asarray(n_tokens, dtype=np.int64)))
    mean = total_nll / total
    low, high = bootstrap_ratio_ci(nll, n_tokens, seed=seed)
    return {
        "perplexity": {"value": math.exp(mean), "ci_low": math.exp(low) if not math.isnan(low) else math.nan,
                       "ci_high": math.exp(high) if not math.isnan(high) else math.nan, "n": len(nll), "ci": "bootstrap-windows", "tokens": total},
        "nll_per_token": {"value": mean, "ci_low": low, "ci_high": high, "n": len(nll), "ci": "bootstrap-windows", "tokens": total},
    }


# --------------------------------------------------------------------------------------- KL
class KL(Task):
    name = "kl"
    description = "mean next-token KL(reference || model) on a corpus (reference: another model, else the unsteered model)"
    primary = "kl"
    binary_key = None
    continuous_key = "kl"
    defaults: ClassVar[dict[str, Any]] = {"data": "wikitext2", "reference": "", "max_tokens": 128, "max_items": 200}
    chunk_items = 32

    def load_items(self, handle: ModelHandle, limit: int | None) -> tuple[list[dict[str, Any]], str, str]:
        spec = self.options["data"]
        if spec == "neutral":  # reptune's shipped neutral sentences: KL without any downloaded data
            from importlib import resources

            spec = str(resources.files("reptune.data") / "resources" / "neutral_text.txt")
        try:
            source = read_source(spec)
        except DataError:
            source = None
        if source is not None and source.kind == "statements":
            texts, origin = [s.text for s in source.records], source.origin
        else:
            text, origin, _ = evaldata.load_text(spec)
            texts = [line.strip() for line in text.splitlines() if len(line.strip()) > 40 and not line.strip().startswith("=")]
        texts = texts[: int(self.options["max_items"])]
        if not texts:
            raise DataError(f"{origin}: no texts for kl")
        items = [{"id": str(index), "text": text} for index, text in enumerate(texts)]
        return items, origin, sha256_json(texts)

    def _reference(self, handle: ModelHandle) -> ModelHandle | None:
        if not self.options["reference"]:
            return None
        if getattr(self, "_ref", None) is None:
            from reptune.models import load_model

            self._ref = load_model(self.options["reference"], device=str(handle.device), autocast=handle.autocast_dtype)
            if self._ref.model.get_output_embeddings().weight.shape[0] != handle.model.get_output_embeddings().weight.shape[0]:
                raise ReptuneError("kl: the reference model has a different vocabulary size")
        return self._ref

    @torch.inference_mode()
    def score(self, handle: ModelHandle, items: Sequence[dict[str, Any]], *, batch_size: int, context: RunContext, advance: Advance) -> list[dict[str, Any]]:
        reference = self._reference(handle)
        tokenizer = handle.tokenizer
        limit = int(self.options["max_tokens"])
        rows = [prompt_token_ids(tokenizer, item["text"])[:limit] for item in items]
        if reference is None and context.steering is None:
            # the model against itself: exactly 0 at every token, no forward pass needed
            advance(len(rows))
            return [{"kl_sum": 0.0, "n_tokens": len(row), "kl": 0.0} for row in rows]
        records = []
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            ids, mask, positions = left_pad(chunk, tokenizer.pad_token_id, handle.device)
            kwargs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "use_cache": False}
            with handle.autocast():
                logp = torch.log_softmax(handle.model(**kwargs).logits.float(), dim=-1)
            ref_handle = reference or handle
            with paused(context.steering if reference is None else None), ref_handle.autocast():
                ref_logp = torch.log_softmax(ref_handle.model(**kwargs).logits.float(), dim=-1)
            kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1).double()  # [b, seq]
            real = mask.bool()
            for row in range(len(chunk)):
                values = kl[row][real[row]]
                records.append({"kl_sum": float(values.sum()), "n_tokens": int(values.numel()), "kl": float(values.mean())})
            advance(len(chunk))
        return records

    def summarize(self, records: Sequence[dict[str, Any]], seed: int) -> dict[str, dict[str, Any]]:
        sums = [r["kl_sum"] for r in records]
        counts = [r["n_tokens"] for r in records]
        low, high = bootstrap_ratio_ci(sums, counts, seed=seed)
        return {"kl": {"value": float(np.sum(sums) / np.sum(counts)), "ci_low": low, "ci_high": high, "n": len(records), "ci": "bootstrap", "tokens": int(np.sum(counts))}}
