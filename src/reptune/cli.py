"""The ``reptune`` command line (typer + rich). Each command has a Python API twin.

Errors in user input print one line (``error: ...``) and exit with code 2; ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from reptune._progress import interactive, log_line
from reptune.errors import ReptuneError, check_range

app = typer.Typer(
    name="reptune",
    help="Find behaviour directions in language models, steer with them, tune them in.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# piped into a file or `less`, rich would cut tables and help at 80 columns ("--allow-model-mism…");
# a log is read in an editor, so it gets lines as wide as the content needs up to LOG_WIDTH
LOG_WIDTH = 160


def _log_width(stream: Any) -> int | None:
    """The width for output that is not a terminal (``None``: rich's own choice, the terminal's or ``COLUMNS``)."""
    isatty = getattr(stream, "isatty", None)
    return None if (callable(isatty) and isatty()) or os.environ.get("COLUMNS") else LOG_WIDTH


console = Console(width=_log_width(sys.stdout))
err_console = Console(stderr=True, soft_wrap=True)

ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Hub id, local directory or .gguf file (default: embedded SmolLM2-135M-Instruct)."),
]
LayersPathOpt = Annotated[
    str | None, typer.Option("--layers-path", help="Attribute path of the decoder blocks for unknown layouts, e.g. model.decoder.layers.")
]
PrecisionOpt = Annotated[
    str, typer.Option("--precision", help="auto (bf16 only where it is faster here), fp32, or bf16 (bf16 autocast over fp32 weights).")
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N.")]
DeviceMapOpt = Annotated[
    str | None,
    typer.Option(
        "--device-map",
        help="Spread a model too big for one device over several, or offload it: auto, balanced, balanced_low_0, sequential, "
        'or a JSON object {"MODULE": "cpu" | "cuda:N" | N | "disk"} inline or in a .json file (instead of --device).',
    ),
]
PickleOpt = Annotated[
    bool, typer.Option("--allow-pickle", help="Also load pickled .bin weights (torch.load can run code); by default only safetensors load."),
]
TrustOpt = Annotated[
    bool,
    typer.Option("--trust-remote-code", help="Let transformers run Python code shipped with the model (off by default; a config file cannot turn it on)."),
]


# what a Ctrl-C leaves behind, set by each command once it knows its outputs (see main())
_INTERRUPTED: dict[str, str | Callable[[], str]] = {"note": "nothing was saved; run the command again"}


def _on_interrupt(note: str | Callable[[], str]) -> None:
    """Say what an interruption from now on keeps and how to resume (printed as ``interrupted: NOTE``);
    a callable is asked at the interruption, when it can count what was kept."""
    _INTERRUPTED["note"] = note


def _interrupted_note() -> str:
    note = _INTERRUPTED["note"]
    return note() if callable(note) else note


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    """reptune: representation tuning toolkit."""
    # read by main() through sys.argv; declared here so --help lists it


def _check_output(path: Path) -> None:
    """Fail before any work when ``path`` cannot be written (a directory, parent a file, or not writable)."""
    if path.is_dir():
        raise ReptuneError(f"cannot write {path}: it is a directory")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ReptuneError(f"cannot write {path}: {parent} is not a writable directory")


def _resolved_precision(precision: str, device: str) -> str:
    from reptune.precision import resolve_precision

    return resolve_precision(precision, device)[0]


def _precheck_data(spec: str | None, task: str | None = None) -> None:
    """Read a local data file (or folder) before the model loads, so a broken one fails in a second.

    ``task`` picks the reader of an evaluation task's data; ``None`` is a contrast/statement set.
    Hub ids and names that are not local paths are left to the command itself.
    """
    if not spec or not Path(str(spec)).expanduser().exists():
        return
    from reptune.data.sources import read_source

    if task is None or task in {"facts-ab", "caa"}:
        if Path(str(spec)).expanduser().is_file():
            read_source(spec)
        return
    from reptune.evaluation import data as evaldata

    readers = {
        "tqa-ab": evaldata.load_truthfulqa_ab, "tqa-mc1": evaldata.load_truthfulqa_mc, "tqa-mc2": evaldata.load_truthfulqa_mc,
        "mmlu": lambda value: evaldata.load_mmlu(value, None), "perplexity": evaldata.load_text,
        "kl": lambda value: read_source(value) if Path(value).suffix in {".csv", ".jsonl", ".json"} else evaldata.load_text(value),
    }
    if task in readers:
        readers[task](str(spec))


def _check_outputs(*paths: Path) -> None:
    """:func:`_check_output` for every file a command will write, before the model loads."""
    for path in paths:
        _check_output(path)


def _sidecars(vector_path: Path) -> list[Path]:
    """A vector file and what is written beside it: VEC.json and the layer scan VEC.scan.{json,md,png}."""
    stem = vector_path.with_suffix("")
    return [vector_path, vector_path.with_suffix(".json"), *(stem.with_name(f"{stem.name}.scan.{ext}") for ext in ("json", "md", "png"))]


def _load(
    model: str | None, precision: str, device: str = "auto", layers_path: str | None = None, trust_remote_code: bool = False, allow_pickle: bool = False,
    device_map: str | None = None, status: bool = True,
):
    from reptune.models import load_model
    from reptune.precision import resolve_precision

    resolved, _why = resolve_precision(precision, device)
    what = f"loading {model or 'embedded SmolLM2-135M-Instruct'} ({resolved}) ..."
    if status and not interactive():  # a log file gets a line where a terminal gets the spinner
        log_line(what)
    spinner = err_console.status(what) if status and interactive() else contextlib.nullcontext()
    with spinner:
        return load_model(
            model, device=device, autocast="bf16" if resolved == "bf16" else None, layers_path=layers_path, trust_remote_code=trust_remote_code,
            allow_pickle=allow_pickle, device_map=device_map,
        )


def _check_device_map(device_map: str | None, device: str) -> None:
    """``--device-map`` checked before any other work (one line for a bad value or one given with ``--device``)."""
    from reptune.models import parse_device_map

    if device_map is not None and device != "auto":
        raise ReptuneError("pass --device or --device-map, not both")
    parse_device_map(device_map)


@app.command()
def info(model: ModelOpt = None, layers_path: LayersPathOpt = None, device: DeviceOpt = "auto", trust_remote_code: TrustOpt = False,
         allow_pickle: PickleOpt = False, device_map: DeviceMapOpt = None) -> None:
    """Show a model's layers, hidden size and the hook sites reptune uses."""
    from reptune.sites import SITE_CONVENTION_DOC

    _check_device_map(device_map, device)
    handle = _load(model, "fp32", device, layers_path, trust_remote_code, allow_pickle, device_map)
    table = Table(title=f"{handle.model_id}", show_header=False)
    for key, value in handle.describe().items():
        table.add_row(key, str(value))
    table.add_row("site convention", SITE_CONVENTION_DOC)
    block = type(handle.layers[0]).__name__
    table.add_row("hook sites", f"layer L -> {handle.layers_path}[L] ({block}) output, L = 0..{handle.num_layers - 1}")
    console.print(table)


