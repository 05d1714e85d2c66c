"""The factoring routes (DESIGN §4, M5): evaluate any checkpoint of the tree, read its report and figures.

An evaluation is a job (kind `factoring`) that loads the checkpoint into a model of its own, so
training goes on beside it; `factoring` events on the stream follow it. The report and its figures
are stored: asking again for an unchanged checkpoint with the same settings answers at once.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field

from acc.engine.factoring import FIGURE_KINDS
from acc.eval.evaluator import FactoringConfig
from acc.server.routes import NameInPath, SessionDep, engine_errors
from acc.server.schemas import NAME_MAX, TASK_NAME, Error, Job, Request

router = APIRouter(prefix="/api/checkpoints", tags=["factoring"],
                   responses={"4XX": {"model": Error, "description": "Refused; nothing changed"}})


class FactoringRequest(Request):
    seeds: int = Field(3, ge=1, le=10, description="probe seeds (random halves) for UFR")
    traversal_seeds: int = Field(5, ge=1, le=10, description="seed images per traversal grid")


class FactoringReport(BaseModel):
    """DESIGN §4; see the README for how to read every number."""
    model_config = ConfigDict(extra="allow")
    checkpoint: str
    step: int
    ufr: float | None
    concepts: dict[str, Any]
    slot_info: dict[str, Any]
    traversal: dict[str, Any]
    mig: dict[str, Any]
    dci: dict[str, Any]
    parts_missing: list[str]


@router.post("/{id}/factoring", response_model=Job, status_code=status.HTTP_202_ACCEPTED)
def start_factoring(id: NameInPath, session: SessionDep, body: FactoringRequest | None = None) -> Job:
    """Evaluate how the checkpoint's latent factors the held-out data (a background job). 404:
    unknown checkpoint; a missing or corrupt checkpoint file fails the job, storing nothing."""
    body = body or FactoringRequest()
    config = FactoringConfig(seeds=body.seeds, traversal_seeds=body.traversal_seeds)
    with engine_errors():
        job = session.factoring.start(id, config)
    return Job(**job.public())


@router.get("/{id}/factoring", response_model=FactoringReport)
def factoring_report(id: NameInPath, session: SessionDep) -> FactoringReport:
    """The checkpoint's newest factoring report (404 before the first)."""
    with engine_errors():
        report = session.factoring.report(id)
    if report is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"checkpoint {id!r} has no factoring report yet; "
                                                       f"POST /api/checkpoints/{id}/factoring runs one")
    return FactoringReport(**report)


@router.get("/{id}/figures/{kind}.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}, "description": "the figure"}})
def figure(id: NameInPath, kind: Annotated[str, Path(pattern="^(" + "|".join(FIGURE_KINDS) + ")$")],
           session: SessionDep,
           group: Annotated[str | None, Query(pattern=TASK_NAME, max_length=NAME_MAX,
                                              description="a slot group (not for attention)")] = None) -> Response:
    """A figure of the newest report: `traversal` and `activation` per slot group, `attention` for all."""
    with engine_errors():
        path = session.factoring.figure(id, kind, group)
    return Response(path.read_bytes(), media_type="image/png", headers={"Cache-Control": "no-cache"})
