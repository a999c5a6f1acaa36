"""Tuning across processes (DDP and FSDP2) on this CPU: 2 processes on gloo against 1 process.

Each launch starts 2 fresh Python processes (~10 s of imports on 2 cores), so there are three:
the CLI under ``accelerate launch`` (DDP); a DDP run killed mid-way; its resume, followed in the
same processes by an FSDP2 run that crashes and is resumed. Equality: the same losses (train and
validation), early-stopping record and final weights as one process at the same global batch,
to 1e-5 (fp32 tiny models; AdamW eps 1e-4, see build_case), with the weights moving ~1e-2.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import build_model
from safetensors.torch import load_file

from reptune.data import Statement
from reptune.errors import ReptuneError
from reptune.tuning import TuneConfig, tune
from reptune.tuning.distributed import Ranks, _check_supported
from reptune.tuning.items import twin_items
from reptune.vectors import SteeringVector, VectorMeta

TESTS = Path(__file__).resolve().parent
ATOL = 1e-5


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(tmp_path: Path) -> dict[str, str]:
    """The launched processes see this checkout, no accelerate config of the user's, and no hub.

    ``TMPDIR`` keeps the launcher's per-run log folders (``torchelastic_*``) inside the test's folder
    instead of leaving one in the machine's /tmp per launch."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1", "REPTUNE_DEBUG": "0", "TMPDIR": str(tmp_path)}


def _torchrun(script: Path, *args: object, tmp_path: Path, check: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), str(script), *map(str, args)]
    proc = subprocess.run(command, env=_env(tmp_path), capture_output=True, text=True, timeout=300, check=False)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def assert_same_run(one: Path, two: Path, atol: float = ATOL) -> None:
    """Equal losses (train and validation), early-stopping record and final weights."""
    a, b = load_file(str(one / "model.safetensors")), load_file(str(two / "model.safetensors"))
    assert sorted(a) == sorted(b)
    for name in a:
        assert torch.allclose(a[name], b[name], atol=atol, rtol=0), (name, float((a[name] - b[name]).abs().max()))
    curves_a = json.loads((one / "loss_curves.json").read_text())
    curves_b = json.loads((two / "loss_curves.json").read_text())
    for split in ("train", "val"):
        assert [row["step"] for row in curves_a[split]] == [row["step"] for row in curves_b[split]]
        for row_a, row_b in zip(curves_a[split], curves_b[split]):
            assert row_a == pytest.approx(row_b, abs=atol), split
    metrics_a, metrics_b = (json.loads((run / "metrics.json").read_text()) for run in (one, two))
    assert (metrics_a["best_step"], metrics_a["stopped"]) == (metrics_b["best_step"], metrics_b["stopped"])


# --------------------------------------------------------------------- the cases (also imported by the worker script)


def _statements() -> list[Statement]:
    true = [Statement(f"Two plus {i} is {i + 2}.", 1, pair=f"p{i}") for i in range(12)]
    return true + [Statement(f"Two plus {i} is {i + 5}.", 0, pair=f"p{i}") for i in range(12)]


def build_case(name: str):
    """``(handle, config, items, vector)`` of a case: the same in the workers and in the reference."""
    handle = build_model("llama", chat=True)
    generator = torch.Generator().manual_seed(3)
    meta = VectorMeta(model_id=handle.model_id, hidden_size=handle.hidden_size, num_layers=handle.num_layers)
    vector = SteeringVector({layer: torch.randn(handle.hidden_size, generator=generator) for layer in (1, 2)}, meta)
    items = twin_items(_statements(), handle.tokenizer)
    # AdamW eps 1e-4 (the paper's): with the default 1e-8 Adam blows float noise in near-zero gradients up
    # to a full step (1e-5..4e-5 between two ways of running one process), and hides a wrongly scaled loss
    common = {"layers": "1-2", "steps": 6, "lr": 2e-3, "adam_eps": 1e-4, "autocast": None, "eval_every": 2, "checkpoint_every": 2, "w_tok": 1.0,
              "rep_positions": "last"}
    if name == "ddp":  # twins, LoRA, KL retain; 3 twins a batch: shares of 1 and 2
        config = TuneConfig.from_preset("honesty", **common, batch_size=3, lora=True, retain="kl", w_retain=1.0)
    else:  # fsdp: full weights, activation retain, clipping; 5 twins a batch
        config = TuneConfig.from_preset("honesty", **common, batch_size=5, retain="act", w_retain=1.0, max_grad_norm=0.5)
    return handle, config, items, vector


