"""The service state as a dependency, and the request bodies of the actions."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from pydantic import BaseModel, Field, field_validator

from server.console_api.state import ConsoleState


async def get_state(request: Request) -> ConsoleState:
    return request.app.state.console


State = Annotated[ConsoleState, Depends(get_state)]


class Reason(BaseModel):
    """Why an action is taken; kept in the audit log."""

    reason: str = Field(min_length=1, max_length=500)

    @field_validator("reason")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the reason must not be blank")
        return value.strip()


class StartRun(BaseModel):
    template: str = Field(min_length=1, max_length=64)
    name: str | None = Field(default=None, max_length=64)
