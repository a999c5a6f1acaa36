"""The task registry: built-in tasks named as ``"module:Class"``, each module imported only when asked for.

Also pinned: the task modules import no other task module (only the shared
``evaluation/tasks/base.py``), the former import paths still work, and every built-in task's
cache fingerprint is the one it had before the tasks were split into modules (a changed
fingerprint silently throws away every interrupted run's cache).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from reptune.errors import ReptuneError
from reptune.evaluation import Task, available_tasks, get_task, register_task
from reptune.evaluation.registry import BUILTIN_TASKS, TASKS, task_class

SRC = Path(__file__).resolve().parents[1] / "src"
TASKS_DIR = SRC / "reptune" / "evaluation" / "tasks"
TASK_PACKAGE = "reptune.evaluation.tasks"

# every built-in task in one fresh interpreter: what importing the registry loads, then what
# asking for each task by name loads
PROBE = """
import json, sys
import reptune.evaluation.registry as registry
def loaded():
    return sorted(m for m in sys.modules if m == "{package}" or m.startswith("{package}."))
steps = [["<registry>", loaded()]]
for name in registry.BUILTIN_TASKS:
    registry.task_class(name)
    steps.append([name, loaded()])
print(json.dumps(steps))
""".replace("{package}", TASK_PACKAGE)


def _module(entry: str) -> str:
    return entry.partition(":")[0]


@pytest.fixture(scope="module")
def probe() -> list[tuple[str, list[str]]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return [tuple(step) for step in json.loads(done.stdout.strip().splitlines()[-1])]


def test_importing_the_registry_imports_no_task_module(probe):
    name, loaded = probe[0]
    assert name == "<registry>"
    assert loaded == []


def test_each_task_imports_only_its_own_module(probe):
    asked: set[str] = set()
    for name, loaded in probe[1:]:
        asked.add(_module(BUILTIN_TASKS[name]))
        assert _module(BUILTIN_TASKS[name]) in loaded, name
        # the package, the shared base module and the modules of the tasks asked for so far: nothing else
        assert set(loaded) <= asked | {TASK_PACKAGE, f"{TASK_PACKAGE}.base"}, name


@pytest.mark.parametrize("name", sorted(BUILTIN_TASKS))
def test_every_builtin_entry_names_its_task_class(name):
    cls = task_class(name)
    assert isinstance(cls, type) and issubclass(cls, Task)
    assert cls.name == name
    assert f"{cls.__module__}:{cls.__qualname__}" == BUILTIN_TASKS[name]


def test_the_listing_covers_the_table():
    listed = {entry.partition(":")[0] for entry in available_tasks()}
    assert set(BUILTIN_TASKS) <= listed
    assert "caa:<behaviour>" in available_tasks() and "lm-eval:<task>" in available_tasks()


def test_a_builtin_name_cannot_be_registered_again():
    class Impostor(Task):
        name = "mmlu"

    with pytest.raises(ValueError, match="task name 'mmlu' already registered by MMLU"):
        register_task(Impostor)
    assert "mmlu" not in TASKS or TASKS["mmlu"].__name__ == "MMLU"


def test_task_modules_import_no_other_task_module():
    """Shared helpers live in tasks/base.py; no task module imports another's names, private ones least of all."""
    bad = []
    for path in sorted(TASKS_DIR.glob("*.py")):
        if path.name in {"__init__.py", "base.py"}:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [alias.name for alias in node.names]
                if node.module.startswith(TASK_PACKAGE) and node.module != f"{TASK_PACKAGE}.base" or node.module == TASK_PACKAGE:
                    bad.append(f"{path.name}:{node.lineno} imports {node.module}")
                elif node.module.startswith("reptune.evaluation") and any(n.startswith("_") for n in names):
                    bad.append(f"{path.name}:{node.lineno} imports private {names} from {node.module}")
            elif isinstance(node, ast.Import) and any(alias.name.startswith(TASK_PACKAGE) for alias in node.names):
                bad.append(f"{path.name}:{node.lineno} imports a task module")
    assert bad == []


