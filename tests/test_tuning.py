"""Representation tuning: every loss moves what it should, frozen weights stay frozen, resume is exact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import build_model
from transformers import AutoModelForCausalLM

from reptune import _work
from reptune.activations import read_activations
from reptune.data import Statement
from reptune.data.ab import letter_token_ids, statements_to_ab
from reptune.errors import DataError, ReptuneError, VectorError
from reptune.models import load_model
from reptune.tuning import PRESETS, TrainingDiverged, TrainItem, TuneConfig, tune
from reptune.tuning.items import BalancedBatches, split_items
from reptune.tuning.losses import answer_loss, kl_base_to_tuned, representation_loss, topk_reference
from reptune.vectors import SteeringVector, VectorMeta

FAST = {"autocast": None, "eval_every": 5, "checkpoint_every": 50, "batch_size": 8}


def _statements(count=24):
    true = [Statement(f"Two plus {i} is {i + 2}.", 1) for i in range(count // 2)]
    false = [Statement(f"Two plus {i} is {i + 5}.", 0) for i in range(count // 2)]
    return true + false


def _items(handle, count=24):
    return [TrainItem(prompt=a.prompt, correct=a.correct, label=a.meta["label"]) for a in statements_to_ab(_statements(count), handle.tokenizer)]


def _learnable_items(handle, count=24):
    """Truth marked by one word and "True" always option A: a tiny model can learn it in a few steps."""
    statements = [Statement(f"The sky is {'blue' if i % 2 else 'green'} {i}.", i % 2) for i in range(count)]
    return [TrainItem(prompt=a.prompt, correct=a.correct, label=a.meta["label"]) for a in statements_to_ab(statements, handle.tokenizer, alternate=False)]


def _vector(handle, layers=(2,), seed=3):
    generator = torch.Generator().manual_seed(seed)
    directions = {layer: torch.randn(handle.hidden_size, generator=generator) for layer in layers}
    return SteeringVector(directions, VectorMeta(model_id=handle.model_id, hidden_size=handle.hidden_size, num_layers=handle.num_layers))


def _mean_cos(handle, items, vector, layer=2):
    acts = read_activations(handle, [item.prompt for item in items], str(layer), "last", progress=False)[layer]
    return float(torch.nn.functional.cosine_similarity(acts, vector[layer].view(1, -1)).mean())


def _letter_probs(handle, items):
    """Mean P(correct letter | A or B) at the answer position."""
    ids = letter_token_ids(handle.tokenizer, items[0].prompt)
    handle.tokenizer.padding_side = "right"
    enc = handle.tokenizer([item.prompt for item in items], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = handle.model(**enc).logits
    last = enc["attention_mask"].sum(-1) - 1
    probs = out[torch.arange(len(items)), last][:, list(ids)].softmax(-1)
    correct = torch.tensor([item.correct for item in items])
    return float(probs[torch.arange(len(items)), correct].mean())


# --------------------------------------------------------------------- losses, pure functions


def test_representation_loss_values():
    vector = torch.tensor([1.0, 0.0])
    hidden = torch.tensor([[[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]]])
    mask = torch.tensor([[True, True, False]])
    loss_in, cos = representation_loss(hidden, vector, mask, "in", 1)
    assert loss_in.item() == pytest.approx((0 + 0.5) / 2) and cos.item() == pytest.approx(0.5)
    loss_neg, _ = representation_loss(hidden, vector, mask, "in", -1)
    assert loss_neg.item() == pytest.approx((1 + 0.5) / 2)
    loss_out, _ = representation_loss(hidden, vector, torch.tensor([[True, False, True]]), "out")
    assert loss_out.item() == pytest.approx(1.0)


def test_answer_loss_targets():
    logits = torch.zeros(2, 5)
    logits[:, 1] = 2.0  # letter A (id 1) favoured
    correct = torch.tensor([0, 1])
    truth = answer_loss(logits, (1, 2), correct, "truth")
    lie = answer_loss(logits, (1, 2), correct, "lie")
    logp = logits.log_softmax(-1)
    assert truth.item() == pytest.approx(-(logp[0, 1] + logp[1, 2]).item() / 2)
    assert lie.item() == pytest.approx(-(logp[0, 2] + logp[1, 1]).item() / 2)
    soft = answer_loss(logits, (1, 2), correct, "soft")
    assert soft.item() == pytest.approx(-(0.5 * (logp[:, 1] + logp[:, 2])).mean().item())


def test_topk_kl_exact_with_full_support_and_zero_for_identical():
    generator = torch.Generator().manual_seed(0)
    base, tuned = torch.randn(2, 3, 11, generator=generator), torch.randn(2, 3, 11, generator=generator)
    mask = torch.ones(2, 3, dtype=torch.bool)
    exact = torch.nn.functional.kl_div(tuned.log_softmax(-1), base.log_softmax(-1), log_target=True, reduction="none").sum(-1).mean()
    assert kl_base_to_tuned(tuned, topk_reference(base, 11), mask).item() == pytest.approx(exact.item(), abs=1e-5)
    assert kl_base_to_tuned(base, topk_reference(base, 4), mask).item() == pytest.approx(0.0, abs=1e-5)
    assert 0 <= kl_base_to_tuned(tuned, topk_reference(base, 4), mask).item() <= exact.item() + 1e-5


# --------------------------------------------------------------------- data and config


def test_balanced_batches_are_balanced_and_pure():
    items = [TrainItem(prompt=str(i), label=i % 2) for i in range(30)]
    sampler = BalancedBatches(items, 8, seed=1)
    for step in range(10):
        batch = sampler(step)
        assert sum(item.label for item in batch) == 4
    assert BalancedBatches(items, 8, seed=1)(7) == sampler(7)
    assert BalancedBatches(items, 8, seed=2)(7) != sampler(7)


def test_split_is_stratified_and_seeded():
    items = [TrainItem(prompt=str(i), label=i % 2) for i in range(40)]
    train, val = split_items(items, 0.25, seed=0)
    assert len(val) == 10 and sum(item.label for item in val) == 5
    assert set(map(id, train)).isdisjoint(map(id, val))
    assert split_items(items, 0.25, seed=0)[1] == val


def test_presets_and_overrides():
    assert set(PRESETS) == {"truth", "lie", "honesty", "dishonesty", "tune-out", "pos", "neg"}
    assert TuneConfig.from_preset("honesty", paper=True, lr=3e-6).lr == 3e-6  # overrides win over the paper settings
    honesty = TuneConfig.from_preset("honesty", lr=1e-4, layers="1-2")
    assert (honesty.rep_mode, honesty.rep_sign, honesty.token_target, honesty.w_tok) == ("in", 1, "truth", 0.01)
    assert TuneConfig.from_preset("dishonesty").rep_sign == -1 and TuneConfig.from_preset("lie").uses_vector is False
    assert TuneConfig.from_json(json.loads(honesty.dumps())) == honesty
    with pytest.raises(ReptuneError, match="unknown preset"):
        TuneConfig.from_preset("honest")
    with pytest.raises(ReptuneError, match="unknown tuning option"):
        TuneConfig.from_preset("truth", learning_rate=1)
    with pytest.raises(ReptuneError):
        TuneConfig.from_preset("truth", steps=0)


# --------------------------------------------------------------------- training behaviour


def test_tune_in_raises_cosine_and_freezes_the_rest(tmp_path):
    handle = build_model("llama", chat=True)
    items, vector = _items(handle), _vector(handle)
    before_cos = _mean_cos(handle, items, vector)
    frozen = {name: param.detach().clone() for name, param in handle.model.named_parameters() if ".layers.1." not in name and ".layers.2." not in name}
    config = TuneConfig.from_preset("pos", layers="1-2", steps=25, lr=3e-3, **FAST)
    result = tune(handle, config, items, tmp_path / "run", vector=vector, progress=False, save_model=False)
    after_cos = _mean_cos(handle, items, vector)
    assert after_cos > before_cos + 0.3 and after_cos > 0.6
    for name, param in handle.model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), name  # bit for bit
    assert result.history[-1]["rep"] < result.history[0]["rep"]
    assert (tmp_path / "run" / "loss_curves.png").is_file() and (tmp_path / "run" / "metrics.json").is_file()


def test_config_limit_is_the_number_of_items_trained_on_in_python_too(tmp_path):
    handle = build_model("llama", chat=True)
    config = TuneConfig.from_preset("truth", layers="1", steps=1, limit=12, val_fraction=0.25, **FAST)
    result = tune(handle, config, _items(handle, 24), tmp_path / "run", progress=False, save_model=False)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train_items"] + metrics["val_items"] == 12 and result.config.limit == 12


def test_tune_out_drives_abs_cosine_down(tmp_path):
    handle = build_model("llama", chat=True)
    items = _items(handle)
    # a vector the model's activations already align with, so there is something to remove
    acts = read_activations(handle, [item.prompt for item in items], "2", "last", progress=False)[2]
    vector = SteeringVector({2: acts.mean(0)}, VectorMeta(model_id=handle.model_id, hidden_size=32, num_layers=4))
    before = abs(_mean_cos(handle, items, vector))
    tune(handle, TuneConfig.from_preset("tune-out", layers="1-2", steps=25, lr=3e-3, **FAST), items, tmp_path / "run", vector=vector, progress=False, save_model=False)
    after = abs(_mean_cos(handle, items, vector))
    assert before > 0.5 and after < 0.15


@pytest.mark.parametrize(("preset", "direction"), [("truth", 1), ("lie", -1)])
def test_token_losses_move_answer_probabilities(tmp_path, preset, direction):
    handle = build_model("llama", chat=True)
    items = _learnable_items(handle)
    before = _letter_probs(handle, items)
    config = TuneConfig.from_preset(preset, layers="0-3", steps=50, lr=1e-2, val_fraction=0.0, **FAST)
    tune(handle, config, items, tmp_path / "run", progress=False, save_model=False)
    after = _letter_probs(handle, items)
    assert direction * (after - before) > 0.15


def test_retain_loss_keeps_kl_to_base_lower(tmp_path):
    items = _learnable_items(build_model("llama", chat=True))
    retain_texts = ["The sky is blue. The grass is green.", "Water boils at 100 degrees.", "Cats are mammals.", "Hello world, the quick brown fox."] * 2
    kls = {}
    for retain in ("none", "kl"):
        handle = build_model("llama", chat=True)
        base = build_model("llama", chat=True)
        config = TuneConfig.from_preset("lie", layers="0-3", steps=30, lr=1e-2, retain=retain, w_retain=100.0 if retain != "none" else 0.0, **FAST)
        tune(handle, config, items, tmp_path / retain, retain_texts=retain_texts, progress=False, save_model=False)
        handle.tokenizer.padding_side = "right"
        enc = handle.tokenizer(retain_texts, return_tensors="pt", padding=True)
        with torch.no_grad():
            tuned_logp = handle.model(**enc).logits.log_softmax(-1)
            base_logp = base.model(**enc).logits.log_softmax(-1)
        kl = (base_logp.exp() * (base_logp - tuned_logp)).sum(-1)[enc["attention_mask"].bool()].mean()
        kls[retain] = float(kl)
    assert kls["kl"] < 0.5 * kls["none"], kls


def test_lora_trains_adapter_only_and_saves_merged_and_adapter(tmp_path):
    handle = build_model("llama", chat=True)
    items, vector = _items(handle), _vector(handle)
    before = {name: param.detach().clone() for name, param in handle.model.named_parameters()}
    before_cos = _mean_cos(handle, items, vector)
    config = TuneConfig.from_preset("pos", layers="1-2", steps=25, lr=1e-2, lora=True, retain="act", w_retain=1.0, **FAST)
    tune(handle, config, items, tmp_path / "run", vector=vector, progress=False)
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
    reloaded = load_model(str(tmp_path / "run"))
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "run")
    assert set(dict(plain.named_parameters())) == set(before)  # merged: no LoRA tensors left
    assert _mean_cos(reloaded, items, vector) > before_cos + 0.2
    changed = [name for name in before if not torch.equal(before[name], dict(reloaded.model.named_parameters())[name])]
    assert changed and all(".layers.1." in name or ".layers.2." in name for name in changed)


def test_output_loads_with_transformers_and_reptune(tmp_path):
    handle = build_model("llama", chat=True)
    items = _items(handle)
    tune(handle, TuneConfig.from_preset("truth", layers="1", steps=3, lr=1e-3, **FAST), items, tmp_path / "run", progress=False, data_origin="unit")
    run = tmp_path / "run"
    for name in ("config.json", "model.safetensors", "tune_config.json", "metrics.json", "loss_curves.json", "README.md", "tokenizer.json"):
        assert (run / name).is_file(), name
    card = (run / "README.md").read_text()
    assert "tiny-llama" in card and "truth" in card and "unit" in card
    model = AutoModelForCausalLM.from_pretrained(run)
    for name, param in model.named_parameters():
        assert torch.equal(param, dict(handle.model.named_parameters())[name])


@pytest.mark.parametrize("lora", [False, True])
def test_blocks_weights_store_only_the_trained_blocks_and_load_back_to_the_tuned_model(tmp_path, tiny_dir, lora):
    from reptune.tuned_blocks import TUNED_BLOCKS_FILE, tuned_blocks_base

    handle = load_model(str(tiny_dir))
    base_params = {name: param.detach().clone() for name, param in handle.model.named_parameters()}
    config = TuneConfig.from_preset("truth", layers="1-2", steps=4, lr=1e-2, lora=lora, **FAST)
    tune(handle, config, _items(handle), tmp_path / "run", progress=False, weights="blocks")
    run = tmp_path / "run"
    assert not (run / "model.safetensors").exists() and not (run / "config.json").exists()
    assert tuned_blocks_base(run) == {"model": str(tiny_dir), "revision": None, "layers_path": "model.layers", "layers": [1, 2]}
    from safetensors import safe_open

    with safe_open(str(run / TUNED_BLOCKS_FILE), framework="pt") as stored:
        names = set(stored.keys())
    assert names and all(name.startswith(("model.layers.1.", "model.layers.2.")) for name in names)
    reloaded = load_model(str(run))
    assert reloaded.model_id == str(run) and reloaded.source == "tuned-blocks"
    tuned = dict(handle.model.named_parameters())
    for name, param in reloaded.model.named_parameters():
        assert torch.equal(param, tuned[name]), name  # every tensor: the tuned model's, blocks and base alike
    assert any(not torch.equal(base_params[name], tuned[name]) for name in names)  # training did change the stored blocks


def test_blocks_weights_refuse_another_base_and_replace_an_earlier_full_save(tmp_path, tiny_dir):
    from safetensors.torch import load_file, save_file

    from reptune.errors import ModelError
    from reptune.tuned_blocks import TUNED_BLOCKS_FILE

    handle = load_model(str(tiny_dir))
    config = TuneConfig.from_preset("truth", layers="1", steps=2, lr=1e-3, **FAST)
    run = tmp_path / "run"
    tune(handle, config, _items(handle), run, progress=False)  # full first
    assert (run / "config.json").is_file()
    tune(load_model(str(tiny_dir)), config, _items(handle), run, progress=False, weights="blocks", resume=True)
    assert not (run / "config.json").exists()  # else the stale full model would load instead of these blocks
    assert load_model(str(run)).source == "tuned-blocks"
    path = run / TUNED_BLOCKS_FILE
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as stored:
        metadata = stored.metadata()
    tensors = load_file(str(path))
    name = next(iter(tensors))
    save_file({**tensors, name: torch.zeros(3, 3)}, str(path), metadata=metadata)
    with pytest.raises(ModelError, match="was the base model changed"):
        load_model(str(run))
    with pytest.raises(ReptuneError, match="weights must be"):
        tune(handle, config, _items(handle), tmp_path / "other", progress=False, weights="half")


# --------------------------------------------------------------------- where each loss term acts


def test_representation_loss_reaches_every_trained_tensor_at_every_trained_layer():
    from reptune.tuning.trainer import Tuner

    handle = build_model("llama", chat=True)
    items = _items(handle)
    config = TuneConfig.from_preset("honesty", layers="1-3", **FAST)
    tuner = Tuner(handle, config, items, _vector(handle, layers=(1, 2, 3)))
    assert list(tuner.rep_vectors) == [1, 2, 3]  # the loss at every trained layer, each with its own direction
    grads = tuner.term_gradients(items[:8])
    assert set(grads) == {"tok", "rep"} and len(grads["rep"]) == len(tuner.named_params) > 0
    assert all(norm > 0 for norm in grads["rep"].values()), [name for name, norm in grads["rep"].items() if norm == 0]
    assert all(param.grad is None for _, param in tuner.named_params)  # the probe leaves no gradient behind


def test_trained_blocks_beyond_every_representation_layer_are_refused_unless_allowed():
    from reptune.tuning.trainer import Tuner

    handle = build_model("llama", chat=True)
    items = _items(handle)
    with pytest.raises(ReptuneError, match=r"trained block\(s\) \[3\] lie beyond every representation layer"):
        Tuner(handle, TuneConfig.from_preset("honesty", layers="1-3", rep_layers="2", **FAST), items, _vector(handle, layers=(1, 2, 3)))
    with pytest.raises(ReptuneError, match="beyond every representation layer"):  # the vector lacks layer 3
        Tuner(handle, TuneConfig.from_preset("pos", layers="1-3", **FAST), items, _vector(handle, layers=(2,)))
    config = TuneConfig.from_preset("honesty", layers="1-3", rep_layers="2", allow_blocks_beyond_rep=True, **FAST)
    grads = Tuner(handle, config, items, _vector(handle, layers=(2,))).term_gradients(items[:8])
    block3 = [name for name in grads["rep"] if ".layers.3." in name]
    assert block3 and all(grads["rep"][name] == 0 for name in block3)  # the confound the check prevents
    assert all(grads["tok"][name] > 0 for name in block3)


# --------------------------------------------------------------------- the paper's presets and optimisation


def _paper(preset, **overrides):
    return TuneConfig.from_preset(preset, paper=True, **{**FAST, "rep_positions": "last", **overrides})


def test_presets_carry_the_papers_token_losses():
    # custom_fine_tune.ipynb: TuneOut = |cos| + outputs.loss/100 on the truth labels; TuneInPos/Neg = +-v + soft 50/50 / 100
    tune_out, pos, neg = (TuneConfig.from_preset(name) for name in ("tune-out", "pos", "neg"))
    assert (tune_out.rep_mode, tune_out.token_target, tune_out.w_tok) == ("out", "truth", 0.01)
    assert (pos.rep_sign, pos.token_target, pos.w_tok) == (1, "soft", 0.01)
    assert (neg.rep_sign, neg.token_target, neg.w_tok) == (-1, "soft", 0.01)
    from reptune.tuning.trainer import Tuner

    handle = build_model("llama", chat=True)
    items = _items(handle)
    for name in ("tune-out", "pos"):
        grads = Tuner(handle, TuneConfig.from_preset(name, layers="1-2", **FAST), items, _vector(handle, layers=(1, 2))).term_gradients(items[:8])
        assert set(grads) == {"tok", "rep"} and all(norm > 0 for norm in grads["tok"].values())


def test_paper_settings_match_the_papers_optimizer():
    from reptune.tuning.trainer import Tuner

    handle = build_model("llama", chat=True)
    items = _items(handle)
    config = _paper("honesty", layers="1-2")
    assert (config.routing, config.adam_eps, config.weight_decay, config.max_grad_norm, config.lr_schedule, config.warmup_steps) == ("paper", 1e-4, 0.1, 0.0, "linear", 10)
    assert TuneConfig.from_preset("honesty", paper=True).rep_positions == "pos:-8" and config.early_stop_on == "rep"
    tuner = Tuner(handle, config, items, _vector(handle, layers=(1, 2)))
    lrs = {name: group["lr"] for group in tuner.optimizer.param_groups for name, param in tuner.named_params if any(param is p for p in group["params"])}
    assert all(lr == (1e-5 if ".v_proj." in name or ".o_proj." in name else 1e-6) for name, lr in lrs.items())
    assert all(group["eps"] == 1e-4 and group["weight_decay"] == 0.1 for group in tuner.optimizer.param_groups)
    # the token-only baselines: everything at 1e-6 (the paper has no projection parameters for Truth/Lie)
    truth = Tuner(handle, _paper("truth", layers="1-2"), items, None)
    assert {group["lr"] for group in truth.optimizer.param_groups} == {1e-6} and truth.config.early_stop_on == "tok"


def test_paper_routing_sends_the_representation_loss_to_v_o_only():
    from reptune.tuning.trainer import Tuner

    handle = build_model("llama", chat=True)
    items = _items(handle)
    tuner = Tuner(handle, _paper("honesty", layers="1-3"), items, _vector(handle, layers=(1, 2, 3)))
    grads = tuner.term_gradients(items[:8])
    routed = {name for name in grads["rep"] if ".self_attn.v_proj." in name or ".self_attn.o_proj." in name}
    assert len(routed) == 6 and len(grads["rep"]) > 6
    assert all(grads["rep"][name] > 0 for name in routed)
    assert all(grads["rep"][name] == 0.0 for name in grads["rep"] if name not in routed)  # exactly zero
    assert all(norm > 0 for norm in grads["tok"].values())  # the token loss updates every trained parameter
    plan = tuner.plan()
    assert plan["terms"]["representation"]["updates"] == {"self_attn.v_proj.weight": "1-3", "self_attn.o_proj.weight": "1-3"}
    assert "mlp.down_proj.weight" in plan["terms"]["token"]["updates"] and plan["terms"]["representation"]["layers"] == "1-3"


def test_paper_routing_training_moves_only_v_o_without_token_loss(tmp_path):
    handle = build_model("llama", chat=True)
    items, vector = _items(handle), _vector(handle, layers=(1, 2))
    before = {name: param.detach().clone() for name, param in handle.model.named_parameters()}
    config = _paper("pos", layers="1-2", token_target="none", w_tok=0.0, steps=4, warmup_steps=1, lr=1e-3, param_groups=[{"pattern": r"v_proj|o_proj", "lr": 1e-2}])
    tune(handle, config, items, tmp_path / "run", vector=vector, progress=False, save_model=False)
    changed = {name for name, param in handle.model.named_parameters() if not torch.equal(param, before[name])}
    assert changed == {f"model.layers.{layer}.self_attn.{proj}.weight" for layer in (1, 2) for proj in ("v_proj", "o_proj")}


def test_linear_schedule_equals_transformers():
    from transformers import get_linear_schedule_with_warmup

    from reptune.tuning.trainer import lr_factor

    config = TuneConfig(steps=30, lr_schedule="linear", warmup_steps=10, rep_mode="none", w_rep=0.0)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=10, num_training_steps=30)
    expected = []
    for _ in range(30):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert [lr_factor(config, step) for step in range(30)] == pytest.approx(expected)
    assert lr_factor(TuneConfig(), 5) == 1.0


def test_single_position_with_its_own_direction(tmp_path):
    from reptune.tuning.trainer import Tuner, single_position_mask

    prompt = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]).bool()
    assert single_position_mask(prompt, -3).tolist() == [[False, True, False, False, False], [True, False, False, False, False]]
    with pytest.raises(DataError, match="at least 4 tokens"):
        single_position_mask(prompt, -4)
    with pytest.raises(ReptuneError, match="negative integer"):
        TuneConfig.from_preset("pos", rep_positions="pos:3")
    handle = build_model("llama", chat=True)
    items = _items(handle)
    vector = _vector(handle, layers=(1, 2))
    with pytest.raises(VectorError, match="needs that position's own direction"):
        Tuner(handle, TuneConfig.from_preset("pos", layers="1-2", rep_positions="pos:-8", **FAST), items, vector)
    vector.meta.positions = "last:22@-8"  # as written by extract --positions last:22 --per-position (STEM.pos-8)
    with pytest.raises(VectorError, match="set rep_positions pos:-8"):
        Tuner(handle, TuneConfig.from_preset("pos", layers="1-2", **FAST), items, vector)
    tuner = Tuner(handle, TuneConfig.from_preset("pos", layers="1-2", rep_positions="pos:-8", **FAST), items, vector)
    batch = tuner._tokenize(items[:4])
    assert batch.rep_mask.sum(-1).tolist() == [1, 1, 1, 1]
    assert (batch.rep_mask.long().argmax(-1) == batch.last_prompt - 7).all()
    assert "-8 from the end" in tuner.plan()["terms"]["representation"]["positions"]


def test_early_stopping_watches_the_chosen_term(tmp_path):
    handle = build_model("llama", chat=True)
    items, vector = _items(handle), _vector(handle, layers=(1, 2))
    config = TuneConfig.from_preset("honesty", layers="1-2", steps=6, lr=1e-3, early_stop_on="rep", **FAST)
    before = _work.snapshot()
    result = tune(handle, config, items, tmp_path / "run", vector=vector, progress=False, save_model=False)
    assert _work.since(before)["steps"] == result.metrics["steps_run"]  # the report's time table counts them
    best = min(result.val_history, key=lambda row: row["rep"])
    assert result.metrics["best_val_loss"] == pytest.approx(best["rep"]) and result.metrics["early_stop_on"] == "rep"
    with pytest.raises(ReptuneError, match="does not use"):
        TuneConfig.from_preset("truth", early_stop_on="rep")


def test_cli_print_config_lists_what_each_term_updates(cli_run, tiny_dir, tmp_path):
    result = cli_run("tune", "--preset", "tune-out", "--paper", "--layers", "1-2", "--print-config", "-o", tmp_path / "unused")
    printed = json.loads(result.out)
    assert result.code == 0 and printed["routing"] == "paper" and printed["adam_eps"] == 1e-4 and printed["token_target"] == "truth"
    assert set(printed["plan"]["terms"]) == {"token", "representation"} and "at -8 from the end" in printed["plan"]["terms"]["representation"]["positions"]
    handle = load_model(str(tiny_dir))
    directions = {layer: torch.randn(handle.hidden_size) for layer in range(handle.num_layers)}
    meta = VectorMeta(model_id=str(tiny_dir), hidden_size=handle.hidden_size, num_layers=handle.num_layers, positions="last:8@-8")
    vector = SteeringVector(directions, meta).save(tmp_path / "v.pos-8.safetensors")
    data = tmp_path / "statements.csv"
    data.write_text("statement,label\n" + "".join(f"The sky is {'blue' if i % 2 else 'green'} {i}.,{i % 2}\n" for i in range(12)))
    args = ("tune", "--preset", "honesty", "--paper", "--model", tiny_dir, "--vector", vector, "--data", data, "--layers", "1-2", "--precision", "fp32")
    result = cli_run(*args, "--print-config", "-o", tmp_path / "unused")
    assert result.code == 0, result.err
    plan = json.loads(result.out)["plan"]
    rep = plan["terms"]["representation"]
    assert rep["updates"] == {"self_attn.v_proj.weight": "1-2", "self_attn.o_proj.weight": "1-2"} and rep["layers"] == "1-2"
    assert "at -8 from the end" in rep["positions"] and rep["trained_blocks_without_rep_loss"] == ""
    assert plan["terms"]["token"]["updates"]["mlp.up_proj.weight"] == "1-2"
    assert sorted(group["lr"] for group in plan["optimizer"]["groups"]) == [1e-6, 1e-5]
    assert not (tmp_path / "unused").exists()


# --------------------------------------------------------------------- bad input


def test_bad_inputs_fail_before_training(tmp_path):
    handle = build_model("llama", chat=True)
    items = _items(handle)
    other = SteeringVector({2: torch.ones(16)}, VectorMeta(model_id="other", hidden_size=16, num_layers=4))
    with pytest.raises(VectorError, match="hidden size"):
        tune(handle, TuneConfig.from_preset("honesty", layers="1-2", **FAST), items, tmp_path / "a", vector=other, progress=False)
    wrong_id = SteeringVector({2: torch.ones(32)}, VectorMeta(model_id="someone-else", hidden_size=32, num_layers=4))
    with pytest.raises(VectorError, match="made for someone-else"):
        tune(handle, TuneConfig.from_preset("honesty", layers="1-2", **FAST), items, tmp_path / "b", vector=wrong_id, progress=False)
    with pytest.raises(VectorError, match="no layer"):
        tune(handle, TuneConfig.from_preset("honesty", layers="1-2", rep_layers="3", **FAST), items, tmp_path / "c", vector=_vector(handle), progress=False)
    with pytest.raises(VectorError, match="needs a vector"):
        tune(handle, TuneConfig.from_preset("honesty", layers="1-2", **FAST), items, tmp_path / "d", progress=False)
    unlabeled = [TrainItem(prompt=item.prompt) for item in items]
    with pytest.raises(DataError, match="needs A/B items"):
        tune(handle, TuneConfig.from_preset("truth", layers="1-2", **FAST), unlabeled, tmp_path / "e", progress=False)
    assert not any((tmp_path / name).exists() for name in "abcde")


def test_nan_loss_stops_with_message_and_keeps_checkpoint(tmp_path, monkeypatch):
    from reptune.tuning import trainer

    handle = build_model("llama", chat=True)
    items = _items(handle)
    real_losses = trainer.Tuner.losses
    calls = {"n": 0}

    def poisoned(self, batch, retain_index, **kwargs):
        terms = real_losses(self, batch, retain_index, **kwargs)
        calls["n"] += retain_index is not None
        if retain_index is not None and retain_index >= 4:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(trainer.Tuner, "losses", poisoned)
    config = TuneConfig.from_preset("truth", layers="1", steps=10, lr=1e-3, **{**FAST, "checkpoint_every": 2})
    with pytest.raises(TrainingDiverged, match="at step 5; last good checkpoint kept"):
        tune(handle, config, items, tmp_path / "run", progress=False)
    latest = json.loads((tmp_path / "run" / "checkpoints" / "latest.json").read_text())
    assert latest["step"] == 4


# --------------------------------------------------------------------- resume after SIGKILL

RESUME_SCRIPT = r"""
import sys, json, torch
sys.path.insert(0, {tests!r})
from conftest import build_model
from reptune.data import Statement
from reptune.data.ab import statements_to_ab
from reptune.tuning import TrainItem, TuneConfig, tune
from safetensors.torch import save_file
handle = build_model("llama", chat=True)
stm = [Statement(f"Two plus {{i}} is {{i + 2}}.", 1) for i in range(12)] + [Statement(f"Two plus {{i}} is {{i + 5}}.", 0) for i in range(12)]
items = [TrainItem(prompt=a.prompt, correct=a.correct, label=a.meta["label"]) for a in statements_to_ab(stm, handle.tokenizer)]
config = TuneConfig.from_preset("lie", layers="1-2", steps=12, lr=2e-3, autocast=None, eval_every=3, checkpoint_every=3, batch_size=8, retain="kl", w_retain=1.0)
slow = sys.argv[2] == "slow"
if slow:
    import reptune.tuning.trainer as trainer, time
    original = trainer.Tuner.losses
    def delayed(self, batch, retain_index, **kwargs):
        if retain_index is not None:
            time.sleep(0.4)
        return original(self, batch, retain_index, **kwargs)
    trainer.Tuner.losses = delayed
