"""The wire contract: pydantic request/response models of the native and OpenAI-compatible APIs.

Requests are strict where a silent coercion would hide a client bug: unknown fields are refused,
``dimensions`` must be a JSON integer and flags JSON booleans. Responses are built with ``model_construct``
(the values come from our own code) and serialised by pydantic's Rust encoder, which matters for
thousands of floats per response.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from piccolo_embed.chunking.long import LongMode
from piccolo_embed.types import HelpfulEnum, Role


class EncodingFormat(HelpfulEnum):
    """How OpenAI-style responses carry vectors: JSON floats, or base64 of little-endian float32 bytes."""

    FLOAT = "float"
    BASE64 = "base64"


def _parse_role(value: object) -> object:
    """Accept any case and spaces, with an error that lists the roles."""
    if isinstance(value, str):
        return Role.parse(value)
    return value


StrictDimensions = Annotated[int | None, Field(default=None, ge=1, strict=True)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OpenAIEmbeddingRequest(_Request):
    """``POST /v1/embeddings`` body, as the OpenAI client sends it, plus an optional ``role``."""

    input: list[str] = Field(min_length=1, description="A string or a non-empty list of strings.")
    model: str | None = Field(
        default=None,
        description="`<served name>-query` or `-passage` selects that role (see /v1/models); any other name is "
        "accepted and keeps `role` or the server's default role.",
    )
    encoding_format: EncodingFormat = EncodingFormat.FLOAT
    dimensions: StrictDimensions = None
    user: str | None = Field(default=None, description="Accepted and ignored.")
    role: Role | None = Field(
        default=None, description="query, passage or none; omitted means the server's default role."
    )

    @field_validator("input", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and value and all(isinstance(v, int | list) for v in value):
            raise ValueError("token-id arrays are not supported; send text")
        return value

    @field_validator("encoding_format", mode="before")
    @classmethod
    def _encoding(cls, value: Any) -> Any:
        return EncodingFormat.parse(value) if isinstance(value, str) else value

    _role = field_validator("role", mode="before")(_parse_role)


class EmbedRequest(_Request):
    """``POST /embed`` body (native API)."""

    texts: list[str] = Field(min_length=1, description="Non-empty list of strings.")
    role: Role | None = Field(default=None, description="query, passage or none; omitted: the server default.")
    normalize: bool = Field(
        default=True,
        strict=True,
        description="Unit-length vectors. The model always normalises, so false only matters with "
        "`dimensions`: the truncated prefix is then returned as is.",
    )
    truncate: bool = Field(
        default=True,
        strict=True,
        description="Cut texts longer than the role's max length; false makes an over-long text a 413 error.",
    )
    long: LongMode = Field(
        default=LongMode.TRUNCATE,
        description="truncate: a text longer than the role reads follows `truncate`; mean: every text is cut into "
        "chunks the role reads whole and gets the unit-length mean of their vectors (`truncate` then never applies).",
    )
    dimensions: StrictDimensions = None

    _role = field_validator("role", mode="before")(_parse_role)

    @field_validator("long", mode="before")
    @classmethod
    def _long(cls, value: Any) -> Any:
        mode = LongMode.parse(value) if isinstance(value, str) else value
        if mode is LongMode.CHUNKS:
            raise ValueError("'chunks' (a vector per chunk) is not served; choose truncate or mean")
        return mode


class Usage(BaseModel):
    """Tokens fed to the model (prefixes and special tokens included, after truncation)."""

    prompt_tokens: int
    total_tokens: int


class EmbeddingItem(BaseModel):
    """One vector of an OpenAI-style response."""

    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class OpenAIEmbeddingResponse(BaseModel):
    """``POST /v1/embeddings`` response."""

    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: Usage


class EmbedResponse(BaseModel):
    """``POST /embed`` response."""

    model: str
    role: Role
    dimensions: int
    embeddings: list[list[float]]
    usage: Usage


class RoleInfo(BaseModel):
    """A role's instruction prefix and token limit."""

    prefix: str
    max_length: int


class InfoResponse(BaseModel):
    """``GET /info`` response."""

    model: str
    dimension: int
    default_role: Role
    roles: dict[str, RoleInfo]
    limits: dict[str, int | float]


class ErrorDetail(BaseModel):
    """OpenAI-style error object."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Body of every 4xx/5xx response."""

    error: ErrorDetail


def usage(token_counts: Sequence[int]) -> Usage:
    """Usage block for a request's token counts."""
    total = int(sum(token_counts))
    return Usage.model_construct(prompt_tokens=total, total_tokens=total)


def openai_response_json(
    vectors: np.ndarray, token_counts: Sequence[int], model: str, encoding: EncodingFormat
) -> bytes:
    """Serialised ``/v1/embeddings`` response; base64 is little-endian float32, as OpenAI's is."""
    if encoding is EncodingFormat.BASE64:
        raw = np.ascontiguousarray(vectors, dtype="<f4")
        values: list[Any] = [base64.b64encode(row.tobytes()).decode("ascii") for row in raw]
    else:
        values = vectors.tolist()
    data = [EmbeddingItem.model_construct(index=i, embedding=value) for i, value in enumerate(values)]
    body = OpenAIEmbeddingResponse.model_construct(data=data, model=model, usage=usage(token_counts))
    return body.__pydantic_serializer__.to_json(body)


def embed_response_json(vectors: np.ndarray, token_counts: Sequence[int], model: str, role: Role) -> bytes:
    """Serialised ``/embed`` response."""
    body = EmbedResponse.model_construct(
        model=model,
        role=role,
        dimensions=int(vectors.shape[1]),
        embeddings=vectors.tolist(),
        usage=usage(token_counts),
    )
    return body.__pydantic_serializer__.to_json(body)
