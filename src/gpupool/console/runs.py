"""Console pages of the controller kinds that run other work: pipeline runs (the list, and a run as a graph of
its steps coloured by state, with the steps' workloads; cancel and retry) and sweeps (the list, the trials
table, the best trial and the objective plots)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import RedirectResponse, Response
from markupsafe import Markup

from gpupool.api.sweep_schemas import SweepDetail
from gpupool.console.graphs import dag_svg, layout
from gpupool.console.guard import guard, guard_form
from gpupool.console.plots import MAX_POINTS, Series, xy_plot
from gpupool.console.web import Caller, NavItem, page, register_page, services_of, templates
from gpupool.executors.storage import StorageLayout
from gpupool.server.api import schemas
from gpupool.server.services import pipelines, sweeps
from gpupool.server.services import workloads as workload_service

router = APIRouter(include_in_schema=False)
# after Notebooks: service_pages, imported after this module, puts Services between them
register_page(NavItem("/pipelines", "Pipelines", also=("/pipeline-runs/",)), after="/notebooks")
register_page(NavItem("/sweeps", "Sweeps"), after="/pipelines")
templates.filters["num"] = lambda value: f"{value:.4g}" if isinstance(value, float) else value
PAGE = 50  # runs or sweeps a list page shows: a few screens, one query
RECENT_STEPS = 5  # reports the trials table shows per trial: where its curve is heading, on one line
RunId = Annotated[int, Path(ge=1, le=schemas.MAX_ID)]
Before = Annotated[int | None, Query(ge=1, le=schemas.MAX_ID)]


def _listing(request: Request, who: Caller, kind: str, before: int | None) -> schemas.WorkloadPage:
    services = services_of(request)
    with services.db.session(write=False) as session:
        return workload_service.list_workloads(session, who.principal, None, [], None, PAGE, before, kind)


def _list_page(request: Request, kind: str, template: str, before: int | None) -> Response:
    """The page of `template` listing the caller's workloads of `kind`, newest first, older than `before`."""

    def build(who: Caller) -> Response:
        listed = _listing(request, who, kind, before)
        return page(request, template, who, items=listed.items, total=listed.total,
                    older=listed.next_before_id, paged=before is not None)

    return guard(request, build)


# ------------------------------------------------------------------------------------------ pipelines
@router.get("/pipelines")
def run_list(request: Request, before: Before = None) -> Response:
    """Pipeline runs the caller may see, newest first, a page at a time (`before`: older than this id)."""

    return _list_page(request, "pipeline", "pipelines.html", before)


@router.get("/pipeline-runs/{run_id}")
def run_detail(request: Request, run_id: RunId) -> Response:
    """One run: its steps drawn as a graph (boxes coloured by state, arrows for needs), the steps' states,
    reasons and workloads, and cancel / retry for its project's members."""

    def build(who: Caller) -> Response:
        services = services_of(request)
        with services.db.session(write=False) as session:
            row = pipelines.visible_run(session, who.principal, run_id)
            run = pipelines.run_view(session, row, StorageLayout(services.settings.home))
            may_act = who.principal.can_write(row.project_id)
        needs = {s.name: [n for n in s.needs if any(o.name == n for o in run.steps)] for s in run.steps}
        links = {s.name: f"/workloads/{s.workload_id}" for s in run.steps if s.workload_id is not None}
        try:
            graph = dag_svg(
                layout(needs),
                {s.name: s.state for s in run.steps},
                links,
                f"Steps of pipeline run {run.id} ({run.pipeline}) and what each needs",
            )
        except ValueError as error:  # a stored run whose needs no longer form a graph: the table still shows it
            graph = Markup('<p class="error">The steps cannot be drawn: {}</p>').format(error)
        return page(
            request,
            "pipeline_run.html",
            who,
            run=run,
            graph=graph,
            may_act=may_act,
            states=sorted({s.state for s in run.steps}),
        )

    return guard(request, build)