def fsdp_accelerator():
    """accelerate's FSDP2 on the CPU. accelerate refuses FSDP without GPUs (its MULTI_CPU state wins, and
    wins again whenever its state is rebuilt), so the state is set to FSDP2 by hand before each run;
    from there on accelerate's own FSDP2 ``prepare`` shards the model."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    accelerator = Accelerator(cpu=True)
    accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2, auto_wrap_policy="transformer_based_wrap", transformer_cls_names_to_wrap=["LlamaDecoderLayer"], reshard_after_forward=True,
    )
    accelerator.state.distributed_type = DistributedType.FSDP
    return accelerator


# Two launches of this script. "kill": the DDP case, one process SIGKILLed at step 5 (the launcher ends
# the other). "resume": the DDP case resumed; then the FSDP case, which fails at step 5 on every
# process and is resumed in the same processes (one launch fewer: each costs ~10 s of imports).
WORKER = r"""
import os, signal, sys
sys.path.insert(0, {tests!r})
from test_distributed import build_case, fsdp_accelerator
from reptune.tuning import trainer, tune
from reptune.tuning.distributed import current

root, how = sys.argv[1:3]
current(device="cpu")  # gloo on the CPU also where there are GPUs; tune() takes these ranks
original = trainer._train_step


def failing(tuner, state, output):
    if state.step == 5 and how == "kill" and tuner.ranks.rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    if state.step == 5 and how == "resume" and tuner.ranks.fsdp:
        raise RuntimeError("crash")
    original(tuner, state, output)


def run(case, resume):
    handle, config, items, vector = build_case(case)
    accelerator = fsdp_accelerator() if case == "fsdp" else None  # ddp: tune() uses the launch's ranks
    tune(handle, config, items, os.path.join(root, case + "-two"), vector=vector, resume=resume, progress=False, accelerator=accelerator)


trainer._train_step = failing
run("ddp", resume=how == "resume")
if how == "resume":
    try:
        run("fsdp", resume=False)
    except RuntimeError:
        trainer._train_step = original
        run("fsdp", resume=True)
