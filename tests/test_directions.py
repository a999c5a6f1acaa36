"""Direction methods, normalisation and the layer scan."""

from __future__ import annotations

import pytest
import torch

from reptune.data import ContrastPair, Example, pairs_hash
from reptune.directions import extract_vector, fit_direction, fit_logistic, scan_layers
from reptune.errors import DataError, ReptuneError


def _synthetic(num=64, dim=16, signal=3.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    axis = torch.zeros(dim)
    axis[3] = 1.0
    base = torch.randn(num, dim, generator=generator)
    noise = 0.3 * torch.randn(num, dim, generator=generator)
    return base + signal * axis + noise, base, axis


@pytest.mark.parametrize("method", ["mean-diff", "pca", "probe"])
def test_direction_recovers_planted_axis_and_orientation(method):
    pos, neg, axis = _synthetic()
    direction = fit_direction(pos, neg, method, normalize="unit")
    assert direction.norm() == pytest.approx(1.0, abs=1e-5)
    assert float(direction @ axis) > 0.9  # points along the planted axis, positive side up
    flipped = fit_direction(neg, pos, method, normalize="unit")
    assert float(flipped @ axis) < -0.9


def test_mean_diff_raw_is_the_mean_difference():
    pos, neg, _ = _synthetic()
    assert torch.allclose(fit_direction(pos, neg, "mean-diff", normalize="none"), (pos - neg).mean(0), atol=1e-6)


@pytest.mark.parametrize("method", ["mean-diff", "pca", "probe"])
def test_gap_normalisation_scales_to_mean_projection(method):
    pos, neg, _ = _synthetic()
    vector = fit_direction(pos, neg, method, normalize="gap")
    unit = vector / vector.norm()
    assert float(vector.norm()) == pytest.approx(float(((pos - neg) @ unit).mean()), rel=1e-5)


def test_gap_mean_diff_equals_raw_mean_diff():
    pos, neg, _ = _synthetic()
    assert torch.allclose(fit_direction(pos, neg, "mean-diff"), fit_direction(pos, neg, "mean-diff", normalize="none"), atol=1e-5)


def test_logistic_probe_separates():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=generator) * torch.tensor([10.0, 1, 1, 1, 1]) + 50
    y = (x[:, 1] > 50).float()
    weight, bias = fit_logistic(x, y)
    accuracy = (((x @ weight + bias) > 0).float() == y).float().mean()
    assert accuracy > 0.97
    assert weight[1].abs() > 5 * weight[0].abs()


def test_bad_direction_inputs():
    pos, neg, _ = _synthetic()
    with pytest.raises(ReptuneError, match="unknown method"):
        fit_direction(pos, neg, "magic")
    with pytest.raises(ReptuneError, match="normalization"):
        fit_direction(pos, neg, "pca", normalize="sideways")
    with pytest.raises(ReptuneError, match="do not differ"):
        fit_direction(pos, pos, "mean-diff")
    with pytest.raises(ReptuneError, match="equal shape"):
        fit_direction(pos, neg[:3])


def test_scan_finds_planted_layer_and_reports_label_probe():
    generator = torch.Generator().manual_seed(0)
    num, dim = 80, 16
    labels = [i % 2 for i in range(num)]
    positive, negative = {}, {}
    for layer in range(8):
        base = torch.randn(num, dim, generator=generator)
        pos = base + 0.8 * torch.randn(num, dim, generator=generator)
        neg = base + 0.8 * torch.randn(num, dim, generator=generator)
        if layer == 4:  # strong, clean contrast plus a readable label
            pos[:, 0] += 4.0
            pos[:, 1] += 3.0 * (torch.tensor(labels) * 2 - 1)
        if layer == 7:  # an even stronger contrast, but outside the middle half
            pos[:, 0] += 10.0
        positive[layer], negative[layer] = pos, neg
    scan = scan_layers(positive, negative, labels=labels, num_layers=8)
    by_layer = {score.layer: score for score in scan.scores}
    assert scan.best_layers(1) == [4]
    assert by_layer[4].pair_acc == 1.0 and by_layer[0].pair_acc < 0.9
    assert by_layer[4].label_acc > 0.9 and by_layer[0].label_acc < 0.8
    assert by_layer[7].effect > by_layer[4].effect  # excluded by the middle-half rule, not by its score
    assert scan.num_test + scan.num_train == num
    record = scan.to_json()
    assert record["layers"][4]["layer"] == 4 and 4 in record["best_layers"]
    # best first, not in layer order: the first is what `steer` and `eval` default to
    assert record["best_layers"] == scan.best_layers(3) == [s.layer for s in scan.ranked()[:3]] and record["best_layers"][0] == 4


def test_scan_needs_pairs():
    with pytest.raises(DataError):
        scan_layers({0: torch.randn(3, 4)}, {0: torch.randn(3, 4)})


def _pairs(count=12):
    pairs = []
    for index in range(count):
        statement = f"Two plus two is {index}."
        pairs.append(
            ContrastPair(
                Example("Pretend you are an honest person making statements about the world.\n", statement),
                Example("Pretend you are a dishonest person making statements about the world.\n", statement),
                label=index % 2,
            )
        )
    return pairs


def test_extract_vector_on_tiny_model(tiny):
    pairs = _pairs()
    vector, scan = extract_vector(tiny, pairs, "1-3", method="pca", positions="generated", dataset="unit", progress=False)
    assert vector.layers == [1, 2, 3]
    assert vector.meta.method == "pca" and vector.meta.positions == "generated"
    assert vector.meta.hidden_size == tiny.hidden_size and vector.meta.num_layers == tiny.num_layers
    assert vector.meta.dataset_hash == pairs_hash(pairs) and vector.meta.num_pairs == len(pairs)
    assert [score.layer for score in scan.scores] == [1, 2, 3]
    assert vector.meta.extra["best_layers"][0] in {1, 2, 3}
    again, _ = extract_vector(tiny, pairs, "1-3", method="pca", positions="generated", dataset="unit", progress=False)
    for layer in vector.layers:  # deterministic
        assert torch.equal(vector[layer], again[layer])


def test_extract_vector_rejects_empty(tiny):
    with pytest.raises(DataError):
        extract_vector(tiny, [], "1", progress=False)


def test_per_position_extraction_matches_single_position_runs(tiny):
    pairs = _pairs(8)
    vectors, scans = extract_vector(tiny, pairs, "1,2", positions="last:3", per_position=True, progress=False)
    assert [v.meta.positions for v in vectors] == ["last:3@-3", "last:3@-2", "last:3@-1"]
    assert len(scans) == 3
    last, _ = extract_vector(tiny, pairs, "1,2", positions="last", progress=False)
    assert torch.allclose(vectors[-1][2], last[2], atol=1e-5)  # position -1 == reading only the last token
    assert not torch.allclose(vectors[0][2], last[2])
    with pytest.raises(ReptuneError, match="last:N"):
        extract_vector(tiny, pairs, "1", positions="all", per_position=True, progress=False)


def test_extract_vector_without_scan_saves_a_loadable_file(tiny, tmp_path):
    from reptune.vectors import load_vector

    vector, scan = extract_vector(tiny, _pairs(), "1,2", scan=False, progress=False)
    assert scan is None and "best_layers" not in vector.meta.extra
    vector.save(tmp_path / "v.safetensors")
    assert load_vector(tmp_path / "v.safetensors", tiny).layers == [1, 2]