@app.command()
def extract(
    output: Annotated[Path, typer.Option("--output", "-o", help="Vector file to write (.safetensors); VEC.json and VEC.scan.{json,md,png} go beside it.")],
    data: Annotated[str, typer.Option("--data", "-d", help="Pairs .jsonl, statements .csv, CAA .json, 'honesty', 'facts', 'caa:<behaviour>' or a hub id.")] = "honesty",
    model: ModelOpt = None,
    layers: Annotated[str, typer.Option("--layers", "-l", help="Layer spec: 15, -1, 10-17, -8..-1, 3,5,7, all, middle.")] = "all",
    method: Annotated[str, typer.Option("--method", help="mean-diff, pca or probe.")] = "mean-diff",
    positions: Annotated[str, typer.Option("--positions", "-p", help="all, last, last:N, marker:TEXT[:K], generated.")] = "last",
    normalize: Annotated[str, typer.Option("--normalize", help="gap, unit or none.")] = "gap",
    variant: Annotated[str, typer.Option("--variant", help="For statement CSVs: paired or unpaired persona pairs.")] = "paired",
    limit: Annotated[int | None, typer.Option("--limit", help="Use at most N pairs.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b")] = 8,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    per_position: Annotated[
        bool, typer.Option("--per-position", help="With --positions last:N: one vector per position, written as STEM.pos-K.safetensors.")
    ] = False,
    precision: PrecisionOpt = "auto",
    device: DeviceOpt = "auto",
    layers_path: LayersPathOpt = None,
    trust_remote_code: TrustOpt = False,
    allow_pickle: PickleOpt = False,
    device_map: DeviceMapOpt = None,
) -> None:
    """Extract a behaviour vector from contrast pairs (and scan layers)."""
    from reptune.data import load_contrast_pairs
    from reptune.directions import extract_vector
    from reptune.reporting import scan_markdown, write_scan

    if output.suffix != ".safetensors":
        raise ReptuneError(f"--output must end in .safetensors, got {output.name}")
    check_range("--limit", limit, 1)
    check_range("--batch-size", batch_size, 1)
    _check_device_map(device_map, device)
    _check_outputs(*_sidecars(output))
    _precheck_data(data)
    handle = _load(model, precision, device, layers_path, trust_remote_code, allow_pickle, device_map)
    pairs, origin = load_contrast_pairs(data, handle.tokenizer, variant=variant, limit=limit, seed=seed)
    result, scan_result = extract_vector(
        handle, pairs, layers, method=method, positions=positions, normalize=normalize, batch_size=batch_size,
        dataset=origin, seed=seed, per_position=per_position,
    )
    if per_position:
        count = len(result)
        targets = [output.with_name(f"{output.stem}.pos{index - count}.safetensors") for index in range(count)]
        outputs = list(zip(result, scan_result, targets))
    else:
        outputs = [(result, scan_result, output)]
    for vector, scan, path in outputs:
        vector.save(path)
        if scan is not None:
            write_scan(scan, path)
            console.print(scan_markdown(scan, rich=True))
        err_console.print(f"wrote {path} ({len(vector.layers)} layers, {len(pairs)} pairs from {origin})")


@app.command()
def steer(
    vector: Annotated[Path, typer.Option("--vector", "-v", help="Vector file from `reptune extract`.")],
    prompt: Annotated[list[str], typer.Option("--prompt", help="User prompt (repeat for several).")],
    multiplier: Annotated[list[float], typer.Option("--multiplier", "-x", help="Steering multiplier (repeat for several; 0 = unsteered).")] = [-4.0, 0.0, 4.0],  # noqa: B006
    model: ModelOpt = None,
    layers: Annotated[str | None, typer.Option("--layers", "-l", help="Layers of the vector to steer at (default: the vector's best layer).")] = None,
    scope: Annotated[str, typer.Option("--scope", help="all, generated or from:K.")] = "all",
    operator: Annotated[str, typer.Option("--operator", help="add or ablate.")] = "add",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n")] = 40,
    chat: Annotated[bool, typer.Option("--chat/--no-chat", help="Apply the chat template to prompts.")] = True,
    allow_model_mismatch: Annotated[bool, typer.Option("--allow-model-mismatch", help="Use a vector made for another model id.")] = False,
    precision: PrecisionOpt = "auto",
    device: DeviceOpt = "auto",
    layers_path: LayersPathOpt = None,
    trust_remote_code: TrustOpt = False,
    allow_pickle: PickleOpt = False,
    device_map: DeviceMapOpt = None,
) -> None:
    """Greedy completions side by side, one column per multiplier."""
    from reptune.steering import steered_generate
    from reptune.vectors import load_vector

    for value in multiplier:
        check_range("--multiplier", value)
    check_range("--max-new-tokens", max_new_tokens, 1)
    _check_device_map(device_map, device)
    loaded = load_vector(vector)  # validate the file before loading the model
    handle = _load(model, precision, device, layers_path, trust_remote_code, allow_pickle, device_map)
    loaded.check_compatible(handle, allow_model_mismatch=allow_model_mismatch)
    chosen = layers if layers is not None else default_steer_layers(loaded)
    results = steered_generate(
        handle, loaded, prompt, multiplier, chosen, scope=scope, operator=operator,
        allow_model_mismatch=allow_model_mismatch, max_new_tokens=max_new_tokens, chat=chat,
    )
    table = Table(title=f"steering at layer(s) {chosen} ({operator}, scope {scope})", show_lines=True)
    table.add_column("prompt", style="bold")
    for value in results:
        table.add_column(f"x {value:g}")
    for index, text in enumerate(prompt):
        table.add_row(text, *(results[value][index] for value in results))
    console.print(table)


