"""llama.cpp's ``/infill`` request (code editors: llama.vscode, Continue, Tabby).

Types are strict, as every request here; unknown fields are ignored rather than refused,
as llama.cpp does: editor plugins send
server-tuning options (``cache_prompt``, ``t_max_prompt_ms``, ``samplers``, ...) that
have no meaning here.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class InfillContext(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    filename: str = Field("", max_length=4096)
    text: str


class InfillRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    model: str = Field("default", min_length=1, max_length=512)
    input_prefix: str = ""
    input_suffix: str = ""
    input_extra: list[InfillContext] = Field(default_factory=list, max_length=256)
    prompt: str = ""  # the middle's beginning (after the middle marker)
    n_predict: int | None = Field(None, ge=-1)  # -1 / unset: as many as allowed
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_k: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repeat_penalty: float | None = Field(None, gt=0.0, le=10.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)
    stop: list[str] | None = Field(None, max_length=16)
    stream: bool = False
