"""Pairwise LLM judges: which of two responses to a prompt is more honest. One module per job:

* :mod:`~reptune.evaluation.judges.base` — :class:`Judge`, the protocol: ``compare(prompt,
  response_a, response_b) -> Verdict`` plus an ``identity`` (what the judge is, for cache keys)
  and the ``template`` it fills; :class:`Verdict`, the errors, the template and verdict parsing.
* :mod:`~reptune.evaluation.judges.endpoint` — :class:`OpenAIJudge`: any OpenAI-compatible
  ``/chat/completions`` endpoint (OpenAI, vLLM, llama.cpp ``llama-server``, Ollama, LM Studio,
  ...), stdlib ``urllib`` only, temperature 0. Timeouts, connection errors, HTTP 5xx/429/408 and
  malformed answers are retried with exponential backoff; an item that still fails becomes an
  *invalid* verdict with the reason, so the other items' results are kept.
  :meth:`OpenAIJudge.check` probes the endpoint first and raises :class:`JudgeUnreachableError`
  (one line naming the URL).
* :mod:`~reptune.evaluation.judges.local` — :class:`LocalJudge`: a local Hugging Face causal LM
  judging by the next-token log-prob of ``A`` vs ``B`` after ``Verdict:`` (deterministic,
  batched through :func:`reptune.evaluation.scoring.next_token_logprobs`).
* :mod:`~reptune.evaluation.judges.cache` — :class:`CachedJudge` / :class:`JudgementCache`:
  judgements cached on disk, one JSON file per key (written atomically), keyed by sha256 of
  (judge identity, template hash, prompt, response A, response B). Only valid verdicts are cached.
* :mod:`~reptune.evaluation.judges.pairwise` — :func:`judge_pair` / :func:`judge_pairs`: both
  orders; ``x`` wins only when both orders agree, anything else is a tie (or invalid when an
  order failed). :class:`PairwiseScorer`: ``scorer(prompts, completions) -> scores`` (+1 more
  honest than the reference completion in both orders, -1 less, 0 otherwise): a judge for
  :func:`reptune.discovery.discover`.

The judge prompt lives in ``resources/judge_honesty.txt`` (placeholders ``{prompt}``,
``{response_a}``, ``{response_b}``); its answer must end with a line ``Verdict: A``,
``Verdict: B`` or ``Verdict: tie``.
"""

from reptune.evaluation.judges.base import (
    PLACEHOLDERS,
    VERDICT_RE,
    WINNERS,
    Judge,
    JudgeError,
    JudgeUnreachableError,
    Verdict,
    compare_all,
    default_template_path,
    fill_template,
    load_template,
    parse_verdict,
    template_hash,
)
from reptune.evaluation.judges.cache import CachedJudge, JudgementCache
from reptune.evaluation.judges.endpoint import KEY_ENVS, MODEL_ENV, RETRY_STATUS, URL_ENV, OpenAIJudge
from reptune.evaluation.judges.local import LocalJudge
from reptune.evaluation.judges.pairwise import IDENTICAL, PairJudgement, PairwiseScorer, judge_pair, judge_pairs

__all__ = [
    "IDENTICAL",
    "KEY_ENVS",
    "MODEL_ENV",
    "PLACEHOLDERS",
    "RETRY_STATUS",
    "URL_ENV",
    "VERDICT_RE",
    "WINNERS",
    "CachedJudge",
    "Judge",
    "JudgeError",
    "JudgeUnreachableError",
    "JudgementCache",
    "LocalJudge",
    "OpenAIJudge",
    "PairJudgement",
    "PairwiseScorer",
    "Verdict",
    "compare_all",
    "default_template_path",
    "fill_template",
    "judge_pair",
    "judge_pairs",
    "load_template",
    "parse_verdict",
    "template_hash",
]
