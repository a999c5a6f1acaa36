"""DiscoverConfig: one dataclass for every setting of discover(), checked before model work, saved
beside the vectors, the same checks (and words, with the flags) for the CLI and the Python API."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_model

from reptune.discovery import DiscoverConfig, DiscoveryError, discover
from reptune.discovery.config import config_path
from reptune.discovery.search import SearchSpec
from reptune.errors import ReptuneError

TEXTS = ["The sky is blue. The grass is green.", "Hello world", "Cats are mammals."]


@pytest.fixture(scope="module")
def llama():
    return build_model("llama")


def test_defaults_are_the_former_keyword_defaults():
    config = DiscoverConfig()
    assert (config.method, config.radius, config.num, config.steps, config.lr, config.p, config.q) == (
        "melbo",
        "auto",
        8,
        300,
        1e-3,
        2.0,
        1.0,
    )
    assert config.validate() is config


def test_json_round_trip_with_search_settings(tmp_path):
    span = torch.randn(2, 32, generator=torch.Generator().manual_seed(0))
    config = DiscoverConfig(
        method="cmaes",
        radius="2.5",
        num=1,
        logit_tokens=["Sure", "Sorry"],
        match=["x"],
        tune_norm=(1, 2),
        search=SearchSpec(budget=24, subspace="span", subspace_vectors=span, population=6),
    )
    assert (
        config.radius == 2.5
        and config.logit_tokens == ("Sure", "Sorry")
        and config.match == ("x",)
        and config.tune_norm == [1, 2]
    )
    data = json.loads(json.dumps(config.to_dict()))
    again = DiscoverConfig.from_dict(data)
    assert again.to_dict() == config.to_dict()
    assert torch.equal(again.search.subspace_vectors, span)
    path = config.save(tmp_path / "c.json")
    assert DiscoverConfig.load(path).to_dict() == config.to_dict()
    with pytest.raises(DiscoveryError, match="unknown discovery setting"):
        DiscoverConfig.from_dict({**data, "colour": "red"})


@pytest.mark.parametrize(
    "settings, python, flags",
    [
        ({"method": "pca"}, "unknown discovery method 'pca'", "unknown --method 'pca'"),
        ({"lr": float("nan")}, "lr must be a finite number > 0", "--lr must be a finite number > 0"),
        ({"num": 0}, "number of vectors must be at least 1", "--num must be at least 1"),
        ({"radius": "wide"}, "radius must be a number > 0 or 'auto'", "--radius must be a number > 0 or 'auto'"),
        ({"source": 3, "target": 1}, "source 3 must come before target 1", "--source 3 must come before --target 1"),
        (
            {"orthogonal_order": "both"},
            "orthogonal order must be sequential or parallel",
            "--orthogonal-order must be sequential or parallel",
        ),
        (
            {"side_effect_penalty": 1.0},
            "side-effect penalty needs side-effect prompts",
            "--side-effect-penalty needs --side-effects",
        ),
        ({"method": "anneal", "search": SearchSpec(budget=0)}, "budget must be at least 1", "--budget must be at least 1"),
        ({"num": True}, "number of vectors must be an integer", "--num must be an integer"),
    ],
)
def test_validate_speaks_python_or_the_flags(settings, python, flags):
    names = {
        "method": "--method",
        "lr": "--lr",
        "num": "--num",
        "radius": "--radius",
        "source": "--source",
        "target": "--target",
        "orthogonal_order": "--orthogonal-order",
        "side_effect_penalty": "--side-effect-penalty",
        "side_effects": "--side-effects",
        "budget": "--budget",
    }
    config = DiscoverConfig(**settings)
    with pytest.raises(DiscoveryError, match=python) as error:
        config.validate()
    assert "\n" not in str(error.value) and issubclass(DiscoveryError, ReptuneError)
    with pytest.raises(DiscoveryError, match=flags):
        config.validate(names)


@pytest.mark.parametrize("mode, num", [("free", 1), ("free", 2), ("free", 5), ("gradient", 2), ("gradient", 5)])
def test_a_too_small_anneal_budget_names_the_smallest_that_works(mode, num):

    from reptune.discovery.search import check_search

    def check(budget: int) -> None:
        spec = SearchSpec(budget=budget, anneal_mode=mode, objective="melbo")
        check_search("anneal", spec, num, 16, logit_tokens=None, match=[], judge=None, init_rows=0)

    with pytest.raises(DiscoveryError, match="need a budget of at least") as error:
        check(3)
    smallest = int(str(error.value).split()[-1])
    check(smallest)  # works
    for budget in range(3, smallest):  # and nothing between fits
        with pytest.raises(DiscoveryError):
            check(budget)


def test_discover_with_a_config_equals_discover_with_keywords(llama, tmp_path):
    config = DiscoverConfig(method="random", source=1, target=3, radius=1.0, num=2, score=False, chat=False, seed=3)
    output = tmp_path / "found.safetensors"
    given = discover(llama, TEXTS, config, output=output)
    keywords = discover(llama, TEXTS, method="random", source=1, target=3, radius=1.0, num=2, score=False, chat=False, seed=3)
    overridden = discover(llama, TEXTS, config, seed=4)
    assert torch.equal(given.best[1], keywords.best[1]) and given.settings == keywords.settings
    assert not torch.equal(overridden.best[1], given.best[1]) and config.seed == 3  # the given config is not changed
    saved = config_path(output)
    assert saved.name == "found.discover_config.json"
    assert DiscoverConfig.load(saved).to_dict() == config.to_dict()
    with pytest.raises(TypeError):
        discover(llama, TEXTS, colour="red")
