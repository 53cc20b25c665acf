"""`gpupool plan ...`: the capacity planner on the command line (works offline, without a server).

Every command prints a table of terms (value, formula in words, numbered sources) or, with ``--json``,
the same answer as JSON. Exit status: 0 when the answer fits, 1 when it does not (the workload does not fit
these GPUs, no MIG profile holds the request), 2 for missing or inconsistent inputs, which end with
``error: ...`` (with ``--json``: a JSON error object on stdout).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table as RichTable
from rich.text import Text

from gpupool.cli.common import ExitCode, console, fail
from gpupool.plan.catalog import Catalog, load_catalog, parse_gpu_spec
from gpupool.plan.errors import PlanInputError
from gpupool.plan.inference import ServeRequest, plan_serving
from gpupool.plan.memory import Optimizer, Recompute
from gpupool.plan.mig import MigRequest, plan_mig
from gpupool.plan.models import ModelShape, ShapeArgs, model_from_args
from gpupool.plan.parallel import LayoutConstraints
from gpupool.plan.precision import parse_precision
from gpupool.plan.report import Report
from gpupool.plan.train import TrainRequest, plan_training
from gpupool.plan.units import parse_bandwidth, parse_bytes, parse_count, parse_duration

if TYPE_CHECKING:
    from rich.console import Console

plan_app = typer.Typer(
    name="plan",
    help="Capacity planner: GPU memory, GPUs, time and MIG sizing from published formulas (offline).",
    no_args_is_help=True,
)

CatalogOpt = Annotated[
    Path | None,
    typer.Option("--catalog", help="YAML file with extra GPUs and/or models (see docs/planner.md)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the answer as JSON.")]
ModelOpt = Annotated[
    str | None, typer.Option("--model", help="A known model, e.g. llama-3-70b (see `plan models`).")
]
ParamsOpt = Annotated[str | None, typer.Option("--params", help="Parameter count, e.g. 7B, 175B.")]
ActiveOpt = Annotated[
    str | None, typer.Option("--active-params", help="Parameters used per token (MoE), e.g. 37B.")
]
LayersOpt = Annotated[int | None, typer.Option("--layers", help="Transformer layers.")]
HiddenOpt = Annotated[int | None, typer.Option("--hidden", help="Hidden size.")]
HeadsOpt = Annotated[int | None, typer.Option("--heads", help="Attention heads.")]
KvHeadsOpt = Annotated[
    int | None, typer.Option("--kv-heads", help="Key/value heads (GQA/MQA); default: --heads.")
]
VocabOpt = Annotated[int | None, typer.Option("--vocab", help="Vocabulary size.")]
FractionOpt = Annotated[
    float, typer.Option("--memory-fraction", help="Share of each GPU's memory the plan may use.")
]


def _fail(message: str, as_json: bool = False) -> typer.Exit:
    return fail(message, "plan_input_error", ExitCode.USAGE, as_json=as_json)


def _run(answer: Callable[[], Report], as_json: bool) -> None:
    """Build the report, print it as a table or JSON; PlanInputError becomes ``error: ...``, exit 2; an
    answer that does not fit exits 1."""
    try:
        report = answer()
    except PlanInputError as exc:
        raise _fail(str(exc), as_json) from None
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        render(report, console.get())
    if report.summary.get("fits") is False:
        raise typer.Exit(ExitCode.FAILED)


def render(report: Report, console: Console) -> None:
    """Print a report: its title, a table of terms with numbered sources, extra tables, notes."""
    sources: list[str] = []
    table = RichTable(title=Text(report.title, style="bold"), title_justify="left", show_lines=False)
    table.add_column("term")
    table.add_column("value", justify="right")
    table.add_column("formula")
    table.add_column("src", justify="right")
    for term in report.terms:
        ref = ""
        if term.source:
            if term.source not in sources:
                sources.append(term.source)
            ref = str(sources.index(term.source) + 1)
        table.add_row(Text(term.label), Text(term.display), Text(term.formula), Text(ref))
    console.print(table)
    for extra in report.tables:
        rich_extra = RichTable(title=Text(extra.title), title_justify="left")
        for column in extra.columns:
            rich_extra.add_column(column)
        for row in extra.rows:
            rich_extra.add_row(*(Text(cell) for cell in row))
        console.print(rich_extra)
    for note in report.notes:
        console.print(Text(f"- {note}"), soft_wrap=True)
    if sources:
        console.print(Text("Sources:", style="bold"))
        for i, source in enumerate(sources, start=1):
            console.print(Text(f"  [{i}] {source}"), soft_wrap=True)


def _model(catalog: Catalog, name: str | None, shape: ShapeArgs) -> ModelShape:
    if name is not None:
        if shape.any_shape():
            raise PlanInputError(
                "give either --model or the model's numbers (--params, --layers, ...), not both"
            )
        return catalog.model(name)
    return model_from_args(shape)


def _shape(
    *,
    params: str | None, active: str | None, layers: int | None, hidden: int | None, heads: int | None,
    kv_heads: int | None, vocab: int | None,
) -> ShapeArgs:
    return ShapeArgs(
        params=parse_count(params, "--params") if params is not None else None,
        active_params=parse_count(active, "--active-params") if active is not None else None,
        layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads, vocab=vocab,
    )


@plan_app.command()
def train(
    *,
    gpus: Annotated[str, typer.Option("--gpus", help="GPUs to train on, e.g. 8xA100-80GB.")],
    seq: Annotated[int, typer.Option("--seq", help="Sequence length in tokens.")],
    micro_batch: Annotated[int, typer.Option("--micro-batch", help="Sequences per GPU per step.")] = 1,
    model: ModelOpt = None,
    params: ParamsOpt = None,
    active_params: ActiveOpt = None,
    layers: LayersOpt = None,
    hidden: HiddenOpt = None,
    heads: HeadsOpt = None,
    kv_heads: KvHeadsOpt = None,
    vocab: VocabOpt = None,
    precision: Annotated[str, typer.Option("--precision", help="bf16, fp16 (mixed) or fp32, tf32.")] = "bf16",
    optimizer: Annotated[Optimizer, typer.Option("--optimizer")] = Optimizer.ADAM,
    recompute: Annotated[Recompute, typer.Option("--recompute", help="Activation recomputation.")] = (
        Recompute.SELECTIVE
    ),
    tp: Annotated[int | None, typer.Option("--tp", help="Tensor-parallel size (default: chosen).")] = None,
    pp: Annotated[int | None, typer.Option("--pp", help="Pipeline-parallel size (default: chosen).")] = None,
    zero: Annotated[int | None, typer.Option("--zero", help="ZeRO stage 0-3 (default: chosen).")] = None,
    sequence_parallel: Annotated[bool, typer.Option("--sequence-parallel/--no-sequence-parallel")] = True,
    gpus_per_node: Annotated[int, typer.Option("--gpus-per-node", help="Largest tensor-parallel group.")] = 8,
    memory_fraction: FractionOpt = 0.9,
    tokens: Annotated[str | None, typer.Option("--tokens", help="Training tokens, e.g. 300B.")] = None,
    mfu: Annotated[float, typer.Option("--mfu", help="Model FLOPs utilisation for the time estimate.")] = 0.4,
    deadline: Annotated[str | None, typer.Option("--deadline", help="Finish within, e.g. 30d.")] = None,
    catalog: CatalogOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Memory per GPU (weights, gradients, optimizer, activations), a layout that fits, and the time."""

    def answer() -> Report:
        cat = load_catalog(catalog)
        request = TrainRequest(
            model=_model(cat, model, _shape(
                params=params, active=active_params, layers=layers, hidden=hidden, heads=heads,
                kv_heads=kv_heads, vocab=vocab,
            )),
            gpus=parse_gpu_spec(gpus, cat, "--gpus"), seq=seq, micro_batch=micro_batch,
            precision=parse_precision(precision), optimizer=optimizer, recompute=recompute,
            constraints=LayoutConstraints(tp=tp, pp=pp, zero=zero, sequence_parallel=sequence_parallel,
                                          gpus_per_node=gpus_per_node),
            memory_fraction=memory_fraction, mfu=mfu,
            tokens=parse_count(tokens, "--tokens") if tokens is not None else None,
            deadline_seconds=parse_duration(deadline) if deadline is not None else None,
        )
        return plan_training(request)

    _run(answer, as_json)