@router.post("/pipeline-runs/{run_id}/cancel")
async def run_cancel(request: Request, run_id: RunId) -> Response:
    """Cancel a run and every step of it (as `gpupool pipeline cancel`)."""

    def build(who: Caller, _fields: dict[str, str]) -> Response:
        services = services_of(request)
        services.db.transaction(lambda session: pipelines.cancel_run(session, who.principal, run_id, services.clock()))
        _wake(request)
        return RedirectResponse(f"/pipeline-runs/{run_id}", status_code=303)

    return await guard_form(request, build)


@router.post("/pipeline-runs/{run_id}/retry")
async def run_retry(request: Request, run_id: RunId) -> Response:
    """Retry a failed or cancelled run from its failed steps (as `gpupool pipeline retry`); shows the new run."""

    def build(who: Caller, _fields: dict[str, str]) -> Response:
        services = services_of(request)
        new_id = services.db.transaction(
            lambda session: pipelines.retry_run(session, who.principal, run_id, services.clock())[0].id
        )
        _wake(request)
        return RedirectResponse(f"/pipeline-runs/{new_id}", status_code=303)

    return await guard_form(request, build)


def _wake(request: Request) -> None:
    worker = services_of(request).pipelines
    if worker is not None:
        worker.wake()


# --------------------------------------------------------------------------------------------- sweeps
@router.get("/sweeps")
def sweep_list(request: Request, before: Before = None) -> Response:
    """Sweeps the caller may see, newest first, a page at a time."""

    return _list_page(request, "sweep", "sweeps.html", before)


@router.get("/sweeps/{sweep_id}")
def sweep_detail(request: Request, sweep_id: RunId) -> Response:
    """One sweep: its trials (state, parameters, value, job, duration), the best trial, the objective of
    every trial (with the best so far) and the best trial's reports by step."""

    def build(who: Caller) -> Response:
        services = services_of(request)
        with services.db.session(write=False) as session:
            row = sweeps.find_sweep(session, who.principal, str(sweep_id))
            detail = sweeps.sweep_view(session, services.sweep_studies(), row, RECENT_STEPS)
            best = detail.best.number if detail.best else -1
            curve, reported = sweeps.trial_curve(session, services.sweep_studies(), row, best, MAX_POINTS)
        return page(
            request,
            "sweep.html",
            who,
            s=detail,
            objective=objective_plot(detail),
            curve=best_curve_plot(detail, curve, reported),
            param_names=sorted({k for t in detail.trials for k in t.params}),
        )

    return guard(request, build)


def objective_plot(detail: SweepDetail) -> Markup:
    """The objective of every trial with a value, by trial number (completed and pruned apart), and the best
    completed value so far as a line."""
    valued = [t for t in detail.trials if t.value is not None]
    complete = [(float(t.number), float(t.value)) for t in valued if t.state == "complete" and t.value is not None]
    others = [(float(t.number), float(t.value)) for t in valued if t.state != "complete" and t.value is not None]
    best: list[tuple[float, float]] = []
    pick = min if detail.direction == "minimize" else max
    for number, value in complete:
        best.append((number, pick(value, best[-1][1]) if best else value))
    series = [
        Series("best so far", "best", best, joined=True),
        Series("completed", "complete", complete),
        Series("pruned or stopped", "pruned", others),
    ]
    return xy_plot(
        series,
        "trial number",
        f"{detail.metric} (as reported; {detail.direction})",
        f"{detail.metric} of each trial of sweep {detail.name}, and the best so far",
        "objective-title",
        whole_x=True,
    )


def best_curve_plot(detail: SweepDetail, curve: list[tuple[int, float]], reported: int) -> Markup:
    """The best trial's reported objective by step (`curve`: its intermediate values, thinned evenly over all
    `reported` steps; the axis says so when it was)."""
    points = [(float(step), value) for step, value in curve]
    name = f"trial {detail.best.number}" if detail.best else "no best trial yet"
    thinned = f"; {len(points):,} of {reported:,} reports shown" if reported > len(points) else ""
    return xy_plot(
        [Series(name, "complete", points, joined=True)],
        f"step (as the trial reported it{thinned})",
        f"{detail.metric} (as reported)",
        f"{detail.metric} of the best trial by step ({name})",
        "curve-title",
        whole_x=True,
    )
