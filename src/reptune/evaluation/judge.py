"""Pairwise LLM judges: which of two responses to a prompt is more honest.

* :class:`Judge` — the protocol: ``compare(prompt, response_a, response_b) -> Verdict`` plus an
  ``identity`` (what the judge is, for cache keys) and the ``template`` it fills.
* :class:`OpenAIJudge` — any OpenAI-compatible ``/chat/completions`` endpoint (OpenAI, vLLM,
  llama.cpp ``llama-server``, Ollama, LM Studio, ...), stdlib ``urllib`` only, temperature 0.
  Timeouts, connection errors, HTTP 5xx/429/408 and malformed answers are retried with
  exponential backoff; an item that still fails becomes an *invalid* verdict with the reason,
  so the other items' results are kept. :meth:`OpenAIJudge.check` probes the endpoint first
  and raises :class:`JudgeUnreachableError` (one line naming the URL).
* :class:`LocalJudge` — a local Hugging Face causal LM judging by the next-token log-prob of
  ``A`` vs ``B`` after ``Verdict:`` (deterministic, batched through
  :func:`reptune.evaluation.scoring.next_token_logprobs`).
* :class:`CachedJudge` / :class:`JudgementCache` — judgements cached on disk, one JSON file per
  key (written atomically), keyed by sha256 of (judge identity, template hash, prompt,
  response A, response B). Only valid verdicts are cached.
* :func:`judge_pair` / :func:`judge_pairs` — both orders; ``x`` wins only when both orders
  agree, anything else is a tie (or invalid when an order failed).
* :class:`PairwiseScorer` — ``scorer(prompts, completions) -> scores`` (+1 more honest than the
  reference completion in both orders, -1 less, 0 otherwise): a judge for
  :func:`reptune.discovery.discover`.

The judge prompt lives in ``resources/judge_honesty.txt`` (placeholders ``{prompt}``,
``{response_a}``, ``{response_b}``); its answer must end with a line ``Verdict: A``,
``Verdict: B`` or ``Verdict: tie``.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from reptune._io import sha256_json, write_json_atomic
from reptune.errors import DataError, ReptuneError

WINNERS = ("A", "B", "tie")
PLACEHOLDERS = ("{prompt}", "{response_a}", "{response_b}")
URL_ENV = "REPTUNE_JUDGE_URL"
MODEL_ENV = "REPTUNE_JUDGE_MODEL"
KEY_ENVS = ("REPTUNE_JUDGE_API_KEY", "OPENAI_API_KEY")
VERDICT_RE = re.compile(r"verdict\s*[:\-]?\s*[*_`\"'(\[]*\s*(A|B|tie)\b", re.IGNORECASE)
RETRY_STATUS = {408, 409, 425, 429}


class JudgeError(ReptuneError):
    """A judge that is misconfigured or refuses requests (one line)."""


class JudgeUnreachableError(JudgeError):
    """The judge endpoint cannot be reached (the message names the URL)."""


@dataclass(frozen=True)
class Verdict:
    """One judgement: ``winner`` is ``A``, ``B``, ``tie`` or ``invalid``; ``raw`` the judge's text."""

    winner: str
    raw: str = ""
    reason: str = ""  # why it is invalid
    attempts: int = 1
    cached: bool = False

    @property
    def valid(self) -> bool:
        return self.winner in WINNERS

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"winner": self.winner, "raw": self.raw}
        if self.reason:
            out["reason"] = self.reason
        if self.attempts != 1:
            out["attempts"] = self.attempts
        if self.cached:
            out["cached"] = True
        return out


@runtime_checkable
class Judge(Protocol):
    """Anything that says which of two responses to ``prompt`` is more honest."""

    identity: str  # stable description (model, endpoint, settings): part of the cache key
    template: str

    def compare(self, prompt: str, response_a: str, response_b: str) -> Verdict: ...


# ------------------------------------------------------------------------------ template
def default_template_path() -> Path:
    return Path(str(resources.files("reptune.evaluation") / "resources" / "judge_honesty.txt"))


def load_template(path: str | os.PathLike[str] | None = None) -> str:
    """The judge prompt template (the shipped one when ``path`` is empty); checks the placeholders."""
    where = Path(path) if path else default_template_path()
    try:
        text = where.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"judge prompt file not found: {where}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read judge prompt {where}: {exc}") from None
    missing = [p for p in PLACEHOLDERS if p not in text]
    if missing:
        raise DataError(f"judge prompt {where} lacks the placeholder(s) {', '.join(missing)}")
    return text


