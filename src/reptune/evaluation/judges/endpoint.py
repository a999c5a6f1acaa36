"""A judge behind any OpenAI-compatible ``/chat/completions`` endpoint (stdlib ``urllib`` only).

OpenAI, vLLM, llama.cpp ``llama-server``, Ollama, LM Studio, ...; temperature 0. Timeouts,
connection errors, HTTP 5xx/429/408 and malformed answers are retried with exponential backoff;
an item that still fails becomes an *invalid* verdict with the reason, so the other items'
results are kept. :meth:`OpenAIJudge.check` probes the endpoint first and raises
:class:`~reptune.evaluation.judges.base.JudgeUnreachableError` (one line naming the URL).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from reptune.evaluation.judges.base import JudgeError, JudgeUnreachableError, Verdict, fill_template, load_template, parse_verdict

URL_ENV = "REPTUNE_JUDGE_URL"
MODEL_ENV = "REPTUNE_JUDGE_MODEL"
KEY_ENVS = ("REPTUNE_JUDGE_API_KEY", "OPENAI_API_KEY")
RETRY_STATUS = {408, 409, 425, 429}


def _one_line(text: object, limit: int = 200) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


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
