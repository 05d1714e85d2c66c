"""The `/api/devices` routes (DESIGN §4, M4): the machine's devices with their memory and load, and
the roles (which device trains, which evaluates beside it).

A role change is applied by the engine between steps; a device the machine does not have is a 422
and changes nothing. `mode: ddp` with `ranks: N` restarts training on N ranks on this box from the
live state (`Engine.set_ranks`); `mode: single` goes back to one device.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from acc.server.routes import Manual, SessionDep, engine_errors
from acc.server.schemas import Devices, DevicesUpdate, Error

router = APIRouter(prefix="/api/devices", tags=["devices"],
                   responses={"4XX": {"model": Error, "description": "Refused; nothing changed"}})


def _devices(session) -> Devices:
    return Devices(devices=session.devices.list(), source=session.devices.source, **session.engine.roles())


@router.get("", response_model=Devices)
def list_devices(session: SessionDep) -> Devices:
    """Each device with its memory and utilisation (read once a second), and the roles."""
    return _devices(session)


@router.put("", response_model=Devices, dependencies=Manual)
def set_devices(body: DevicesUpdate, session: SessionDep) -> Devices:
    """Move training to `train`, evaluate on `eval` in a worker process (null: on the training
    thread), and/or train data-parallel on `ranks` ranks (`mode: ddp`) or on one device (`single`).
    The train device is applied before the ranks, which start from it."""
    world = _world(body)
    if "train" in body.model_fields_set and body.train is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "train needs a device; training always has one")
    with engine_errors(missing=status.HTTP_422_UNPROCESSABLE_CONTENT):
        if body.train is not None:
            session.engine.set_train_device(body.train)
        if "eval" in body.model_fields_set:
            session.engine.set_eval_device(body.eval)
        if world is not None:
            try:
                session.engine.set_ranks(world)
            except RuntimeError as e:  # the ranks did not start: training goes on as it was
                raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(e)) from None
    return _devices(session)


def _world(body: DevicesUpdate) -> int | None:
    """How many ranks the request asks for (None: it leaves them as they are)."""
    if body.mode == "single":
        if (body.ranks or 1) != 1:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"mode single runs one rank, not {body.ranks}")
        return 1
    if body.mode == "ddp" and (body.ranks or 0) < 2:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "mode ddp needs ranks of 2 or more")
    return body.ranks
