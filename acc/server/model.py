"""The `/api/model` routes (DESIGN §4, M6): the live model's layers and places to grow, and
expanding it by a layer.

An expansion replaces the live model, so, like any manual change, it is refused (409) while a
recipe drives the engine; an unknown place is a 422 and changes nothing.
"""

from __future__ import annotations

from fastapi import APIRouter, status
from pydantic import BaseModel

from acc.server.routes import Manual, SessionDep, _checkpoint, _run_names, engine_errors, full_state
from acc.server.schemas import Checkpoint, Error, ExpandRequest, ModelLayers, State

router = APIRouter(prefix="/api/model", tags=["model"],
                   responses={"4XX": {"model": Error, "description": "Refused; nothing changed"}})


class Expansion(BaseModel):
    state: State
    checkpoint: Checkpoint  # the new child node that holds the expanded model
    autosaved: Checkpoint | None = None  # unsaved training kept first, as its parent


@router.get("/layers", response_model=ModelLayers)
def model_layers(session: SessionDep) -> ModelLayers:
    """The live model's layers, where it can grow (with shapes and the parameters each adds) and
    its parameter count."""
    return ModelLayers(**session.engine.model_layers())


@router.post("/expand", response_model=Expansion, status_code=status.HTTP_201_CREATED, dependencies=Manual)
def expand_model(body: ExpandRequest, session: SessionDep) -> Expansion:
    """Grow the live model by a layer at `where`; the expanded model is saved as a child of the
    node the trainer was on, and training continues from it in a new run."""
    with engine_errors(missing=status.HTTP_422_UNPROCESSABLE_CONTENT):
        result = session.engine.expand(body.where, body.init, body.seed)
    names = _run_names(session)
    autosaved = result["autosaved"]
    return Expansion(state=full_state(session.engine),
                     checkpoint=_checkpoint(session.store.checkpoint(result["checkpoint"]["id"]), names),
                     autosaved=_checkpoint(session.store.checkpoint(autosaved["id"]), names) if autosaved else None)
