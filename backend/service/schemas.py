"""The wire format of API v1 as pydantic models; FastAPI derives ``/openapi.json`` from them.

The job parameters are not written out twice: :data:`ParamsModel` is derived field by field from
the engine's :class:`~backend.pipelines.params.RestoreParams`, and :meth:`RestoreParams.validate`
still checks the ranges, so the service and the CLI accept exactly the same values.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from ..pipelines.params import RestoreParams

JobStateName = Literal["queued", "running", "succeeded", "failed", "canceled"]
ImageFormat = Literal["npy", "png", "tiff"]


def _params_model() -> type[BaseModel]:
    hints = typing.get_type_hints(RestoreParams)
    fields: dict[str, Any] = {f.name: (hints[f.name], f.default) for f in dataclasses.fields(RestoreParams)}
    return create_model(
        "RestoreParameters",
        __config__=ConfigDict(extra="forbid", allow_inf_nan=False),
        __doc__="Every knob of a run; ranges are those of the command line (see the README).",
        **fields,
    )


ParamsModel = _params_model()


class Problem(BaseModel):
    """Every 4xx and 5xx answer: ``detail`` says in plain words what was wrong."""

    detail: str
    code: str | None = Field(
        None,
        description="for some answers, a name a GUI can put in its own words: unknown-model, no-model",
    )


class MemoryInfo(BaseModel):
    total_bytes: int
    available_bytes: int
    process_rss_bytes: int
    device_free_bytes: int | None = None


class QueueInfo(BaseModel):
    queued: int
    running: int
    limit: int


class Health(BaseModel):
    """Callers without the token (where one is set) learn only that the server is alive."""

    status: Literal["ok", "unhealthy"] = "ok"
    api: str
    proofs: list[str] | None = Field(
        None, description="HMAC-SHA256 of the challenge under each key the server holds (token, user secret)"
    )
    version: str | None = None
    device: str | None = None
    dtype: str | None = None
    memory: MemoryInfo | None = None
    loaded_model: str | None = None
    queue: QueueInfo | None = None
    log_file: str | None = None
    disk_free_bytes: int | None = None
    problems: list[str] | None = Field(None, description="why the server cannot work (503)")
    warnings: list[str] | None = Field(None, description="what may soon stop it working")


class ModelDefaultsInfo(BaseModel):
    """A model's own settings (its authors' inference defaults)."""

    steps: int
    guidance: float
    fidelity: float
    process_size: int
    scheduler: str
    quality_prompt: str
    negative_prompt: str
    added_noise_level: int | None = None
    guidance_start: float | None = None
    fidelity_start: float | None = None
    restoration: float | None = None
    churn: float | None = None
    churn_noise: float | None = None


class InstalledModelInfo(BaseModel):
    id: str
    tasks: list[str]
    variant: str
    licence: str
    description: str
    default_for: list[str]
    family: str = Field("pasd", description="the model family (its pipeline): pasd, pasd-sdxl")
    defaults: dict[str, ModelDefaultsInfo] = Field(
        default_factory=dict, description="per task, what each parameter left unset (null) becomes"
    )


class DownloadableModelInfo(BaseModel):
    id: str
    title: str
    tasks: list[str]
    size_bytes: int
    licence: str
    installed: bool
    url: str
    family: str | None = None
    gpu_memory_gb: float | None = Field(None, description="roughly what its runs need in half precision")
    note: str = ""
    terms: str | None = Field(
        None, description="licence terms to accept (accept_licence=ID on its download) before it is fetched"
    )
    terms_text: str = Field("", description="the terms, to show the user before they accept")


class StyleInfo(BaseModel):
    name: str = Field(description="what to send as the style parameter")
    kind: Literal["checkpoint", "unet", "lora"] = Field(
        description="an SD1.5 checkpoint blended into PASD's UNet (with its VAE and text encoder), "
        "a diffusers UNet folder, or a LoRA merged at a multiplier"
    )
    default_strength: float = Field(description="style_strength when unset: blending alpha or multiplier")
    licence: str = ""


class ModelList(BaseModel):
    installed: list[InstalledModelInfo]
    downloadable: list[DownloadableModelInfo]
    styles: list[StyleInfo] = Field(
        default_factory=list, description="personalized SD1.5 bases for the PASD SD1.5 models (style)"
    )
    fast_mode: bool = Field(
        False, description="whether the fast mode (fast: true) can run: its LCM-LoRA is installed"
    )


class DownloadStatus(BaseModel):
    model: str
    state: Literal["running", "succeeded", "failed"]
    bytes_done: int
    bytes_total: int
    error: str | None = None


class ImageInfo(BaseModel):
    id: str
    width: int
    height: int
    channels: int
    dtype: Literal["uint8", "uint16", "float32"]
    bytes: int


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: str = Field(description="id of an uploaded image (POST /v1/images)")
    mask: str | None = Field(None, description="id of an uploaded mask of the image's size (the foreground)")
    model: str | None = Field(None, description="installed model id; default: the task's default model")
    params: ParamsModel = Field(default_factory=ParamsModel)  # type: ignore[valid-type]
    detached: bool = Field(
        False, description="keep running when nobody polls (otherwise canceled after a few silent seconds)"
    )


class EstimateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    width: int = Field(ge=1, le=1 << 20, description="input width in pixels")
    height: int = Field(ge=1, le=1 << 20, description="input height in pixels")
    model: str | None = Field(None, description="installed model id; default: the task's default model")
    params: ParamsModel = Field(default_factory=ParamsModel)  # type: ignore[valid-type]


class Estimate(BaseModel):
    seconds: float | None = Field(
        description="expected run time here (model loading aside); null before the model's first run"
    )
    runs: int = Field(description="how many finished runs of this model the estimate rests on")
    work: float = Field(
        description="the run's denoising work in step-megapixels (relative cost, known before any run)"
    )
    model: str | None = Field(description="the model the estimate is for")
    process_width: int
    process_height: int
    tiles: int


class Progress(BaseModel):
    stage: str
    step: int
    total: int
    fraction: float = Field(description="0 to 1 over the whole job; never goes back")
    eta_seconds: float | None


class FaceBox(BaseModel):
    x: int
    y: int
    width: int
    height: int
    score: float = Field(description="how sure the detector is, 0 to 1 (1 for boxes a user chose)")
    kind: str = Field(description="frontal, profile or given")


class FacesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: str = Field(description="id of an uploaded image (POST /v1/images)")


class FaceList(BaseModel):
    faces: list[FaceBox]
    width: int
    height: int
    detector: str
    licence: str


class ResultInfo(BaseModel):
    width: int
    height: int
    channels: int
    dtype: str
    seed: int
    prompt: str
    negative_prompt: str
    model: str
    seconds: float
    notes: list[str]
    faces: list[FaceBox] = Field(
        default_factory=list,
        description="faces that were part of the foreground (input pixels); GET …/foreground has the mask",
    )


class JobInfo(BaseModel):
    id: str
    state: JobStateName
    task: str
    model: str | None
    image: str
    mask: str | None
    params: dict[str, Any]
    detached: bool
    queue_position: int | None
    progress: Progress
    cancel_requested: bool
    error: str | None
    result: ResultInfo | None
    created: float
    started: float | None
    finished: float | None


class JobList(BaseModel):
    jobs: list[JobInfo]
