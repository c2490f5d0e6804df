"""The HTTP service's schemas: the request options it validates and the answers and
errors it declares in its OpenAPI document (:mod:`lookalike.app.service`), so that
``/openapi.json`` says what every route returns (``tests/test_fuzz.py`` checks each answer
against it)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: The largest item id a route accepts (SQLite's integer range).
MAX_ID = 2**63 - 1


class SearchOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    k: int = Field(10, ge=1, description="number of results")
    rerank: bool | None = Field(None, description="null: the collection's default; false: exact")
    like: list[Annotated[int, Field(ge=0, le=MAX_ID)]] = Field(
        [], max_length=100, description="more examples (stored items' ids): one search like all of them")
    unlike: list[Annotated[int, Field(ge=0, le=MAX_ID)]] = Field(
        [], max_length=100, description="counter-examples (stored items' ids): results move away from them")
    crop: list[float] | None = Field(None, min_length=4, max_length=4, description=(
        "search with this region of the query picture: [x, y, width, height] as fractions"))


class SearchById(SearchOptions):
    id: int = Field(ge=0, le=MAX_ID, description="a stored item's id")


class ErrorBody(BaseModel):
    detail: str = Field(description="what was wrong, in one line")


class IdQuery(BaseModel):
    id: int


class ImageQuery(BaseModel):
    filename: str
    height: int
    width: int


class Result(BaseModel):
    rank: int = Field(ge=1)
    id: int
    distance: float | None = Field(description="null where not finite")
    label: int | None
    label_name: str | None
    source: str
    name: str = Field(description="the file's name (or the source's last part)")
    path: str | None = Field(description="the catalogued file it was read from, if any")
    taken: str | None = Field(description="date taken (EXIF), else the file's modification time")
    thumbnail_url: str
    original_url: str | None = Field(description="the original file, where the item has one")


class SearchAnswer(BaseModel):
    query: IdQuery | ImageQuery
    k: int
    rerank: bool
    like: list[int]
    unlike: list[int]
    crop: list[float] | None
    filter: dict[str, Any] = Field(description="the filter applied ({} for none)")
    distance: str = Field(description='"euclidean" or "diffusion (1 - score)"')
    seconds: float
    results: list[Result]


class ItemInfo(BaseModel):
    id: int
    source: str
    label: int | None
    label_name: str | None
    hash: str
    image_url: str
    thumbnail_url: str


class AddedItem(BaseModel):
    id: int
    source: str
    added: bool = Field(description="false where the same content was already stored")
    thumbnail_url: str


class AddAnswer(BaseModel):
    items: list[AddedItem]
    count: int


class RemoveAnswer(BaseModel):
    id: int
    removed: bool
    count: int


class Health(BaseModel):
    status: Literal["ok"]


class ModelInfo(BaseModel):
    arch: str
    fingerprint: str


class InputInfo(BaseModel):
    channels: int
    height: int
    width: int


class AccessInfo(BaseModel):
    writes: Literal["open", "token", "off"]
    reads: Literal["open", "token"]


class Stats(BaseModel):
    count: int
    dimension: int
    model: ModelInfo
    input: InputInfo
    index: dict[str, Any]
    rerank: str
    reranks: bool
    dataset: dict[str, Any] | None
    label_names: list[str] | None
    updated: str | None
    max_upload_bytes: int
    max_k: int
    access: AccessInfo


_WHY = {400: "not an image (or a decompression bomb), or a bad request",
        401: "the token is missing or wrong", 403: "the service is read-only",
        404: "no item with that id", 409: "a change the collection cannot make",
        413: "the upload is larger than the limit", 415: "not a content type this route takes",
        422: "bad parameters", 503: "the remote index failed or cannot be reached"}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for error statuses, each ``{"detail": "..."}``."""
    return {code: {"model": ErrorBody, "description": _WHY[code]} for code in codes}