"""


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory) -> dict:
    """The one-process references and the two launches; what the tests below read."""
    root = tmp_path_factory.mktemp("distributed")
    script = root / "worker.py"
    script.write_text(WORKER.format(tests=str(TESTS)))
    for case in ("ddp", "fsdp"):
        handle, config, items, vector = build_case(case)
        tune(handle, config, items, root / f"{case}-one", vector=vector, progress=False)
    killed = _torchrun(script, root, "kill", tmp_path=root, check=False)
    latest = json.loads((root / "ddp-two" / "checkpoints" / "latest.json").read_text())
    finished_before_resume = (root / "ddp-two" / "metrics.json").exists()
    _torchrun(script, root, "resume", tmp_path=root)
    return {"root": root, "killed": killed, "latest": latest, "finished_before_resume": finished_before_resume}


# --------------------------------------------------------------------- launches


def test_accelerate_launch_tune_equals_one_process(cli_run, tiny_dir, tmp_path):
    """`accelerate launch -m reptune tune` (DDP, 2 processes): A/B items, a vector with paper routing
    (per-term gradients), a KL retain loss, early-stopping evaluations, 5 rows a batch (shares 2 + 3)."""
    gen = torch.Generator().manual_seed(0)
    meta = VectorMeta(model_id=str(tiny_dir), hidden_size=32, num_layers=4)
    vector = SteeringVector({layer: torch.randn(32, generator=gen) for layer in range(4)}, meta).save(tmp_path / "v.safetensors")
    data = tmp_path / "statements.csv"
    data.write_text("statement,label\n" + "".join(f"The sky is {'blue' if i % 2 else 'green'} {i}.,{i % 2}\n" for i in range(30)))
    args = ["tune", "--model", tiny_dir, "--data", data, "--preset", "honesty", "--vector", vector, "--routing", "paper", "--layers", "1-2",
            "--steps", "4", "--batch-size", "5", "--lr", "1e-3", "--adam-eps", "1e-4", "--eval-every", "2", "--checkpoint-every", "2", "--retain", "kl",
            "--precision", "fp32", "--device", "cpu"]
    one = cli_run(*args, "-o", tmp_path / "one")
    assert one.code == 0, one.err
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()), "-m", "reptune",
              *map(str, args), "-o", str(tmp_path / "two")]
    proc = subprocess.run(launch, env=_env(tmp_path), capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("tuned (honesty)") == 1  # the main process alone prints
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert (metrics["processes"], metrics["parallel"]) == (2, "ddp")
    assert_same_run(tmp_path / "one", tmp_path / "two")


def test_killed_two_process_run_resumes_to_the_one_process_result(two_process_runs):
    """DDP with twins, LoRA and a KL retain loss (3 twins a batch: shares of 1 and 2): one process is
    SIGKILLed at step 5; the relaunch with resume ends where one uninterrupted process does."""
    root = two_process_runs["root"]
    assert two_process_runs["killed"].returncode != 0 and not two_process_runs["finished_before_resume"]
    assert two_process_runs["latest"]["step"] in (2, 4)  # written by the main process alone, atomically
    metrics = json.loads((root / "ddp-two" / "metrics.json").read_text())
    assert (metrics["processes"], metrics["parallel"]) == (2, "ddp")
    assert_same_run(root / "ddp-one", root / "ddp-two")


def test_fsdp2_on_cpu_equals_one_process_and_resumes(two_process_runs):
    """FSDP2 (accelerate's prepare, forced onto gloo): twins, activation retain, clipping, 5 twins a batch;
    a crash at step 5 on every process, then a resume from the gathered checkpoint (shards cut again)."""
    root = two_process_runs["root"]
    metrics = json.loads((root / "fsdp-two" / "metrics.json").read_text())
    assert (metrics["processes"], metrics["parallel"]) == (2, "fsdp")
    assert_same_run(root / "fsdp-one", root / "fsdp-two")


# --------------------------------------------------------------------- in one process


def _fake(rank: int, world: int, fsdp: bool = False) -> SimpleNamespace:
    return SimpleNamespace(num_processes=world, process_index=rank, is_fsdp2=fsdp)


def test_shards_are_contiguous_and_a_process_without_rows_gets_a_stand_in():
    rows = list(range(5))
    assert [Ranks(_fake(rank, 2)).shard(rows) for rank in (0, 1)] == [([0, 1], True), ([2, 3, 4], True)]
    assert [Ranks(_fake(rank, 3)).shard([7, 8]) for rank in range(3)] == [([7], False), ([7], True), ([8], True)]
    single = Ranks()
    assert single.shard(rows) == (rows, True) and not single.distributed and single.mode is None
    assert Ranks(_fake(0, 1)).accelerator is None  # one process under an accelerator is one process


@pytest.mark.parametrize(
    "setup, fragment",
    [
        ({"distributed_type": "FSDP", "is_fsdp2": False}, "FSDP version 1 is not supported"),
        ({"mixed_precision": "bf16"}, "--mixed_precision bf16 is not used by reptune"),
        ({"distributed_type": "DEEPSPEED"}, "is not supported for tuning"),
        ({"distributed_type": "FSDP", "is_fsdp2": True, "ram_efficient": True}, "--fsdp_cpu_ram_efficient_loading is not supported"),
    ],
)
def test_unsupported_accelerate_setups_are_one_line_errors(setup, fragment):
    from accelerate.utils import DistributedType

    fields = {"distributed_type": "MULTI_CPU", "is_fsdp2": False, "mixed_precision": "no", **setup}
    plugin = SimpleNamespace(cpu_ram_efficient_loading=fields.pop("ram_efficient", False))
    fake = SimpleNamespace(**{**fields, "distributed_type": DistributedType[fields["distributed_type"]]}, state=SimpleNamespace(fsdp_plugin=plugin))
    with pytest.raises(ReptuneError, match=fragment):
        _check_supported(fake)


def test_fsdp_refuses_lora_and_paper_routing():
    from reptune.tuning.trainer import _check_placement

    handle = build_model("llama")
    fsdp = Ranks(_fake(0, 2, fsdp=True))
    with pytest.raises(ReptuneError, match="LoRA is not supported with FSDP"):
        _check_placement(handle, TuneConfig.from_preset("truth", layers="1", lora=True), fsdp)
    with pytest.raises(ReptuneError, match="routing 'paper' is not supported with FSDP"):
        _check_placement(handle, TuneConfig.from_preset("honesty", layers="1", routing="paper"), fsdp)
    _check_placement(handle, TuneConfig.from_preset("honesty", layers="1", routing="paper"), Ranks(_fake(0, 2)))  # DDP: fine


def test_run_workers_train_every_job_the_main_process_posts(tmp_path, monkeypatch):
    """`reptune run` in a launch: the main process posts each training job; another process trains the
    same job and leaves at the end (here a thread with a fake barrier; the training itself is tested above)."""
    from reptune.pipeline import workers

    trained: list[dict] = []
    monkeypatch.setattr(workers, "train_job", lambda job: trained.append(job))
    monkeypatch.setattr(workers, "POLL_S", 0.01)
    barrier = threading.Barrier(2, timeout=10)
    ranks = SimpleNamespace(barrier=barrier.wait)
    main, other = workers.Mailbox(tmp_path, 42), workers.Mailbox(tmp_path, 42)
    thread = threading.Thread(target=workers.serve, args=(other, ranks))
    thread.start()
    jobs = [{"folder": str(tmp_path / f"train-{index}"), "config": {"seed": index}} for index in range(2)]
    for job in jobs:
        main.post({"kind": "train", "job": job})
    workers.dismiss(main, ranks)
    thread.join(10)
    assert not thread.is_alive() and trained == jobs
    assert not main.folder.exists()  # removed once every process read the end
    assert main.folder.name.startswith(".") and main.folder.name.endswith(".tmp")  # a killed run's is cleaned by the next