def test_former_import_paths_still_work():
    from reptune.evaluation import judge as old_judge
    from reptune.evaluation import judges
    from reptune.evaluation import projection as old_projection
    from reptune.evaluation import robustness as old_robustness
    from reptune.evaluation.tasks import base, projection, robustness

    assert old_judge.PairwiseScorer is judges.PairwiseScorer and set(old_judge.__all__) == set(judges.__all__)
    for name in judges.__all__:
        assert getattr(old_judge, name) is getattr(judges, name), name
    assert old_robustness.run_robustness is robustness.run_robustness
    assert old_robustness.RobustnessResult is robustness.RobustnessResult
    assert old_projection.token_projections is projection.token_projections
    assert old_projection.direction_at is base.direction_at


class _StubJudge:
    identity = "stub-judge"
    template = "{prompt} {response_a} {response_b}"

    def compare(self, prompt, response_a, response_b):  # pragma: no cover - never called
        raise AssertionError


# each task's cache fingerprint for model "m" at revision "r" and data hash "d", as the code before
# the split (evaluation/tasks.py and its siblings) computed it: a change here invalidates caches
FINGERPRINTS = {
    "facts-ab": "8b4bd4c2fa0198e98777ff55ba06bd6deceaa25b0f547c8feafb6a500caae1de",
    "facts-twin": "29c46ac422a5069c84dc6647ae3919e6d3c45d89d0540df26ce759a0a07d7df4",
    "facts-word": "4d97dd06f66e6ba586a3cd6490fe10b1484ef0d4a865555cb12b74952a471ea8",
    "gcg": "0d193833821dbce9b30fa6c28f958df4eac589342217a06eaf22f08340538aa5",
    "kl": "350bd0c422c049a25e329e93ab412a4c7dc881f12f1a440c8b9e434e6e04c057",
    "mmlu": "98d278a7ec608c20984678e2f7f794e8ba19fb4ba33e5fa73ef730bed49aae00",
    "perplexity": "2a5593a0d1967c69e9579ca657ad112055fc0ffc3d0bdea1eadf567041f51491",
    "projection": "aaf94392f005577e15a0aab27b2b56d5f23a68cb95be43e219d0ea66601f13f8",
    "robustness": "1ce487633af5a27e118cc880bef36e2870d95bc92647178a6cded7946260f906",
    "tqa-ab": "941a0ed225064d8dac0bf8e67a7c8fb0995c049914f8f71ae40f43199967328b",
    "tqa-mc1": "21b3875eae16e698e511f3cfa9c1cd769e0f40c3145bf9f4f22d41ca6e17366b",
    "tqa-mc2": "dc128b4b2f3971fc4775da01135bdbed11457d9b1571966c35b52b9414c15f4a",
    "caa:sycophancy": "c95234ab41dcf100935160ad7c08c0bce190473d13299213f17edaf805d77b2b",
    "openended": "11a76fca554aeca867db4689eedac64215c8c0ca4ddf2199e91e70500d17d392",
    "lm-eval:arc_easy": "b3644e2ce088eb4ad7624af1817d4060e4a2cf71830fd2eda236004409481278",
}


def test_task_fingerprints_are_unchanged():
    handle = SimpleNamespace(model_id="m", revision="r")
    built = {name: get_task(name) for name in BUILTIN_TASKS if not task_class(name).parametrised and name != "openended"}
    built["caa:sycophancy"] = get_task("caa:sycophancy")
    built["openended"] = get_task("openended", judge=_StubJudge(), judge_cache="none")
    expected = dict(FINGERPRINTS)
    try:
        built["lm-eval:arc_easy"] = get_task("lm-eval:arc_easy")
    except ReptuneError:  # lm-eval is not installed: the task cannot be built at all
        expected.pop("lm-eval:arc_easy")
    assert {name: task.fingerprint(handle, "d") for name, task in built.items()} == expected