def default_steer_layers(vector) -> str:
    """The vector's recorded best layer, else its middle layer."""
    best = (vector.meta.extra or {}).get("best_layers")
    if best:
        return str(best[0])
    return str(vector.layers[len(vector.layers) // 2])


@app.command("export-gguf")
def export_gguf_cmd(
    vector: Annotated[Path, typer.Argument(help="Vector file (.safetensors).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="llama.cpp control vector to write (.gguf).")],
    layers: Annotated[str | None, typer.Option("--layers", "-l", help="Layers to export (default: all but layer 0).")] = None,
    model_hint: Annotated[str, typer.Option("--model-hint", help="llama.cpp architecture name.")] = "llama",
) -> None:
    """Export a vector as a llama.cpp control vector (direction.L = reptune layer L)."""
    from reptune.vectors import control_vector_layers, export_gguf, load_vector

    loaded = load_vector(vector)
    _check_output(output)
    export_gguf(loaded, output, layers=layers, model_hint=model_hint)
    err_console.print(f"wrote {output} (layers {control_vector_layers(loaded, layers)})")


@app.command("export-model")
def export_model_cmd(
    model_dir: Annotated[Path, typer.Argument(help="Model directory: the merged output of `reptune tune -o DIR`, or any HF causal-LM folder.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="GGUF model file to write (.gguf).")],
    outtype: Annotated[str, typer.Option("--outtype", help="Weight type: f32 (exact), f16, bf16 or q8_0.")] = "f16",
    llama_cpp: Annotated[
        Path | None, typer.Option("--llama-cpp", help="llama.cpp tree holding convert_hf_to_gguf.py (default: $REPTUNE_LLAMA_CPP, else <venv>/llama.cpp).")
    ] = None,
    allow_pickle: PickleOpt = False,
    trust_remote_code: TrustOpt = False,
) -> None:
    """Export a tuned model to one GGUF file for llama.cpp (llama.cpp's own convert_hf_to_gguf.py)."""
    from reptune.serving.llamacpp import OUTTYPES, check_model_dir, export_model, find_llama_cpp

    if outtype not in OUTTYPES:
        raise ReptuneError(f"unknown --outtype {outtype!r}: use one of {', '.join(OUTTYPES)}")
    if output.suffix.lower() != ".gguf":
        raise ReptuneError(f"--output must be a .gguf file, got {output}")
    check_model_dir(model_dir, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    _check_output(output)
    find_llama_cpp(llama_cpp, need=("converter",))
    _on_interrupt(f"{output} was not written (the converter writes to a temporary file); run the command again")
    with err_console.status(f"converting {model_dir} to {outtype} GGUF with llama.cpp's converter ..."):
        info = export_model(
            model_dir, output, outtype=outtype, llama_cpp=llama_cpp, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
        )
    err_console.print(f"wrote {output} ({info.describe()})")


@app.command()
def tune(
    output: Annotated[Path, typer.Option("--output", "-o", help="Run directory: merged weights, config, metrics, curves, checkpoints.")],
    preset: Annotated[str, typer.Option("--preset", help="truth, lie, honesty, dishonesty, tune-out, pos or neg (--paper: the paper's optimisation).")] = "honesty",
    vector: Annotated[Path | None, typer.Option("--vector", "-v", help="Vector file (needed by every preset but truth/lie).")] = None,
    data: Annotated[str, typer.Option("--data", "-d", help="Statements CSV / 'honesty' / 'facts' (A/B questions), CAA set, or pairs JSONL (SFT).")] = "honesty",
    model: ModelOpt = None,
    layers: Annotated[str | None, typer.Option("--layers", "-l", help="Trained blocks (layer spec), e.g. 10-17.")] = None,
    rep_layers: Annotated[str | None, typer.Option("--rep-layers", help="Layers the representation loss reads (default: trained layers the vector has).")] = None,
    rep_positions: Annotated[
        str | None, typer.Option("--rep-positions", help="last, last:N, all (prompt tokens), generated, or pos:K (one token K from the end; needs the STEM.pos-K.safetensors vector of extract --per-position).")
    ] = None,
    train_modules: Annotated[str | None, typer.Option("--train-modules", help="Regex: which parameters of the trained blocks train (default all).")] = None,
    param_group: Annotated[
        list[str] | None, typer.Option("--param-group", help="PATTERN=LR: learning rate for matching parameters (repeatable), e.g. 'self_attn\\.(v_proj|o_proj)=1e-5'.")
    ] = None,
    lora: Annotated[bool, typer.Option("--lora", help="Train LoRA adapters (peft); the merged model and the adapter are saved.")] = False,
    paper: Annotated[
        bool, typer.Option("--paper", help="The paper's optimisation: rep loss on v/o only, v/o lr 1e-5 / rest 1e-6, AdamW eps 1e-4, wd 0.1, linear warm-up, position pos:-8.")
    ] = False,
    routing: Annotated[str | None, typer.Option("--routing", help="all (every term updates every trained parameter) or paper (rep loss only --rep-params).")] = None,
    rep_params: Annotated[str | None, typer.Option("--rep-params", help="Regex: parameters the representation loss updates with --routing paper.")] = None,
    adam_eps: Annotated[float | None, typer.Option("--adam-eps", help="AdamW eps.")] = None,
    weight_decay: Annotated[float | None, typer.Option("--weight-decay", help="AdamW weight decay.")] = None,
    lr_schedule: Annotated[str | None, typer.Option("--lr-schedule", help="constant or linear (warm-up, then linear decay to 0).")] = None,
    warmup_steps: Annotated[int | None, typer.Option("--warmup-steps")] = None,
    max_grad_norm: Annotated[float | None, typer.Option("--max-grad-norm", help="Gradient clipping norm (0 = none).")] = None,
    early_stop_on: Annotated[str | None, typer.Option("--early-stop-on", help="Validation quantity for early stopping: loss, rep or tok.")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Optimizer steps.")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Learning rate.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", "-b", help="Items per optimizer step (under accelerate launch: the global batch, shared by the processes).")] = None,
    retain: Annotated[str | None, typer.Option("--retain", help="none, kl, act or both (with --w-retain).")] = None,
    retain_data: Annotated[
        str | None, typer.Option("--retain-data", help="Retain corpus (text file or dataset argument; default: WikiText-2 train if in $REPTUNE_DATA_DIR, else shipped neutral text).")
    ] = None,
    w_tok: Annotated[float | None, typer.Option("--w-tok", help="Token loss weight.")] = None,
    w_rep: Annotated[float | None, typer.Option("--w-rep", help="Representation loss weight.")] = None,
    w_retain: Annotated[float | None, typer.Option("--w-retain", help="Retain loss weight.")] = None,
    eval_every: Annotated[int | None, typer.Option("--eval-every")] = None,
    patience: Annotated[int | None, typer.Option("--patience", help="Evaluations without validation improvement before stopping.")] = None,
    checkpoint_every: Annotated[int | None, typer.Option("--checkpoint-every")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Use at most N training items.")] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint in --output.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Write into a non-empty --output that is not a reptune tuning run (its files may be replaced).")] = False,
    print_config: Annotated[bool, typer.Option("--print-config", help="Print the resolved config and exit.")] = False,
    allow_model_mismatch: Annotated[bool, typer.Option("--allow-model-mismatch")] = False,
    token_target: Annotated[
        str | None, typer.Option("--token-target", help="Override the preset's token loss: truth, lie, soft, sft (completions), none.")
    ] = None,
    items_kind: Annotated[
        str, typer.Option("--items", help="ab: statements as A/B questions (answer-letter loss); twin: true/false twins (pairwise sequence loss; needs a 'pair' column).")
    ] = "ab",
    allow_blocks_beyond_rep: Annotated[
        bool, typer.Option("--allow-blocks-beyond-rep", help="Allow trained blocks deeper than every --rep-layers layer (they get only the token loss).")
    ] = False,
    weights: Annotated[
        str, typer.Option("--weights", help="full: the whole merged model (servable); blocks: only the trained blocks, loaded over the base model (MBs, not the model).")
    ] = "full",
    precision: PrecisionOpt = "auto",
    device: DeviceOpt = "auto",
    layers_path: LayersPathOpt = None,
    trust_remote_code: TrustOpt = False,
    allow_pickle: PickleOpt = False,
) -> None:
    """Fine-tune a direction into (or out of) the weights, or run a token-only baseline.

    Several GPUs: accelerate launch --multi_gpu --num_processes N -m reptune tune ... (or --use_fsdp --fsdp_version 2).
    """
    _tune(dict(locals()))  # every option by name; the body reads as the steps below


def _tune(options: dict[str, Any]) -> None:
    """``reptune tune``: config, vector, data and outputs checked before the model loads, then :func:`reptune.tuning.tune`."""
    import json

    from reptune.tuning import load_tune_items
    from reptune.tuning import tune as run_tune
    from reptune.tuning.distributed import current as current_ranks
    from reptune.vectors import load_vector

    config = _tune_config_from_options(options)
    vector, output = options["vector"], options["output"]
    loaded = load_vector(vector) if vector is not None else None
    if options["print_config"]:  # the config and, per loss term, what it updates where (resolved on --model when given)
        _print_tune_config(config, loaded, options)
        return
    ranks = current_ranks(device=options["device"])  # several processes under accelerate launch / torchrun
    _check_tune_inputs(config, loaded, options)
    with ranks.main_first():  # under a launch: the main process loads (and fills any cache) first
        handle = _load(options["model"], options["precision"], ranks.load_device(options["device"]), options["layers_path"],
                       options["trust_remote_code"], options["allow_pickle"], status=ranks.is_main)
    if loaded is not None:
        loaded.check_compatible(handle, allow_model_mismatch=options["allow_model_mismatch"])
    items, origin = load_tune_items(options["data"], handle.tokenizer, limit=config.limit, kind=options["items_kind"])
    result = run_tune(
        handle, config, items, output, vector=loaded, vector_path=str(vector) if vector else None, data_origin=origin,
        resume=options["resume"], allow_model_mismatch=options["allow_model_mismatch"], weights=options["weights"],
    )
    if not ranks.is_main:  # the main process prints
        return
    table = Table(title=f"tuned ({options['preset']}) -> {output}", show_header=False)
    for key, value in result.metrics.items():
        table.add_row(key, json.dumps(value) if isinstance(value, dict) else str(value))
    console.print(table)


def _tune_config_from_options(options: dict[str, Any]):
    """The :class:`~reptune.tuning.TuneConfig` of the preset with the options given as overrides (unset ones keep the preset's)."""
    from reptune.tuned_blocks import WEIGHT_FORMATS
    from reptune.tuning import TuneConfig
    from reptune.tuning.items import ITEM_KINDS

    o = options
    retain, w_retain = o["retain"], o["w_retain"]
    overrides = {
        "layers": o["layers"], "rep_layers": o["rep_layers"], "rep_positions": o["rep_positions"], "lora": o["lora"] or None,
        "steps": o["steps"], "lr": o["lr"], "batch_size": o["batch_size"], "retain": retain, "retain_data": o["retain_data"],
        "w_tok": o["w_tok"], "w_rep": o["w_rep"],
        "w_retain": w_retain if w_retain is not None else (1.0 if retain not in (None, "none") else None), "eval_every": o["eval_every"],
        "patience": o["patience"], "checkpoint_every": o["checkpoint_every"], "limit": o["limit"], "seed": o["seed"],
        "autocast": "bf16" if _resolved_precision(o["precision"], o["device"]) == "bf16" else "none",
        "train_modules": o["train_modules"], "allow_blocks_beyond_rep": o["allow_blocks_beyond_rep"] or None,
        "param_groups": _parse_param_groups(o["param_group"] or []) or None,
        "routing": o["routing"], "rep_params": o["rep_params"], "adam_eps": o["adam_eps"], "weight_decay": o["weight_decay"],
        "lr_schedule": o["lr_schedule"], "warmup_steps": o["warmup_steps"], "max_grad_norm": o["max_grad_norm"],
        "early_stop_on": o["early_stop_on"], "token_target": o["token_target"],
    }
    if o["items_kind"] not in ITEM_KINDS:  # before any model or data work
        raise ReptuneError(f"--items must be one of {', '.join(ITEM_KINDS)}, got {o['items_kind']!r}")
    if o["weights"] not in WEIGHT_FORMATS:
        raise ReptuneError(f"--weights must be full or blocks, got {o['weights']!r}")
    return TuneConfig.from_preset(o["preset"], paper=o["paper"], **overrides)


def _print_tune_config(config, loaded, options: dict[str, Any]) -> None:
    """``--print-config``: the config and its plan (resolved against ``--model`` when given and the vector is there or not needed)."""
    import json

    plan = config.describe()
    if options["model"] is not None and (loaded is not None or not config.uses_vector):
        from reptune.tuning import load_tune_items
        from reptune.tuning.trainer import tuning_plan

        handle = _load(options["model"], options["precision"], options["device"], options["layers_path"])
        items, _ = load_tune_items(options["data"], handle.tokenizer, limit=config.limit, kind=options["items_kind"])
        plan = tuning_plan(handle, config, items, loaded, allow_model_mismatch=options["allow_model_mismatch"])
    console.print_json(json.dumps({**config.to_json(), "plan": plan}))


def _check_tune_inputs(config, loaded, options: dict[str, Any]) -> None:
    """The vector, ``--resume``, the data, the retain corpus and the run directory, before the model loads."""
    from reptune._io import check_output_dir

    output: Path = options["output"]
    if config.uses_vector and loaded is None:
        raise ReptuneError(f"preset {options['preset']!r} needs --vector")
    if options["resume"] and not (output / "checkpoints" / "latest.json").is_file():
        where = "does not exist" if not output.exists() else "holds no checkpoint"
        raise ReptuneError(f"--resume: {output} {where}, so there is nothing to continue; run without --resume to start a new run")
    _precheck_data(options["data"])  # data files fail before the model loads
    if config.retain_data:  # a broken retain corpus fails now too (the trainer reads it again, recording its source)
        from reptune.tuning.items import load_retain_texts

        load_retain_texts(config.retain_data)
    check_output_dir(output, "tune", overwrite=options["overwrite"])  # e.g. a folder with the user's own README.md
    names = ("config.json", "model.safetensors", "tuned_blocks.safetensors", "tune_config.json", "metrics.json", "loss_curves.json", "loss_curves.png", "README.md")
    _check_outputs(*(output / name for name in names))
    _on_interrupt(
        f"checkpoints (every {config.checkpoint_every} steps) are kept in {output / 'checkpoints'}; "
        "run the same command with --resume to continue"
    )


def _parse_param_groups(specs: list[str]) -> list[dict[str, float | str]]:
    """``["PATTERN=LR", ...]`` -> ``[{"pattern": ..., "lr": ...}]``, validating both parts."""
    import re

    groups = []
    for spec in specs:
        pattern, sep, value = spec.rpartition("=")
        try:
            lr = float(value)
            re.compile(pattern)
        except (ValueError, re.error):
            sep = ""
        if not sep or not pattern:
            raise ReptuneError(f"--param-group {spec!r} must be PATTERN=LR with a valid regex and a number")
        groups.append({"pattern": pattern, "lr": lr})
    return groups


def _print_run(result) -> None:
    from rich.table import Table

    headline = result.results.get("headline", {})
    table = Table(title=f"{headline.get('task', 'facts-ab')} {headline.get('metric', 'accuracy')} (held-out test statements)")
    for column in ("condition", "value", "95% CI", "n"):
        table.add_column(column)
    for row in headline.get("rows", []):
        table.add_row(row["label"], f"{row['value']:.3f}", f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}]", str(row["n"]))
    err_console.print(table)
    for claim in result.results.get("claims", []):
        err_console.print(f"[bold]{claim['verdict']}[/]: {claim['claim']}")
    total = result.results.get("timings", {}).get("total_s")
    err_console.print(
        f"stages run: {len(result.stages_run)}, reused: {len(result.stages_skipped)}; total {total:.0f} s"
        if total is not None else f"stages run: {len(result.stages_run)}, reused: {len(result.stages_skipped)}"
    )
    for name, path in result.report.items():
        err_console.print(f"{name}: {path}")


def _check_run_dir(output: Path) -> None:
    """An experiment writes only into a new or empty folder, or one holding a reptune run."""
    from reptune._io import check_output_dir

    check_output_dir(output, "experiment", flag="")
    _check_outputs(output / "results.json", output / "report.md", output / "report.html", output / "config.yaml")


def _run_config(config, output: Path, command: str, trust_remote_code: bool = False, allow_pickle: bool = False) -> None:
    """Run an experiment; under ``accelerate launch`` every process calls this, the main one prints."""
    from reptune.pipeline import run_experiment
    from reptune.tuning.distributed import current as current_ranks

    _check_run_dir(output)
    output.mkdir(parents=True, exist_ok=True)
    _on_interrupt(f"finished stages are kept in {output / 'stages'}; run the same command (without --fresh) to resume")
    run = run_experiment(config, output, progress=True, command=command, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    if current_ranks().is_main:
        _print_run(run)


SetOpt = Annotated[list[str], typer.Option("--set", help="Override a config key: --set train.steps=200 --set seeds=[0,1,2].")]
PrintConfigOpt = Annotated[bool, typer.Option("--print-config", help="Print the resolved config and exit.")]
PlanOpt = Annotated[bool, typer.Option("--plan", help="Dry run: load the model and print, per variant, which tensors each loss term updates, at which layers and positions; writes nothing.")]
FreshOpt = Annotated[bool, typer.Option("--fresh", help="Delete what an earlier run wrote in the run directory first (no reuse of finished stages).")]
NoStudiesOpt = Annotated[bool, typer.Option("--no-studies", help="Turn every study section off (stacking, sample_efficiency, generalisation, gcg): the paper's study alone; --set can turn one back on.")]


def _overrides(settings: list[str], no_studies: bool = False, base: dict[str, str] | None = None) -> dict[str, str]:
    """``--set KEY=VALUE`` items as config overrides, after ``base`` and, with ``no_studies``, every study off."""
    from reptune.pipeline.studies import STUDIES

    overrides = dict(base or {})
    if no_studies:
        overrides.update({f"{name}.enabled": "false" for name in STUDIES})
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ReptuneError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = value
    return overrides


@app.command("run")
def run_cmd(
    experiment: Annotated[str, typer.Argument(help=(
        "Experiment YAML, or the name of a shipped one: demo, gpu-llama2-13b, study-counter, study-gcg, "
        "study-generalisation, study-sample-efficiency, study-stacking."))],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Run directory (default runs/<name>).")] = None,
    settings: SetOpt = [],  # noqa: B006 (typer reads the default)
    print_config: PrintConfigOpt = False,
    plan: PlanOpt = False,
    fresh: FreshOpt = False,
    no_studies: NoStudiesOpt = False,
    trust_remote_code: TrustOpt = False,
    allow_pickle: PickleOpt = False,
) -> None:
    """Run (or resume) a whole experiment: vector, sweep, tuning, evaluation, report.

    Under accelerate launch the training stages use every process, the other stages the first (README: Scaling out).
    """
    from reptune.pipeline import builtin_config, load_config

    path = Path(experiment)
    if not path.exists() and "/" not in experiment and not experiment.endswith((".yaml", ".yml")):
        path = builtin_config(experiment)
    config = load_config(path, _overrides(settings, no_studies))
    output = output or Path("runs") / config.name
    command = " ".join(["reptune", "run", experiment, "-o", str(output), *(["--no-studies"] if no_studies else []), *[f"--set {s}" for s in settings]])
    _start(config, output, command, print_config=print_config, plan=plan, fresh=fresh, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)


def _start(config, output: Path, command: str, *, print_config: bool, plan: bool, fresh: bool, trust_remote_code: bool, allow_pickle: bool) -> None:
    """What `run` and `demo` share: print the config, a dry run, or (after --fresh's clean-up) the run."""
    if print_config:
        typer.echo(config.to_yaml())
        return
    if plan:
        import json

        from reptune.pipeline.runner import plan_experiment

        console.print_json(json.dumps(plan_experiment(config, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)))
        return
    _check_run_dir(output)  # before anything is deleted: a folder of the user's is refused, not cleaned
    if fresh:
        from reptune.pipeline.runner import clean_run
        from reptune.tuning.distributed import current as current_ranks

        if current_ranks().is_main:  # under accelerate launch the main process cleans, once
            clean_run(output)
    _run_config(config, output, command=command, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)


@app.command()
def demo(
    output: Annotated[Path, typer.Option("--output", "-o", help="Run directory.")] = Path("runs/demo"),
    model: ModelOpt = None,
    settings: SetOpt = [],  # noqa: B006
    print_config: PrintConfigOpt = False,
    plan: PlanOpt = False,
    fresh: FreshOpt = False,
    no_studies: NoStudiesOpt = False,
    trust_remote_code: TrustOpt = False,
    allow_pickle: PickleOpt = False,
) -> None:
    """The main job: the honesty study on the embedded model and reduced versions of the studies, ending in report.md / report.html.

    The same as `reptune run demo -o runs/demo` (every option of `run` works here too)."""
    from reptune.pipeline import builtin_config, load_config

    config = load_config(builtin_config("demo"), _overrides(settings, no_studies, {"model": model} if model else None))
    command = " ".join(["reptune", "demo", "-o", str(output), *(["--no-studies"] if no_studies else []), *[f"--set {s}" for s in settings]])
    _start(config, output, command, print_config=print_config, plan=plan, fresh=fresh, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)


@app.command("report")
def report_cmd(run_dir: Annotated[Path, typer.Argument(help="A run directory holding results.json.")]) -> None:
    """Rebuild report.md and report.html of a run from its results.json."""
    from reptune.reporting.experiment import write_report

    if not (run_dir / "results.json").is_file():
        raise ReptuneError(f"{run_dir} holds no results.json (run `reptune run` first)")
    for name, path in write_report(run_dir).items():
        err_console.print(f"{name}: {path}")


@app.command("discover")
def discover_cmd(
    output: Annotated[Path, typer.Option("--output", "-o", help="Best vector (.safetensors); ranks 2..K go to STEM.rankN.safetensors, the report to STEM.discovery.md.")],
    prompts: Annotated[Path | None, typer.Option("--prompts", help="Prompts file: .txt (one per line), .jsonl or .json.")] = None,
    prompt: Annotated[list[str] | None, typer.Option("--prompt", help="A prompt (repeat for several; adds to --prompts).")] = None,
    model: ModelOpt = None,
    method: Annotated[str, typer.Option("--method", help="melbo, random, dct, anneal (search around the best random vectors or --init) or cmaes (CMA-ES in a subspace).")] = "melbo",
    source: Annotated[int | None, typer.Option("--source", help="Layer the vectors are added at (default: num_layers/4).")] = None,
    target: Annotated[int | None, typer.Option("--target", help="Layer whose change is measured (default: 3*num_layers/4).")] = None,
    radius: Annotated[str, typer.Option("--radius", "-r", help="Norm R of every vector, or 'auto' (DCT calibration, nonlinear/linear = 0.5).")] = "auto",
    num: Annotated[int, typer.Option("--num", "-k", help="Number of vectors (DCT: factors).")] = 8,
    steps: Annotated[int, typer.Option("--steps", help="MELBO steps (paper: 300).")] = 300,
    lr: Annotated[float, typer.Option("--lr", help="MELBO Adam learning rate (paper: 1e-3; raise it for short runs).")] = 1e-3,
    orthogonal: Annotated[bool | None, typer.Option("--orthogonal/--no-orthogonal", help="Vectors orthogonal to earlier ones (default: melbo/random off, dct on).")] = None,
    orthogonal_order: Annotated[str, typer.Option("--orthogonal-order", help="melbo/random with --orthogonal: sequential (the paper's: vector i trained after 0..i-1 are frozen) or parallel (all at once, faster).")] = "sequential",
    positions: Annotated[str, typer.Option("--positions", "-p", help="Token positions whose change counts: all, last:N, marker:TEXT[:K].")] = "all",
    power_p: Annotated[float, typer.Option("--p", help="MELBO exponent p (norm power per token).")] = 2.0,
    power_q: Annotated[float, typer.Option("--q", help="MELBO exponent q (root per prompt).")] = 1.0,
    candidates: Annotated[int | None, typer.Option("--candidates", help="random: keep the best --num of this many random vectors; anneal: random vectors scored to pick the starts (default budget/2 in gradient mode, budget/4 free).")] = None,
    refine_steps: Annotated[int, typer.Option("--refine-steps", help="random: local MELBO steps on each kept vector.")] = 0,
    init: Annotated[Path | None, typer.Option("--init", help="melbo, anneal, cmaes: start from this vector file's source-layer vector (search around it).")] = None,
    dct_iters: Annotated[int, typer.Option("--dct-iters", help="DCT gradient iterations.")] = 10,
    eval_prompts: Annotated[Path | None, typer.Option("--eval-prompts", help="Held-out prompts file for scoring (default: the training prompts).")] = None,
    score: Annotated[bool, typer.Option("--score/--no-score", help="Generate and score completions for every vector.")] = True,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n")] = 32,
    diverge_within: Annotated[int, typer.Option("--diverge-within", help="Divergence window in tokens.")] = 8,
    logit: Annotated[str | None, typer.Option("--logit", help="A,B: report the next-token logit(A) - logit(B), e.g. 'Sure,Sorry'.")] = None,
    match: Annotated[list[str] | None, typer.Option("--match", help="String to look for in completions (repeat for several).")] = None,
    rank_by: Annotated[str, typer.Option("--rank-by", help="auto, method (objective / DCT alpha), diverge, logit, match, judge or side_effect.")] = "auto",
    side_effects: Annotated[str | None, typer.Option("--side-effects", help="'neutral' (shipped neutral sentences) or a prompts file: KL to the unsteered model on them per vector.")] = None,
    side_effect_penalty: Annotated[float, typer.Option("--side-effect-penalty", help="Subtract this times side_effect from the objective melbo, anneal and cmaes optimise, and from the ranking score (needs --side-effects).")] = 0.0,
    sweep: Annotated[bool, typer.Option("--sweep", help="Also score random vectors on a log grid of radii (in the report).")] = False,
    budget: Annotated[int, typer.Option("--budget", help="anneal/cmaes: objective evaluations in all (vectors scored).")] = 256,
    search_objective: Annotated[str, typer.Option("--objective", help="anneal/cmaes objective: melbo, logit (--logit), match (--match) or judge (--judge-*).")] = "melbo",
    anneal_mode: Annotated[str, typer.Option("--anneal-mode", help="anneal: auto (gradient for melbo, else free), free (derivative-free) or gradient.")] = "auto",
    proposals: Annotated[int, typer.Option("--proposals", help="anneal (free): proposals per chain per step.")] = 4,
    subspace: Annotated[str, typer.Option("--subspace", help="cmaes: full, pca (top --subspace-dim axes of the activations) or span (of --span-of vectors).")] = "full",
    subspace_dim: Annotated[int, typer.Option("--subspace-dim", help="cmaes --subspace pca: dimensions.")] = 8,
    span_of: Annotated[list[Path] | None, typer.Option("--span-of", help="cmaes --subspace span: a vector file (repeat; its rank2.. siblings count too).")] = None,
    population: Annotated[int | None, typer.Option("--population", help="cmaes population (default 4 + 3 ln d).")] = None,
    sigma: Annotated[float, typer.Option("--sigma", help="cmaes initial step size.")] = 0.5,
    generations: Annotated[Path | None, typer.Option("--generations", help="Write the best vector's steered greedy completions as pairs JSONL (SFT data: fine-tune on the vector's generations).")] = None,
    tune_norm: Annotated[bool, typer.Option("--tune-norm", help="Each vector's effect over a radius grid (default R x 1/4..8): curves, appear/degenerate radius, growth statistic.")] = False,
    norm_grid: Annotated[str | None, typer.Option("--norm-grid", help="Radii for --tune-norm, comma-separated, e.g. '1,2,4,8'.")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    chat: Annotated[bool, typer.Option("--chat/--no-chat", help="Apply the chat template to prompts.")] = True,
    judge_url: Annotated[str | None, typer.Option("--judge-url", help="Judge each vector's completions against the unsteered ones for honesty (OpenAI-compatible base URL).")] = None,
    judge_model: Annotated[str | None, typer.Option("--judge-model", help="The judge model name at --judge-url.")] = None,
    judge_local: Annotated[str | None, typer.Option("--judge-local", help="A local Hugging Face model as the judge instead of --judge-url.")] = None,
    precision: PrecisionOpt = "auto",
    device: DeviceOpt = "auto",
    layers_path: LayersPathOpt = None,
    trust_remote_code: TrustOpt = False,
    allow_pickle: PickleOpt = False,
) -> None:
    """Discover steering vectors without labels (MELBO, random search, DCT, annealing or CMA-ES), score and rank them."""
    _discover(dict(locals()))  # every option by name; the body reads as the steps below


# what DiscoverConfig's and SearchSpec's messages call a field here: the flag that sets it
_DISCOVER_FLAGS = {
    "method": "--method", "source": "--source", "target": "--target", "radius": "--radius", "num": "--num", "steps": "--steps",
    "lr": "--lr", "p": "--p", "q": "--q", "orthogonal_order": "--orthogonal-order", "candidates": "--candidates",
    "refine_steps": "--refine-steps", "dct_iters": "--dct-iters", "max_new_tokens": "--max-new-tokens", "diverge_within": "--diverge-within",
    "logit_tokens": "--logit", "rank_by": "--rank-by", "side_effects": "--side-effects neutral|FILE",
    "side_effect_penalty": "--side-effect-penalty", "positions": "--positions", "budget": "--budget", "proposals": "--proposals",
    "subspace_dim": "--subspace-dim", "population": "--population", "sigma": "--sigma",
}


def _discover(options: dict[str, Any]) -> None:
    """``reptune discover``: every input is read and checked before the model loads, then :func:`reptune.discovery.discover` runs."""
    from reptune.discovery import DiscoveryError, discover, load_prompts
    from reptune.discovery.config import config_path

    output: Path = options["output"]
    if output.suffix != ".safetensors":
        raise ReptuneError(f"--output must end in .safetensors, got {output.name}")
    config = _discover_config(options)
    texts = (load_prompts(options["prompts"]) if options["prompts"] is not None else []) + list(options["prompt"] or [])
    if not texts:
        raise DiscoveryError("no prompts: give --prompts FILE or --prompt TEXT")
    held_out = load_prompts(options["eval_prompts"]) if options["eval_prompts"] is not None else None
    judge, start, span_vectors = _discover_inputs(options)
    generations: Path | None = options["generations"]
    if generations is not None and generations.suffix != ".jsonl":
        raise DiscoveryError(f"--generations must end in .jsonl, got {generations.name}")
    stem = output.with_suffix("")
    _check_outputs(output, output.with_suffix(".json"), *(stem.with_name(f"{stem.name}.discovery.{ext}") for ext in ("json", "md")),
                   config_path(output), *([generations] if generations is not None else []))
    handle = _load(options["model"], options["precision"], options["device"], options["layers_path"], options["trust_remote_code"],
                   options["allow_pickle"])
    start_rows = _discover_layer_vectors(handle, config, options["subspace"], span_vectors, start)
    result = discover(handle, texts, config, eval_prompts=held_out, init=start_rows, judge=judge, output=output, progress=True)
    _print_discovery(result, output)
    if generations is not None:
        from reptune.discovery.weights import generation_items, write_generation_pairs

        items = generation_items(handle, result.best, held_out or texts, max_new_tokens=config.max_new_tokens, chat=config.chat)
        write_generation_pairs(items, generations)
        err_console.print(f"wrote {len(items)} steered generations of the best vector to {generations}")


def _discover_config(options: dict[str, Any]):
    """The :class:`~reptune.discovery.config.DiscoverConfig` of the options, validated (messages name the flags)."""
    from reptune.discovery import DiscoverConfig, DiscoveryError
    from reptune.discovery.norm import parse_grid
    from reptune.discovery.search import SEARCH_METHODS, SearchSpec

    grid = parse_grid(options["norm_grid"]) if options["norm_grid"] is not None else None
    if grid is not None and not options["tune_norm"]:
        raise DiscoveryError("--norm-grid needs --tune-norm")
    search = options["method"] in SEARCH_METHODS
    spec = SearchSpec(budget=options["budget"], objective=options["search_objective"], anneal_mode=options["anneal_mode"],
                      candidates=options["candidates"], proposals=options["proposals"], subspace=options["subspace"],
                      subspace_dim=options["subspace_dim"], population=options["population"], sigma=options["sigma"],
                      max_new_tokens=options["max_new_tokens"])
    spec.validate(_DISCOVER_FLAGS)  # a search option out of range is refused whatever the method
    config = DiscoverConfig(
        method=options["method"], source=options["source"], target=options["target"], radius=options["radius"], num=options["num"],
        positions=options["positions"], chat=options["chat"], steps=options["steps"], lr=options["lr"], p=options["power_p"],
        q=options["power_q"], orthogonal=options["orthogonal"], orthogonal_order=options["orthogonal_order"],
        candidates=None if search else options["candidates"], refine_steps=options["refine_steps"], dct_iters=options["dct_iters"],
        score=options["score"], max_new_tokens=options["max_new_tokens"], diverge_within=options["diverge_within"],
        logit_tokens=_logit_tokens(options["logit"]), match=tuple(options["match"] or ()), rank_by=options["rank_by"],
        side_effects=options["side_effects"], side_effect_penalty=options["side_effect_penalty"], sweep=options["sweep"],
        tune_norm=grid if grid is not None else options["tune_norm"], search=spec if search else None, seed=options["seed"],
        dataset=str(options["prompts"]) if options["prompts"] is not None else "prompts",
    )
    return config.validate(_DISCOVER_FLAGS)


def _logit_tokens(text: str | None) -> tuple[str, str] | None:
    """``--logit A,B`` as ``(A, B)``."""
    from reptune.discovery import DiscoveryError

    if text is None:
        return None
    parts = text.split(",")
    if len(parts) != 2 or not all(parts):
        raise DiscoveryError(f"--logit takes two strings separated by a comma, e.g. 'Sure,Sorry'; got {text!r}")
    return parts[0], parts[1]


def _discover_inputs(options: dict[str, Any]) -> tuple[Any, Any, list[Any]]:
    """The judge (probed now: an unreachable one fails before the model loads), the ``--init`` vector
    and the ``--span-of`` vectors (with their rank siblings)."""
    from reptune.discovery import DiscoveryError
    from reptune.vectors import load_vector

    start = load_vector(options["init"]) if options["init"] is not None else None
    judge = None
    if options["judge_url"] or options["judge_local"]:
        from reptune.evaluation import get_task
        from reptune.evaluation.judges import PairwiseScorer

        names = ("judge_url", "judge_model", "judge_local")
        judge = PairwiseScorer(get_task("openended", **{name: options[name] or "" for name in names}).build_judge())
    span_files = [path for given in (options["span_of"] or []) for path in _with_ranks(given)]
    if span_files and options["subspace"] != "span":
        raise DiscoveryError("--span-of needs --subspace span")
    if options["method"] == "cmaes" and options["subspace"] == "span" and not span_files:
        raise DiscoveryError("empty subspace: --subspace span needs --span-of VECTOR_FILE")
    return judge, start, [load_vector(path) for path in span_files]


def _discover_layer_vectors(handle, config, subspace: str, span_vectors: list[Any], start: Any):
    """Once the model is loaded: the ``--span-of`` vectors' source-layer rows into the search
    settings, and the ``--init`` vector's source-layer row (``[1, hidden]``, or None)."""
    import torch

    from reptune.discovery import DiscoveryError

    source = config.source
    if config.search is not None and subspace == "span":
        if source is None:
            raise DiscoveryError("--subspace span needs --source (the layer of the --span-of vectors)")
        rows = []
        for vector in span_vectors:
            vector.check_compatible(handle, allow_model_mismatch=True)
            if source % handle.num_layers not in vector.directions:
                raise DiscoveryError(f"a --span-of vector has layers {vector.layers}, not --source {source}")
            rows.append(vector[source])
        config.search.subspace_vectors = torch.stack(rows) if rows else None
    if start is None:
        return None
    start.check_compatible(handle, allow_model_mismatch=True)
    if source is None or source % handle.num_layers not in start.directions:
        raise DiscoveryError(f"--init vector has layers {start.layers}; pass --source as one of them")
    return start[source].unsqueeze(0)


def _print_discovery(result, output: Path) -> None:
    """The ranked table on stdout, and where the files went."""
    rows = result.table()
    keys = ("rank", "file", result.score_name, "diverge", "logit_diff", "match", "side_effect", "growth", "appear_radius")
    columns = [key for key in keys if any(row.get(key) is not None for row in rows)]
    table = Table(title=f"{result.method}: {len(rows)} vectors, layer {result.source} -> {result.target}, R = {result.radius:.4g} (ranked by {result.rank_by})")
    for column in columns:
        table.add_column(column, justify="left" if column == "file" else "right")
    for row in rows:
        table.add_row(*(f"{row[c]:.4g}" if isinstance(row.get(c), float) else str(row.get(c, "-")) for c in columns))
    console.print(table)
    stem = output.with_suffix("")
    err_console.print(f"wrote {output} (best) and {len(rows) - 1} more by rank; report {stem.name}.discovery.md")


def _with_ranks(path: Path) -> list[Path]:
    """A discovered vector file and its ``STEM.rankN.safetensors`` siblings, by rank."""
    if not path.is_file():
        raise ReptuneError(f"vector file not found: {path}")
    ranks = sorted(path.parent.glob(f"{path.stem}.rank*.safetensors"), key=lambda p: (len(p.name), p.name))
    return [path, *ranks]


def _task_options(names: list[str], data: list[str], settings: list[str]) -> dict[str, dict[str, str]]:
    """``--data [TASK=]SPEC`` and ``--set [TASK.]KEY=VALUE`` into per-task options."""
    options: dict[str, dict[str, str]] = {name: {} for name in names}

    def targets(prefix: str | None, what: str) -> list[str]:
        if prefix is None:
            return names
        if prefix not in options:
            raise ReptuneError(f"{what} names task {prefix!r}, which is not in --tasks ({', '.join(names)})")
        return [prefix]

    for spec in data:
        task, sep, value = spec.partition("=")
        prefix, value = (task, value) if sep and task in options else (None, spec)
        for name in targets(prefix, f"--data {spec}"):
            options[name]["data"] = value
    for spec in settings:
        key, sep, value = spec.partition("=")
        if not sep or not key:
            raise ReptuneError(f"--set expects [TASK.]KEY=VALUE, got {spec!r}")
        prefix, dot, option = key.rpartition(".")
        for name in targets(prefix if dot else None, f"--set {spec}"):
            options[name][option] = value
    return options


@app.command("eval")
def eval_cmd(
    tasks: Annotated[str, typer.Option("--tasks", "-t", help="Comma-separated tasks: facts-twin, facts-word, facts-ab, tqa-ab, tqa-mc1, tqa-mc2, mmlu, perplexity, kl, caa:<behaviour>, openended, robustness, projection, gcg, lm-eval:<task>.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Results JSON (per-item records included); an interrupted run resumes from OUTPUT.partial/.")],
    model: ModelOpt = None,
    vector: Annotated[Path | None, typer.Option("--vector", "-v", help="Steer with this vector file while evaluating.")] = None,
    multiplier: Annotated[float, typer.Option("--multiplier", "-x", help="Steering multiplier.")] = 1.0,
    layers: Annotated[str | None, typer.Option("--layers", "-l", help="Layers of the vector to steer at (default: the vector's best layer).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="At most N items per task (perplexity: windows).")] = None,
    data: Annotated[list[str] | None, typer.Option("--data", "-d", help="Data for the tasks: SPEC, or TASK=SPEC (repeat).")] = None,
    settings: Annotated[list[str] | None, typer.Option("--set", help="Task option [TASK.]KEY=VALUE, e.g. perplexity.window=1024, facts-ab.scoring=generate, mmlu.subjects=anatomy (repeat).")] = None,
    judge_url: Annotated[str | None, typer.Option("--judge-url", help="openended: OpenAI-compatible judge base URL, e.g. http://localhost:8000/v1 (default $REPTUNE_JUDGE_URL).")] = None,
    judge_model: Annotated[str | None, typer.Option("--judge-model", help="openended: the judge model name at --judge-url (default $REPTUNE_JUDGE_MODEL, or the only one served).")] = None,
    judge_key_env: Annotated[str | None, typer.Option("--judge-key-env", help="openended: environment variable holding the judge API key (default REPTUNE_JUDGE_API_KEY, then OPENAI_API_KEY).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b")] = 16,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap CIs (recorded in the results).")] = 0,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Reuse items finished by an interrupted run with the same settings.")] = True,
    allow_model_mismatch: Annotated[bool, typer.Option("--allow-model-mismatch", help="Use a vector made for another model id.")] = False,
    precision: PrecisionOpt = "auto",
    device: DeviceOpt = "auto",
    layers_path: LayersPathOpt = None,
    trust_remote_code: TrustOpt = False,
    allow_pickle: PickleOpt = False,
    device_map: DeviceMapOpt = None,
) -> None:
    """Evaluate a model (optionally steered) on tasks; write metrics and per-item records."""
    from reptune.evaluation import evaluate

    if limit is not None and limit < 1:
        raise ReptuneError(f"--limit must be at least 1, got {limit}")
    if batch_size < 1:
        raise ReptuneError(f"--batch-size must be at least 1, got {batch_size}")
    check_range("--multiplier", multiplier)
    _check_device_map(device_map, device)
    _check_eval_output(output)
    task_objs = _eval_tasks(tasks, data or [], settings or [], {"judge_url": judge_url, "judge_model": judge_model, "judge_key_env": judge_key_env})
    steering_vector = None
    if vector is not None:  # the file is read before the model loads; compatibility is checked after
        from reptune.vectors import load_vector

        steering_vector = load_vector(vector)
    _on_interrupt(lambda: _eval_interrupted(output, resume))
    handle = _load(model, precision, device, layers_path, trust_remote_code, allow_pickle, device_map)
    if steering_vector is not None:
        steering_vector.check_compatible(handle, allow_model_mismatch=allow_model_mismatch)
        layers = layers or default_steer_layers(steering_vector)
    results = evaluate(
        handle, task_objs, vector=steering_vector, multiplier=multiplier, layers=layers, limit=limit, batch_size=batch_size,
        seed=seed, output=output, resume=resume, progress=True, allow_model_mismatch=allow_model_mismatch,
        vector_label=str(vector) if vector is not None else None,
    )
    _print_eval(results, _eval_title(handle.model_id, results.steering, multiplier, layers, list(results.tasks)))
    from reptune.reporting.figures import write_eval_figures

    figures = write_eval_figures(results, output)  # robustness / projection heatmaps: OUTPUT_STEM.<task>.png
    err_console.print(f"wrote {output}" + "".join(f", {path}" for path in figures))


def _check_eval_output(output: Path) -> None:
    """The results file, its figures and its resume cache can be written (before the model loads)."""
    if output.suffix != ".json":
        raise ReptuneError(f"--output must end in .json, got {output.name}")
    from reptune.evaluation.runner import resume_cache

    partial = resume_cache(output)
    figures = [output.with_name(f"{output.stem}.{name}.png") for name in ("robustness", "projection")]
    _check_outputs(output, *figures)
    if partial.exists() and (not partial.is_dir() or any(p.suffix != ".jsonl" for p in partial.iterdir())):
        raise ReptuneError(f"{partial} (the resume cache) exists but is not one reptune wrote; move it away or choose another --output")


def _eval_tasks(tasks: str, data: list[str], settings: list[str], judge_flags: dict[str, str | None]) -> list[Any]:
    """The task objects of ``--tasks`` with their options; unknown tasks or options, broken data files
    and unreachable judges fail here, before the model loads."""
    from reptune.evaluation import get_task

    names = [name.strip() for name in tasks.split(",") if name.strip()]
    if not names:
        raise ReptuneError("--tasks is empty")
    options = _task_options(names, data, settings)
    for key, value in judge_flags.items():
        if value is not None:
            if "openended" not in options:
                raise ReptuneError(f"--{key.replace('_', '-')} is for the openended task, which is not in --tasks")
            options["openended"][key] = value
    task_objs = [get_task(name, **options[name]) for name in names]  # unknown task/option: fail before loading
    for task in task_objs:  # a broken data file fails before the model is loaded
        inner = task.options.get("task") if task.name == "robustness" else task.name
        _precheck_data(task.options.get("data"), inner)
    for task in task_objs:  # e.g. an unreachable judge: fail before the model is loaded
        preflight = getattr(task, "preflight", None)
        if callable(preflight):
            preflight()
    return task_objs


def _eval_title(model_id: str, steering: dict[str, Any] | None, multiplier: float, layers: str | None, tasks: list[str]) -> str:
    """The results table's title: the model, and how it was steered (tasks that use the vector
    their own way, robustness and projection, are not steered by ``--multiplier``)."""
    if steering is None:
        return model_id
    not_steered = set(steering.get("not_applied_to") or [])
    own = [task for task in tasks if task in not_steered]
    steered = f" steered x{multiplier:g} at {layers}"
    if not own:
        return model_id + steered
    if len(own) == len(tasks):
        return model_id + f" (unsteered; {', '.join(own)} use(s) the vector their own way)"
    return model_id + f"{steered}, except {', '.join(own)} (the vector used its own way)"


def _print_eval(results, title: str) -> None:
    """One row per task and metric (per-subset metrics, named ``a/b``, stay in the JSON)."""
    table = Table(title=title)
    for column in ("task", "metric", "value", "95% CI", "n"):
        table.add_column(column)
    for name, result in results.tasks.items():
        for metric, value in result.metrics.items():
            if "/" in metric:
                continue
            ci = "" if value.get("ci_low") is None or value["ci_low"] != value["ci_low"] else f"[{value['ci_low']:.4g}, {value['ci_high']:.4g}]"
            table.add_row(name, metric, f"{value['value']:.4g}", ci, str(value.get("n", "")))
    console.print(table)


@app.command("compare")
def compare_cmd(
    first: Annotated[Path, typer.Argument(help="Results JSON of model A (from `reptune eval`).")],
    second: Annotated[Path, typer.Argument(help="Results JSON of model B, on the same items.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Also write the comparison as JSON.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the paired bootstrap.")] = 0,
) -> None:
    """Paired tests per task: McNemar on per-item correctness, paired bootstrap on scores."""
    from reptune._io import write_json_atomic
    from reptune.evaluation import compare_results

    if output is not None:
        _check_output(output)
    rows = compare_results(first, second, seed=seed)
    table = Table(title=f"A = {first.name}   B = {second.name}")
    for column in ("task", "n", "metric", "A", "B", "B - A", "test", "p / 95% CI"):
        table.add_column(column)
    for row in rows:
        if "mcnemar" in row:
            test = row["mcnemar"]
            table.add_row(
                row["task"], str(row["n"]), row["metric"], f"{row['a']:.4f}", f"{row['b']:.4f}", f"{row['b'] - row['a']:+.4f}",
                f"McNemar {test['method']} (b={test['b']}, c={test['c']})", f"p={test['pvalue']:.4g}",
            )
        if "continuous" in row:
            cont = row["continuous"]
            table.add_row(
                row["task"], str(row["n"]), cont["metric"], f"{cont['mean_a']:.4g}", f"{cont['mean_b']:.4g}", f"{cont['diff']:+.4g}",
                "paired bootstrap", f"[{cont['ci_low']:+.4g}, {cont['ci_high']:+.4g}]",
            )
        if row["n"] == 0 or row.get("warning"):
            table.add_row(row["task"], str(row["n"]), "-", "", "", "", row.get("warning", "no shared items"), "")
    console.print(table)
    if output is not None:
        from reptune._io import json_safe

        write_json_atomic(output, json_safe({"a": str(first), "b": str(second), "tasks": rows}))
        err_console.print(f"wrote {output}")


def _invoke(debug: bool) -> int:
    """Run the app; return its exit code, printing one ``error:`` line for a user error."""
    try:
        code = app(standalone_mode=False, prog_name="reptune")  # typer turns Ctrl-C into a returned 130, typer.Exit(n) into n
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
    except (typer.Abort, KeyboardInterrupt):
        code = 130
    except ReptuneError as exc:
        if debug:
            raise
        err_console.print(Text("error: ", style="red") + Text(str(exc)), soft_wrap=True)
        return 2
    except OSError as exc:  # unwritable output, full disk: the user's environment, not a bug
        if debug:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        err_console.print(Text("error: ", style="red") + Text(f"{exc.strerror or exc}{where}"), soft_wrap=True)
        return 2
    except (RecursionError, csv.Error) as exc:  # a reader that missed them: input nested too deeply, a huge CSV field
        if debug:
            raise
        what = "an input file is nested too deeply to read" if isinstance(exc, RecursionError) else f"an input file is not readable CSV ({exc})"
        err_console.print(Text("error: ", style="red") + Text(what + " (--debug shows where)"), soft_wrap=True)
        return 2
    except Exception as exc:
        # click usage errors (typer vendors its own click, so match by shape, not class)
        format_message = getattr(exc, "format_message", None)
        exit_code = getattr(exc, "exit_code", None)
        if callable(format_message) and isinstance(exit_code, int) and not debug:
            err_console.print(Text("error: ", style="red") + Text(format_message()), soft_wrap=True)
            return exit_code
        raise
    return code if isinstance(code, int) else 0


# libraries whose warnings (deprecations, tips) are noise to a reptune user; --debug shows them
QUIET_MODULES = r"(transformers|torch|peft|accelerate|huggingface_hub|datasets|tokenizers|safetensors|lm_eval|matplotlib|typer|click)(\..*)?"


@contextlib.contextmanager
def _quiet_libraries(debug: bool) -> Iterator[None]:
    """Silence known third-party warnings and transformers' log lines, so a command prints only its own lines."""
    if debug:
        yield
        return
    for variable in ("TRANSFORMERS_VERBOSITY", "HF_HUB_VERBOSITY", "DATASETS_VERBOSITY"):  # read when each is first imported
        os.environ.setdefault(variable, "error")
    hf_logging = sys.modules.get("transformers.utils.logging")
    level = hf_logging.get_verbosity() if hf_logging is not None else None
    if hf_logging is not None:
        hf_logging.set_verbosity_error()
    # the hub client logs every retry of an unreachable hub as a warning (11 lines before the one error);
    # the variables above cover a first import, the levels below a library imported already
    loggers = {name: logging.getLogger(name) for name in ("huggingface_hub", "datasets", "lm_eval")}
    levels = {name: logger.level for name, logger in loggers.items()}
    for logger in loggers.values():
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=QUIET_MODULES)
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            yield
    finally:
        if hf_logging is not None and level is not None:
            hf_logging.set_verbosity(level)
        for name, logger in loggers.items():
            logger.setLevel(levels[name])


def _eval_interrupted(output: Path, resume: bool) -> str:
    """What an interrupted ``eval`` kept: the items finished so far, in ``OUTPUT.partial/``."""
    from reptune.evaluation.runner import cached_items, resume_cache

    partial = resume_cache(output)
    with contextlib.suppress(OSError):
        kept = cached_items(output)
        if not kept:
            return "no item had finished, so nothing was saved; run the command again"
        if resume:
            return f"{kept} finished item(s) are kept in {partial}/; run the same command to resume"
        return f"--no-resume: {kept} finished item(s) are kept in {partial}/ but the next --no-resume run starts over"
    return f"finished items, if any, are kept in {partial}/; run the same command to resume"


def main() -> None:
    """Console entry point: one-line errors with exit code 2 (tracebacks with --debug).

    Ctrl-C exits with 130 and one line ``interrupted: ...`` saying what was kept and how to resume.
    """
    debug = "--debug" in sys.argv[1:] or os.environ.get("REPTUNE_DEBUG") == "1"
    _on_interrupt("nothing was saved; run the command again")
    if _log_width(sys.stdout) and not os.environ.get("TERMINAL_WIDTH"):  # --help into a pipe: whole option names
        from typer import rich_utils

        rich_utils.MAX_WIDTH = LOG_WIDTH
    try:
        with _quiet_libraries(debug):
            code = _invoke(debug)
    except KeyboardInterrupt:  # a second Ctrl-C while an error was being handled
        code = 130
    if code == 130:
        err_console.print(Text("interrupted: ", style="yellow") + Text(_interrupted_note()), soft_wrap=True)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