@plan_app.command()
def serve(
    *,
    gpu: Annotated[str, typer.Option("--gpu", help="GPU model, e.g. H100; NxGPU fixes GPUs per replica.")],
    context: Annotated[int, typer.Option("--context", help="Tokens per sequence (prompt + output).")],
    batch: Annotated[int, typer.Option("--batch", help="Concurrent sequences per replica.")] = 1,
    model: ModelOpt = None,
    params: ParamsOpt = None,
    active_params: ActiveOpt = None,
    layers: LayersOpt = None,
    hidden: HiddenOpt = None,
    heads: HeadsOpt = None,
    kv_heads: KvHeadsOpt = None,
    vocab: VocabOpt = None,
    precision: Annotated[
        str, typer.Option("--precision", help="Weights: bf16, fp16, fp8, int8, int4.")
    ] = "bf16",
    kv_precision: Annotated[str, typer.Option("--kv-precision", help="KV cache: bf16, fp16, fp8.")] = "bf16",
    prompt: Annotated[
        int | None, typer.Option("--prompt", help="Prompt tokens (default: --context).")
    ] = None,
    bandwidth: Annotated[str | None, typer.Option("--bandwidth", help="Override, e.g. 64GB/s.")] = None,
    memory_fraction: FractionOpt = 0.9,
    catalog: CatalogOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Weights and KV cache, GPUs per replica, concurrent sequences, decode and prefill bounds."""

    def answer() -> Report:
        cat = load_catalog(catalog)
        spec = parse_gpu_spec(gpu, cat, "--gpu")
        request = ServeRequest(
            model=_model(cat, model, _shape(
                params=params, active=active_params, layers=layers, hidden=hidden, heads=heads,
                kv_heads=kv_heads, vocab=vocab,
            )),
            gpu=spec.gpu, gpus_per_replica=spec.count if spec.count_given else None, context=context,
            batch=batch, precision=parse_precision(precision),
            kv_precision=parse_precision(kv_precision, "--kv-precision"), prompt=prompt,
            memory_fraction=memory_fraction,
            bandwidth=parse_bandwidth(bandwidth) if bandwidth is not None else None,
        )
        return plan_serving(request)

    _run(answer, as_json)


@plan_app.command()
def mig(
    *,
    gpu: Annotated[str, typer.Argument(help="GPU model, e.g. A100-40GB.")],
    sm: Annotated[int | None, typer.Option("--sm", help="SMs per instance.")] = None,
    slices: Annotated[int | None, typer.Option("--slices", help="Compute slices per instance.")] = None,
    memory: Annotated[str | None, typer.Option("--memory", help="Memory per instance, e.g. 10GiB.")] = None,
    catalog: CatalogOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """How many MIG instances of a size fit one GPU, and the smallest profile that fits."""

    def answer() -> Report:
        spec = parse_gpu_spec(gpu, load_catalog(catalog), "GPU")
        memory_bytes = parse_bytes(memory, "--memory") if memory is not None else None
        request = MigRequest(sms=sm, slices=slices, memory_bytes=memory_bytes)
        return plan_mig(spec.gpu, request)

    _run(answer, as_json)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _gpu_table(cat: Catalog) -> RichTable:
    table = RichTable(title=Text("GPU catalog (dense peaks in TFLOPS/TOPS; - = not supported)"),
                      title_justify="left")
    for column in ("GPU", "memory", "GB/s", "BF16", "FP16", "FP8", "INT8", "NVLink GB/s", "SMs", "MIG"):
        table.add_column(column, justify="left" if column in ("GPU", "MIG") else "right")
    for g in cat.gpus:
        mig_cell = f"up to {max(p.instances for p in g.mig.profiles)}" if g.mig else "-"
        cells = (
            g.name, f"{g.memory_gib:g} GiB", _num(g.memory_bandwidth_gbps), _num(g.peaks["bf16_tflops"]),
            _num(g.peaks["fp16_tflops"]), _num(g.peaks["fp8_tflops"]), _num(g.peaks["int8_tops"]),
            _num(g.nvlink_gbps), _num(g.sm_count), mig_cell,
        )
        table.add_row(*(Text(c) for c in cells))
    return table


@plan_app.command()
def gpus(catalog: CatalogOpt = None, as_json: JsonOpt = False) -> None:
    """List the GPU catalog: memory, bandwidth, dense peaks, NVLink, SMs, MIG."""
    try:
        cat = load_catalog(catalog)
    except PlanInputError as exc:
        raise _fail(str(exc), as_json) from None
    if as_json:
        rows = [
            {
                "name": g.name, "aliases": list(g.aliases), "memory_gib": g.memory_gib,
                "memory_bandwidth_gbps": g.memory_bandwidth_gbps, **dict(g.peaks),
                "nvlink_gbps": g.nvlink_gbps,
                "sm_count": g.sm_count, "mig_profiles": [p.name for p in g.mig.profiles] if g.mig else [],
                "source": g.source,
            }
            for g in cat.gpus
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    console.print(_gpu_table(cat))
    console.print(Text("Sources: `gpupool plan gpus --json` lists the datasheet of each entry."))


@plan_app.command()
def models(catalog: CatalogOpt = None, as_json: JsonOpt = False) -> None:
    """List the known model shapes."""
    try:
        cat = load_catalog(catalog)
    except PlanInputError as exc:
        raise _fail(str(exc), as_json) from None
    rows = [
        {"name": m.name, "params": m.params, "active_params": m.active_params, "layers": m.layers,
         "hidden": m.hidden, "heads": m.heads, "kv_heads": m.kv_heads, "vocab": m.vocab, "source": m.source}
        for m in cat.models
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = RichTable(title=Text("Known models"), title_justify="left")
    for column in ("model", "params", "active", "layers", "hidden", "heads", "kv heads", "vocab"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for m in cat.models:
        table.add_row(*(Text(c) for c in (
            m.name, f"{m.params / 1e9:g}B", f"{m.active / 1e9:g}B", str(m.layers), str(m.hidden),
            str(m.heads), str(m.kv_heads), str(m.vocab),
        )))
    console.print(table)
