"""Judgements cached on disk: one JSON file per key (written atomically); only valid verdicts are kept.

The key is the sha256 of (judge identity, template hash, prompt, response A, response B).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reptune._io import sha256_json, write_json_atomic
from reptune.errors import ReptuneError
from reptune.evaluation.judges.base import WINNERS, Judge, Verdict, compare_all, template_hash


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