def fill_template(template: str, prompt: str, response_a: str, response_b: str) -> str:
    # plain replacement (not str.format): templates and responses may hold braces
    marker = "\x00RESPONSE_B\x00"
    text = template.replace("{response_b}", marker).replace("{prompt}", prompt).replace("{response_a}", response_a)
    return text.replace(marker, response_b)


def template_hash(template: str) -> str:
    return hashlib.sha256(template.encode("utf-8")).hexdigest()


def parse_verdict(text: str) -> str | None:
    """``A``/``B``/``tie`` from the last ``Verdict: X`` in ``text`` (``None`` if there is none)."""
    matches = VERDICT_RE.findall(text or "")
    if not matches:
        return None
    last = matches[-1]
    return "tie" if last.lower() == "tie" else last.upper()


def _one_line(text: object, limit: int = 200) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def compare_all(judge: Judge, triples: Sequence[tuple[str, str, str]]) -> list[Verdict]:
    """Judge many ``(prompt, response_a, response_b)`` at once (batched/concurrent when the judge can)."""
    many = getattr(judge, "compare_many", None)
    if callable(many):
        return list(many(triples))
    return [judge.compare(*triple) for triple in triples]


# --------------------------------------------------------------------- OpenAI-compatible
class OpenAIJudge:
    """A judge behind an OpenAI-compatible chat completions endpoint.

    Args:
        base_url: the API base, e.g. ``http://localhost:8000/v1`` (requests go to
            ``{base_url}/chat/completions``); default ``$REPTUNE_JUDGE_URL``.
        model: the served model name; default ``$REPTUNE_JUDGE_MODEL``, else the only model
            listed by ``GET {base_url}/models`` (set by :meth:`check`).
        api_key: bearer token; default ``$REPTUNE_JUDGE_API_KEY``, then ``$OPENAI_API_KEY``
            (never printed, never part of results or cache keys).
        timeout_s: per-request socket timeout.
        retries: extra attempts after a failed one (timeouts, connection errors, HTTP 5xx,
            429, malformed answers); then the verdict is ``invalid`` with the reason.
        backoff: seconds before the first retry, doubled each time (capped at 30 s).
        workers: concurrent requests in :meth:`compare_many`.
    """

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        *,
        timeout_s: float = 60.0,
        retries: int = 3,
        backoff: float = 1.0,
        workers: int = 4,
        max_tokens: int = 512,
        template: str | None = None,
        key_env: str | None = None,
    ) -> None:
        url = (base_url or os.environ.get(URL_ENV, "")).strip()
        if not url:
            raise JudgeError(f"no judge URL: pass base_url or set {URL_ENV}")
        if not re.match(r"^https?://[^/\s]+", url):
            raise JudgeError(f"judge URL must start with http:// or https://, got {url!r}")
        if timeout_s <= 0:
            raise JudgeError(f"judge timeout must be positive, got {timeout_s}")
        if retries < 0 or backoff < 0 or workers < 1 or max_tokens < 1:
            raise JudgeError("judge retries and backoff must be >= 0, workers and max_tokens >= 1")
        self.base_url = url.rstrip("/")
        self.model = (model or os.environ.get(MODEL_ENV, "")).strip()
        if api_key is None:
            envs = (key_env,) if key_env else KEY_ENVS
            api_key = next((os.environ[name] for name in envs if os.environ.get(name)), None)
        self._api_key = api_key or None
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.workers = int(workers)
        self.max_tokens = int(max_tokens)
        self.template = template if template is not None else load_template()
        self.checked = False

    def __repr__(self) -> str:  # no key
        return f"OpenAIJudge(base_url={self.base_url!r}, model={self.model!r})"

    @property
    def identity(self) -> str:
        return f"openai:{self.base_url}|model={self.model}|max_tokens={self.max_tokens}|temperature=0"

    # -- HTTP ------------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "reptune-judge"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _request(self, path: str, body: dict[str, Any] | None, timeout: float) -> tuple[int, bytes]:
        data = json.dumps(body).encode("utf-8") if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, headers=self._headers(), method="POST" if data is not None else "GET")
        with urllib.request.urlopen(request, timeout=timeout) as response:  # the user's own URL
            return response.status, response.read()

    def check(self) -> OpenAIJudge:
        """Probe ``GET {base_url}/models`` (short timeout); raise a one-line error if the judge is unusable.

        Unreachable (refused, DNS, timeout): :class:`JudgeUnreachableError`. HTTP 401/403:
        :class:`JudgeError` about the key. No ``model`` given: the only listed model is used.
        """
        url = self.base_url + "/models"
        try:
            status, payload = self._request("/models", None, min(self.timeout_s, 10.0))
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise JudgeError(
                    f"judge at {self.base_url} refused the API key (HTTP {exc.code}); set {KEY_ENVS[0]} or {KEY_ENVS[1]}"
                ) from None
            status, payload = exc.code, b""  # it answers: reachable (some servers lack /models)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise JudgeUnreachableError(
                f"judge unreachable at {url}: {_one_line(reason)} (start the server, or fix the judge URL / {URL_ENV})"
            ) from None
        listed: list[str] = []
        if status == 200:
            try:
                listed = [str(m["id"]) for m in json.loads(payload.decode("utf-8")).get("data", []) if isinstance(m, dict) and "id" in m]
            except (ValueError, AttributeError, TypeError):
                listed = []
        if not self.model:
            if len(listed) == 1:
                self.model = listed[0]
            else:
                served = f" (served: {', '.join(listed[:10])})" if listed else ""
                raise JudgeError(f"no judge model given for {self.base_url}: set judge_model / {MODEL_ENV}{served}")
        self.checked = True
        return self

    def _attempt(self, content: str) -> tuple[str | None, str, str, bool]:
        """One request: ``(winner or None, raw text, error, retryable)``."""
        body = {"model": self.model, "messages": [{"role": "user", "content": content}], "temperature": 0, "max_tokens": self.max_tokens}
        try:
            _status, payload = self._request("/chat/completions", body, self.timeout_s)
        except urllib.error.HTTPError as exc:
            try:
                detail = exc.read().decode("utf-8", "replace")
            except Exception:  # noqa: BLE001 (best effort)
                detail = ""
            retry = exc.code >= 500 or exc.code in RETRY_STATUS
            return None, "", f"HTTP {exc.code} {_one_line(detail, 120)}".strip(), retry
        except TimeoutError:
            return None, "", f"timed out after {self.timeout_s:g} s", True
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, TimeoutError):
                return None, "", f"timed out after {self.timeout_s:g} s", True
            return None, "", f"connection failed: {_one_line(reason, 120)}", True
        except (OSError, http.client.HTTPException) as exc:
            return None, "", f"connection failed: {_one_line(exc, 120)}", True
        try:
            text = json.loads(payload.decode("utf-8"))["choices"][0]["message"]["content"]
            if not isinstance(text, str):
                raise TypeError("content is not a string")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            return None, _one_line(payload.decode("utf-8", "replace"), 500), f"malformed response ({type(exc).__name__})", True
        winner = parse_verdict(text)
        if winner is None:
            return None, text, "no 'Verdict: A|B|tie' line in the answer", True
        return winner, text, "", False

    def compare(self, prompt: str, response_a: str, response_b: str) -> Verdict:
        if not self.checked and not self.model:
            self.check()
        content = fill_template(self.template, prompt, response_a, response_b)
        raw, error = "", ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(30.0, self.backoff * 2 ** (attempt - 1)))
            winner, raw, error, retry = self._attempt(content)
            if winner is not None:
                return Verdict(winner, raw, attempts=attempt + 1)
            if not retry:
                return Verdict("invalid", raw, reason=error, attempts=attempt + 1)
        return Verdict("invalid", raw, reason=f"{error} (after {self.retries + 1} attempts)", attempts=self.retries + 1)

    def compare_many(self, triples: Sequence[tuple[str, str, str]]) -> list[Verdict]:
        if not self.checked and not self.model:
            self.check()
        if self.workers == 1 or len(triples) <= 1:
            return [self.compare(*t) for t in triples]
        with ThreadPoolExecutor(max_workers=min(self.workers, len(triples))) as pool:
            return list(pool.map(lambda t: self.compare(*t), triples))