tune(handle, config, items, sys.argv[1], resume=sys.argv[3] == "resume", progress=False, save_model=False)
save_file({{k: v.contiguous() for k, v in handle.model.state_dict().items()}}, sys.argv[1] + "/final.safetensors")
"""


def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path):
    from safetensors.torch import load_file

    script = tmp_path / "run_tune.py"
    script.write_text(RESUME_SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    straight = tmp_path / "straight"
    subprocess.run([sys.executable, str(script), str(straight), "fast", "fresh"], check=True, env=env, timeout=600)
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(killed), "slow", "fresh"], env=env)
    latest = killed / "checkpoints" / "latest.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if latest.is_file() and json.loads(latest.read_text())["step"] >= 6:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(latest.read_text())["step"]
    assert 3 <= killed_at < 12, "the run should have been killed mid-way"
    subprocess.run([sys.executable, str(script), str(killed), "fast", "resume"], check=True, env=env, timeout=600)
    a, b = load_file(str(straight / "final.safetensors")), load_file(str(killed / "final.safetensors"))
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name
    curves_a = json.loads((straight / "loss_curves.json").read_text())
    curves_b = json.loads((killed / "loss_curves.json").read_text())
    assert [row["loss"] for row in curves_a["train"]] == pytest.approx([row["loss"] for row in curves_b["train"]], abs=1e-6)


def test_existing_run_needs_resume(tmp_path):
    handle = build_model("llama", chat=True)
    items = _items(handle)
    config = TuneConfig.from_preset("truth", layers="1", steps=2, lr=1e-3, **{**FAST, "checkpoint_every": 1})
    tune(handle, config, items, tmp_path / "run", progress=False, save_model=False)
    with pytest.raises(ReptuneError, match="already holds a run"):
        tune(handle, config, items, tmp_path / "run", progress=False, save_model=False)


def test_retain_texts_from_raw_text_and_datasets(tmp_path):
    from reptune.tuning.items import load_retain_texts

    raw = tmp_path / "wiki.test.raw"
    raw.write_text(" = Title = \n\n" + "A long enough line of encyclopedic text about something. " * 2 + "\nshort\n")
    assert load_retain_texts(str(raw)) == [("A long enough line of encyclopedic text about something. " * 2).strip()]
    statements = load_retain_texts("honesty")
    assert len(statements) == 512 and all(text.endswith(".") for text in statements)
    empty = tmp_path / "empty.txt"
    empty.write_text("short\n")
    with pytest.raises(DataError, match="no usable text"):
        load_retain_texts(str(empty))


def test_default_retain_corpus_is_unrelated_to_training_and_never_test_data(tmp_path, monkeypatch):
    from reptune.tuning.trainer import Tuner

    handle = build_model("llama", chat=True)
    items = _items(handle)
    prompts = [item.prompt for item in items]
    monkeypatch.delenv("REPTUNE_DATA_DIR", raising=False)
    tuner = Tuner(handle, TuneConfig.from_preset("truth", layers="1", retain="kl", w_retain=1.0, **FAST), items, None)
    assert tuner.retain_info["corpus"].endswith("neutral_text.txt") and tuner.retain_info["texts"] == 100
    retain_ids = [row[mask.bool()].tolist() for batch in tuner.retain_batches for row, mask in zip(batch.input_ids, batch.attention_mask)]
    prompt_ids = [handle.tokenizer(prompt)["input_ids"] for prompt in prompts]
    assert not any(ids in prompt_ids for ids in retain_ids)
    # WikiText-2 train when the data folder has it; its test split (the perplexity evaluation) never
    (tmp_path / "wikitext2").mkdir()
    (tmp_path / "wikitext2" / "wiki.test.raw").write_text("A test-split paragraph that must not be trained on at all.\n")
    monkeypatch.setenv("REPTUNE_DATA_DIR", str(tmp_path))
    assert Tuner(handle, TuneConfig.from_preset("truth", layers="1", retain="kl", w_retain=1.0, **FAST), items, None).retain_info["corpus"].endswith("neutral_text.txt")
    (tmp_path / "wikitext2" / "wiki.train.raw").write_text(" = Title = \n" + "A train-split paragraph about an old bridge over a river. " * 3 + "\n")
    info = Tuner(handle, TuneConfig.from_preset("truth", layers="1", retain="kl", w_retain=1.0, **FAST), items, None).retain_info
    assert info["corpus"].endswith("wiki.train.raw") and info["texts"] == 1
    # the training prompts themselves (or texts inside them) are dropped; nothing left is an error
    mixed = Tuner(handle, TuneConfig.from_preset("truth", layers="1", retain="kl", w_retain=1.0, **FAST), items, None,
                  retain_texts=[*prompts[:3], "Two plus 1 is 3.", "The kettle clicked off, and the kitchen went quiet again."])
    assert mixed.retain_info["texts"] == 1 and mixed.retain_info["dropped_overlapping_training"] == 4
    with pytest.raises(DataError, match="holds only training prompts"):
        Tuner(handle, TuneConfig.from_preset("truth", layers="1", retain="kl", w_retain=1.0, **FAST), items, None, retain_texts=prompts)


def test_retain_mask_never_covers_the_answer_position():
    from reptune.tuning.trainer import retain_mask

    attention = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    assert retain_mask(attention).tolist() == [[True, True, True, False], [True, False, False, False]]


def test_retain_weight_is_explicit():
    with pytest.raises(ReptuneError, match="retain 'kl' needs a positive w_retain"):
        TuneConfig.from_preset("honesty", retain="kl")  # was silently set to 1
    with pytest.raises(ReptuneError, match="retain is 'none'"):
        TuneConfig.from_preset("honesty", w_retain=1.0)
    assert TuneConfig.from_preset("honesty", retain="both", w_retain=2.0).w_retain == 2.0


@pytest.mark.parametrize(("autocast", "expected"), [("bf16", torch.bfloat16), (None, None), ("none", None)])
def test_config_autocast_drives_the_training_forward(autocast, expected):
    from reptune.tuning.trainer import Tuner

    handle = build_model("llama", chat=True)  # loaded without autocast
    items = _items(handle)
    tuner = Tuner(handle, TuneConfig.from_preset("truth", layers="1", **{**FAST, "autocast": autocast}), items, None)
    seen = []
    hook = handle.layers[1].register_forward_pre_hook(lambda *_: seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None))
    try:
        tuner.losses(tuner._tokenize(items[:4]), retain_index=None)
    finally:
        hook.remove()
    assert seen == [expected] and tuner.config.autocast == (None if expected is None else "bf16")


def test_default_config_has_a_plain_preset_name():
    # regression: a classmethod named like the field once replaced the field's default
    config = TuneConfig()
    assert config.preset == "custom"
    assert TuneConfig.from_json(json.loads(json.dumps(config.to_json()))) == config
