"""The `/api/devices` routes (DESIGN §4, M4): the machine's devices with their memory and load, and
the roles (which device trains, which evaluates beside it).

A role change is applied by the engine between steps; a device the machine does not have is a 422
and changes nothing. Data-parallel training (`mode: ddp`) is not built yet: asking for it is a 422
that says so.
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
    """Move training to `train`, and/or evaluate on `eval` in a worker process (null: on the
    training thread)."""
    if body.mode == "ddp" or (body.ranks or 1) > 1:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            "data-parallel training is not available yet: this trainer runs on one device")
    if "train" in body.model_fields_set and body.train is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "train needs a device; training always has one")
    with engine_errors(missing=status.HTTP_422_UNPROCESSABLE_CONTENT):
        if body.train is not None:
            session.engine.set_train_device(body.train)
        if "eval" in body.model_fields_set:
            session.engine.set_eval_device(body.eval)
    return _devices(session)