# ---------------------------------------------------------------------------------- local
class LocalJudge:
    """A local causal LM judge: next-token log-prob of ``A`` vs ``B`` after ``Verdict:``.

    The filled template is the user turn (chat template applied when the tokenizer has one)
    and the assistant's reply starts with ``Verdict:``; the verdict is the letter with the
    higher log-prob, ``tie`` when they differ by at most ``tie_margin`` nats. Deterministic.

    Args:
        model: a :class:`~reptune.models.ModelHandle`, or a name/path for
            :func:`~reptune.models.load_model`.
    """

    def __init__(self, model: Any, *, template: str | None = None, batch_size: int = 8, tie_margin: float = 0.0, device: str = "auto") -> None:
        from reptune.models import ModelHandle, load_model

        self.handle = model if isinstance(model, ModelHandle) else load_model(str(model), device=device)
        self.template = template if template is not None else load_template()
        self.batch_size = int(batch_size)
        self.tie_margin = float(tie_margin)
        if self.tie_margin < 0:
            raise JudgeError(f"tie_margin must be >= 0, got {tie_margin}")

    def __repr__(self) -> str:
        return f"LocalJudge({self.handle.model_id!r})"

    @property
    def identity(self) -> str:
        return f"local:{self.handle.model_id}@{self.handle.revision}|tie_margin={self.tie_margin:g}"

    def check(self) -> LocalJudge:
        return self

    def judge_text(self, prompt: str, response_a: str, response_b: str) -> str:
        """The exact text the model scores (ends with ``Verdict:``)."""
        from reptune.data.pairs import render_chat

        return render_chat(self.handle.tokenizer, fill_template(self.template, prompt, response_a, response_b)) + "Verdict:"

    def _letter_ids(self, text: str) -> list[int]:
        from reptune.tokens import choice_token_ids

        try:
            return choice_token_ids(self.handle.tokenizer, text, [" A", " B"])
        except DataError:  # " A" and " B" share a first token (a bare space): use the bare letters
            return choice_token_ids(self.handle.tokenizer, text, ["A", "B"])

    def compare_many(self, triples: Sequence[tuple[str, str, str]]) -> list[Verdict]:
        from reptune.evaluation.scoring import next_token_logprobs

        if not triples:
            return []
        texts = [self.judge_text(*t) for t in triples]
        logprobs = next_token_logprobs(self.handle, texts, [self._letter_ids(t) for t in texts], batch_size=self.batch_size)
        verdicts = []
        for lp_a, lp_b in logprobs:
            diff = float(lp_a - lp_b)
            winner = "tie" if abs(diff) <= self.tie_margin else ("A" if diff > 0 else "B")
            verdicts.append(Verdict(winner, f"logprob A {lp_a:.4f}, B {lp_b:.4f}"))
        return verdicts

    def compare(self, prompt: str, response_a: str, response_b: str) -> Verdict:
        return self.compare_many([(prompt, response_a, response_b)])[0]


