"""The built-in evaluation tasks, one module per task family.

Nothing is imported here: :mod:`reptune.evaluation.registry` names every built-in task as
``"module:Class"`` and imports a module only when one of its tasks is asked for.

| module | tasks |
|---|---|
| :mod:`~reptune.evaluation.tasks.base` | (shared: the A/B base class, answer parsing, choice metrics, vector helpers) |
| :mod:`~reptune.evaluation.tasks.facts_ab` | ``facts-ab`` |
| :mod:`~reptune.evaluation.tasks.facts` | ``facts-twin``, ``facts-word`` |
| :mod:`~reptune.evaluation.tasks.truthfulqa` | ``tqa-ab``, ``tqa-mc1``, ``tqa-mc2`` |
| :mod:`~reptune.evaluation.tasks.mmlu` | ``mmlu`` |
| :mod:`~reptune.evaluation.tasks.perplexity` | ``perplexity``, ``kl`` |
| :mod:`~reptune.evaluation.tasks.caa` | ``caa:<behaviour>`` |
| :mod:`~reptune.evaluation.tasks.openended` | ``openended`` (LLM-judged generations) |
| :mod:`~reptune.evaluation.tasks.robustness` | ``robustness`` (a task under a layers x multipliers grid) |
| :mod:`~reptune.evaluation.tasks.projection` | ``projection`` (per-token cosine to a vector) |
| :mod:`~reptune.evaluation.tasks.lmeval` | ``lm-eval:<task>`` |
| :mod:`~reptune.evaluation.tasks.gcg` | ``gcg`` (adversarial suffixes) |
"""