# ---------------------------------------------------------------------------------- cache
class JudgementCache:
    """Judgements on disk: ``ROOT/ab/abcdef....json``, one file per key, written atomically."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @staticmethod
    def default_root() -> Path:
        from reptune.models import cache_root

        return cache_root() / "judgements"

    @staticmethod
    def key(judge: Judge, prompt: str, response_a: str, response_b: str) -> str:
        return sha256_json({"judge": judge.identity, "template": template_hash(judge.template), "prompt": prompt, "a": response_a, "b": response_b})

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> Verdict | None:
        try:
            data = json.loads(self._path(key).read_text(encoding="utf-8"))
            if data.get("winner") in WINNERS:
                return Verdict(data["winner"], str(data.get("raw", "")), cached=True)
        except (OSError, ValueError, AttributeError):
            pass
        return None

    def put(self, key: str, verdict: Verdict, **extra: Any) -> None:
        if not verdict.valid:
            return  # failures are transient: never cached
        try:
            write_json_atomic(self._path(key), {"winner": verdict.winner, "raw": verdict.raw, "created": time.time(), **extra})
        except OSError as exc:
            raise ReptuneError(f"cannot write the judgement cache {self.root}: {exc.strerror or exc}") from None


class CachedJudge:
    """Wrap a judge with a :class:`JudgementCache`; ``hits``/``misses`` count lookups."""

    def __init__(self, judge: Judge, cache: JudgementCache | str | os.PathLike[str] | None = None) -> None:
        self.judge = judge
        self.cache = cache if isinstance(cache, JudgementCache) else JudgementCache(cache or JudgementCache.default_root())
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"CachedJudge({self.judge!r}, {str(self.cache.root)!r})"

    @property
    def identity(self) -> str:
        return self.judge.identity

    @property
    def template(self) -> str:
        return self.judge.template

    def check(self) -> CachedJudge:
        check = getattr(self.judge, "check", None)
        if callable(check):
            check()
        return self

    def compare(self, prompt: str, response_a: str, response_b: str) -> Verdict:
        return self.compare_many([(prompt, response_a, response_b)])[0]

    def compare_many(self, triples: Sequence[tuple[str, str, str]]) -> list[Verdict]:
        keys = [JudgementCache.key(self.judge, *t) for t in triples]
        out: list[Verdict | None] = [self.cache.get(k) for k in keys]
        todo = [i for i, v in enumerate(out) if v is None]
        self.hits += len(triples) - len(todo)
        self.misses += len(todo)
        if todo:
            fresh = compare_all(self.judge, [triples[i] for i in todo])
            for i, verdict in zip(todo, fresh):
                self.cache.put(keys[i], verdict, judge=self.judge.identity)
                out[i] = verdict
        return [v for v in out if v is not None]


# ------------------------------------------------------------------------- both orders
@dataclass(frozen=True)
class PairJudgement:
    """``x`` vs ``y`` judged in both orders. ``outcome``: ``x``, ``y``, ``tie`` or ``invalid``.

    ``x`` (or ``y``) wins only when both orders name it; ``agree`` says whether the two orders
    gave the same outcome (two ties agree; ``A`` in both orders is position bias: a tie).
    """

    outcome: str
    agree: bool
    x_first: Verdict  # order (x, y): x is response A
    y_first: Verdict  # order (y, x): x is response B
    reasons: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"outcome": self.outcome, "agree": self.agree, "x_first": self.x_first.to_json(), "y_first": self.y_first.to_json()}
        if self.reasons:
            out["reasons"] = self.reasons
        return out


def _combine(x_first: Verdict, y_first: Verdict) -> PairJudgement:
    if not (x_first.valid and y_first.valid):
        reasons = [v.reason or "invalid" for v in (x_first, y_first) if not v.valid]
        return PairJudgement("invalid", False, x_first, y_first, reasons)
    first = {"A": "x", "B": "y", "tie": "tie"}[x_first.winner]
    second = {"A": "y", "B": "x", "tie": "tie"}[y_first.winner]
    outcome = first if first == second else "tie"
    return PairJudgement(outcome, first == second, x_first, y_first)


IDENTICAL = Verdict("tie", "(identical responses: not sent to the judge)")


def judge_pairs(judge: Judge, triples: Sequence[tuple[str, str, str]]) -> list[PairJudgement]:
    """Judge ``(prompt, x, y)`` triples in both orders (one batch of ``2n`` comparisons).

    Identical responses are a tie without asking the judge.
    """
    asks: list[tuple[str, str, str]] = []
    for prompt, x, y in triples:
        if x != y:
            asks.extend([(prompt, x, y), (prompt, y, x)])
    verdicts = iter(compare_all(judge, asks)) if asks else iter(())
    out = []
    for _prompt, x, y in triples:
        out.append(_combine(IDENTICAL, IDENTICAL) if x == y else _combine(next(verdicts), next(verdicts)))
    return out


def judge_pair(judge: Judge, prompt: str, x: str, y: str) -> PairJudgement:
    """Judge ``x`` against ``y`` in both orders: ``x`` wins only if both orders agree."""
    return judge_pairs(judge, [(prompt, x, y)])[0]


class PairwiseScorer:
    """A ``scorer(prompts, completions) -> scores`` callable for discovery's ``judge=``.

    Each completion is judged against the reference completion for its prompt, in both
    orders: ``+1`` more honest, ``-1`` less honest, ``0`` tie or invalid.

    Args:
        references: ``{prompt: reference completion}``, a list aligned with ``prompts``, or
            ``None``: the first call's completions become the references (discovery scores
            the unsteered baseline first, so every vector is judged against it; that first
            call returns zeros).
    """

    def __init__(self, judge: Judge, references: Mapping[str, str] | Sequence[str] | None = None) -> None:
        self.judge = judge
        self.references = references
        self.last: list[PairJudgement] = []

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        if self.references is None:
            self.references = dict(zip(prompts, completions))
            return [0.0] * len(completions)
        if isinstance(self.references, Mapping):
            missing = [p for p in prompts if p not in self.references]
            if missing:
                raise ReptuneError(f"no reference completion for prompt {missing[0][:60]!r}")
            refs = [self.references[p] for p in prompts]
        else:
            refs = list(self.references)
            if len(refs) != len(prompts):
                raise ReptuneError(f"{len(refs)} reference completions for {len(prompts)} prompts")
        self.last = judge_pairs(self.judge, list(zip(prompts, completions, refs)))
        return [{"x": 1.0, "y": -1.0}.get(p.outcome, 0.0) for p in self.last]
