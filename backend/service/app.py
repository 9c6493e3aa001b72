"""The FastAPI application of API v1: health, models, images, jobs.

Every error is a JSON ``{"detail": "..."}`` in plain words with a 4xx status; a bug in a handler
becomes a 500 with the same shape and is logged, and the server goes on serving.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import psutil
from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .. import __version__
from ..client import health_proof
from ..devices import free_memory
from ..engine import Engine, InputError, RunPlan
from ..faces import DETECTOR, DETECTOR_LICENCE, FaceDetectionError, detect_faces
from ..models.loading import ModelLoadError
from ..models.manifest import MANIFEST_NAME
from ..models.registry import DEFAULT_MODEL_FOR_TASK, LICENCE_TERMS, REGISTRY, family_of, get_spec
from ..models.store import LicenceNotAccepted, installed_models, missing_files
from ..pipelines.params import ParamsError, RestoreParams
from ..pipelines.prescale import GAN_SUFFIXES
from . import schemas
from .config import API_VERSION, ServerConfig
from .downloads import Downloads
from .guard import BodyTooLarge, RequestGuard
from .images import CONTENT_TYPES, ImageStore, UnknownImage, UploadError
from .jobs import (
    JobQueue,
    QueueFull,
    StorageFull,
    UnknownJob,
    disk_full_message,
    free_space,
    is_disk_full,
    low_disk_warning,
)
from .speed import SpeedBook, work_units

log = logging.getLogger(__name__)

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.Problem, "description": text}
    for code, text in {
        400: "bad request",
        401: "missing or wrong access token",
        404: "unknown id",
        409: "not possible in the job's state",
        413: "too large",
        403: "refused: a web page, or a host name this server does not answer to",
        415: "wrong content type",
        422: "invalid values",
        429: "queue full",
        503: "the server cannot work (see its health)",
        507: "the server's disk is full",
    }.items()
}


class PixelFileResponse(FileResponse):
    """Pixel files are tens to hundreds of MB: read them in 1 MiB chunks, not Starlette's 64 KiB."""

    chunk_size = 1 << 20


class ApiError(Exception):
    def __init__(
        self, status: int, detail: str, headers: dict[str, str] | None = None, code: str | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers
        self.code = code


@dataclass
class Services:
    config: ServerConfig
    engine: Engine
    images: ImageStore
    jobs: JobQueue
    downloads: Downloads
    log_file: Path | None


def create_app(config: ServerConfig, log_file: Path | None = None, engine: Engine | None = None) -> FastAPI:
    data = config.resolved_data_dir()
    models = config.resolved_models_dir()
    engine = engine or Engine(
        models, config.device, config.dtype, offload={"auto": None, "on": True, "off": False}[config.offload]
    )
    images = ImageStore(
        data / "images",
        int(config.max_megapixels * 1e6),
        config.max_upload_bytes,
        config.upload_ttl,
        max_image_bytes=config.max_image_bytes,
        max_compression_ratio=config.max_compression_ratio,
    )
    jobs = JobQueue(
        engine,
        images,
        data / "jobs",
        config.queue_size,
        config.abandon_after,
        config.result_ttl,
        config.fetched_ttl,
        SpeedBook(data / "speed.json"),
    )
    services = Services(config, engine, images, jobs, Downloads(models), log_file)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        jobs.start()
        yield
        await run_in_threadpool(jobs.stop)

    app = FastAPI(
        title="GIMP Diffusion Upscale backend",
        version=__version__,
        description="Upscale and colorize images with PASD diffusion models; used by the GIMP plug-in.",
        lifespan=lifespan,
        responses=ERRORS,
    )
    app.state.services = services
    _install_error_handlers(app)
    _install_routes(app, services)
    app.add_middleware(RequestGuard, config=config, upload_types=CONTENT_TYPES)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    def problem(
        status: int, detail: str, headers: dict[str, str] | None = None, code: str | None = None
    ) -> JSONResponse:
        body = {"detail": detail} if code is None else {"detail": detail, "code": code}
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return problem(exc.status, exc.detail, exc.headers, exc.code)

    @app.exception_handler(BodyTooLarge)
    async def too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return problem(413, str(exc))

    @app.exception_handler(StorageFull)
    async def storage_full(request: Request, exc: StorageFull) -> JSONResponse:
        return problem(507, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"There is no {request.url.path} on this server; see /docs for the API."
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}."
        return problem(exc.status_code, detail, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
            parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else error.get("msg", "invalid"))
        return problem(422, "Invalid request: " + "; ".join(parts))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        if is_disk_full(exc):
            log.warning("disk full on %s %s: %s", request.method, request.url.path, exc)
            return problem(507, disk_full_message(request.app.state.services.config.resolved_data_dir()))
        log.exception("internal error on %s %s", request.method, request.url.path)
        return problem(500, f"Internal error ({type(exc).__name__}); see the server log.")


def _install_routes(app: FastAPI, s: Services) -> None:
    v = f"/{API_VERSION}"

    # ------------------------------------------------------------------ health
    @app.get(
        f"{v}/health",
        response_model=schemas.Health,
        response_model_exclude_none=True,
        tags=["server"],
        responses={503: {"model": schemas.Health, "description": "the server cannot work"}},
    )
    def health(
        request: Request,
        challenge: Annotated[
            str | None,
            Query(description="16–128 hexadecimal digits; the answer's proof lets a client check the server"),
        ] = None,
    ) -> Any:
        """Alive or not; with the token (or without one configured) also device, memory, queue."""
        proofs = None
        if challenge is not None:
            if not CHALLENGE.fullmatch(challenge):
                raise ApiError(422, "challenge: send 16 to 128 hexadecimal digits.")
            proofs = [health_proof(key, challenge) for key in s.config.proof_keys]
        problems = s.jobs.problems()
        status = "unhealthy" if problems else "ok"
        if not getattr(request.state, "authenticated", True):
            answer = schemas.Health(status=status, api=API_VERSION, proofs=proofs)
        else:
            answer = _full_health(s, status, proofs, problems)
        if problems:
            return JSONResponse(answer.model_dump(exclude_none=True), status_code=503)
        return answer

    @app.post(
        f"{v}/server/shutdown",
        status_code=202,
        tags=["server"],
        response_class=Response,
        responses={202: {"description": "the server stops (running jobs are canceled)"}},
        openapi_extra=EMPTY_JSON_BODY,
    )
    def shutdown(request: Request) -> Response:
        """Stop this server, so it can be started again with new settings (the dialog's Restart)."""
        stop = getattr(request.app.state, "shutdown", None)
        if stop is None:
            raise ApiError(409, "This server was not started by `python -m backend serve`; stop it there.")
        log.info("shutdown requested by a client")
        stop()
        return Response(status_code=202)

    # ------------------------------------------------------------------ models
    @app.get(f"{v}/models", response_model=schemas.ModelList, tags=["models"])
    def list_models() -> schemas.ModelList:
        root = s.config.resolved_models_dir()
        defaults = {task: _default_model(s, task) for task in DEFAULT_MODEL_FOR_TASK}
        installed = []
        for model in installed_models(root):
            m = model.manifest
            installed.append(
                schemas.InstalledModelInfo(
                    id=model.root.name,
                    tasks=list(m.tasks),
                    variant=m.variant,
                    licence=m.licence,
                    description=m.description,
                    default_for=[task for task, name in defaults.items() if name == model.root.name],
                    family=m.family,
                    defaults={
                        task: schemas.ModelDefaultsInfo(**m.defaults(task).as_dict()) for task in m.tasks
                    },
                )
            )
        downloadable = [
            schemas.DownloadableModelInfo(
                id=spec.id,
                title=spec.title,
                tasks=list(spec.tasks),
                # an entry of linked files: what its download may fetch (the entries it links)
                size_bytes=spec.size_bytes or sum(get_spec(r).size_bytes for r in spec.requires),
                licence=spec.licence,
                # an entry of linked files is installed once its folder has the manifest
                installed=not missing_files(spec, root / spec.id)
                and (bool(spec.files) or (root / spec.id / MANIFEST_NAME).is_file()),
                url=spec.url,
                family=spec.family,
                gpu_memory_gb=family.gpu_memory_gb if (family := family_of(spec)) else None,
                note=family.note if family else "",
                terms=spec.terms,
                terms_text=LICENCE_TERMS.get(spec.terms or "", ""),
            )
            for spec in REGISTRY.values()
        ]
        from ..models.pasd.styles import find_styles
        from ..pipelines.fast import LCM_FILE, LCM_MODEL_ID

        styles = [
            schemas.StyleInfo(
                name=style.name,
                kind=style.kind,
                default_strength=style.default_strength,
                licence=style.licence,
            )
            for style in find_styles(root)
        ]
        fast = (root / LCM_MODEL_ID / LCM_FILE).is_file()
        return schemas.ModelList(
            installed=installed, downloadable=downloadable, styles=styles, fast_mode=fast
        )

    @app.post(
        f"{v}/models/{{model_id}}/download",
        response_model=schemas.DownloadStatus,
        status_code=202,
        tags=["models"],
        openapi_extra=EMPTY_JSON_BODY,
    )
    def start_download(
        model_id: str,
        accept_licence: Annotated[
            list[str], Query(description="licence terms the user has read and accepted (e.g. supir)")
        ] = [],  # noqa: B006 - FastAPI copies query defaults
    ) -> schemas.DownloadStatus:
        try:
            download = s.downloads.start(model_id, accepted=tuple(accept_licence))
        except KeyError:
            raise ApiError(
                404, f"{model_id!r} is not a downloadable model; known: {', '.join(REGISTRY)}."
            ) from None
        except LicenceNotAccepted as exc:
            raise ApiError(403, str(exc), code="licence-not-accepted") from None
        return _download_status(download)

    @app.get(f"{v}/models/{{model_id}}/download", response_model=schemas.DownloadStatus, tags=["models"])
    def download_status(model_id: str) -> schemas.DownloadStatus:
        try:
            return _download_status(s.downloads.get(model_id))
        except KeyError:
            raise ApiError(404, f"No download of {model_id!r} was started on this server.") from None

    # ------------------------------------------------------------------ images
    @app.post(
        f"{v}/images",
        response_model=schemas.ImageInfo,
        status_code=201,
        tags=["images"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": "The image file: PNG, TIFF, JPEG, WebP or .npy (H×W×C, uint8/uint16).",
                "content": {
                    t: {"schema": {"type": "string", "format": "binary"}}
                    for t in ("image/png", "image/tiff", "application/x-npy", "application/octet-stream")
                },
            }
        },
    )
    async def upload_image(request: Request) -> Any:
        try:
            tmp = await s.images.receive(request.stream(), request.headers.get("content-type", ""))
            stored = await run_in_threadpool(s.images.ingest, tmp, request.headers.get("content-type", ""))
        except UploadError as exc:
            raise ApiError(exc.status, str(exc)) from None
        except ClientDisconnect:
            log.info("an upload was aborted by the client; nothing was kept")
            return Response(status_code=400)  # nobody reads it
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            raise StorageFull(disk_full_message(s.config.resolved_data_dir())) from None
        return _image_info(stored)

    @app.get(f"{v}/images/{{image_id}}", response_model=schemas.ImageInfo, tags=["images"])
    def image_info(image_id: str) -> schemas.ImageInfo:
        return _image_info(_image(s, image_id))

    @app.get(
        f"{v}/images/{{image_id}}/pixels",
        response_class=FileResponse,
        tags=["images"],
        responses={200: {"content": {"application/x-npy": {}}, "description": "the pixels as .npy"}},
    )
    def image_pixels(image_id: str) -> FileResponse:
        _image(s, image_id)
        return PixelFileResponse(s.images.path(image_id), media_type="application/x-npy")

    @app.delete(f"{v}/images/{{image_id}}", status_code=204, tags=["images"])
    def delete_image(image_id: str) -> Response:
        _image(s, image_id)
        if image_id in s.jobs.images_in_use():
            raise ApiError(409, "The image is used by a queued or running job; cancel it first.")
        s.images.delete(image_id)
        return Response(status_code=204)

    # ------------------------------------------------------------------ jobs
    @app.post(f"{v}/jobs", response_model=schemas.JobInfo, status_code=202, tags=["jobs"])
    def submit_job(request: schemas.JobRequest) -> schemas.JobInfo:
        try:
            params = RestoreParams.from_dict(request.params.model_dump())
        except (ParamsError, TypeError) as exc:
            raise ApiError(422, f"Invalid parameters: {exc}") from None
        image = _image(s, request.image, field="image")
        if request.mask is not None:
            mask = _image(s, request.mask, field="mask")
            if (mask.height, mask.width) != (image.height, image.width):
                raise ApiError(
                    422,
                    f"The mask is {mask.width}×{mask.height} pixels but the image is "
                    f"{image.width}×{image.height}; the mask must have the image's size.",
                )
        _check_work(s, image.height, image.width, s.engine.resolved(params, _known(s, request.model)))
        _check_model(s, request.model, params.task)
        params = _check_prescaler(s, params)
        _check_style(s, params)
        try:
            job = s.jobs.submit(request.image, request.mask, request.model, params, request.detached)
        except QueueFull as exc:
            raise ApiError(429, str(exc), {"Retry-After": "5"}) from None
        return _job_info(s, job)

    @app.post(f"{v}/estimate", response_model=schemas.Estimate, tags=["jobs"])
    def estimate(request: schemas.EstimateRequest) -> schemas.Estimate:
        """How long a job would take here, from this server's finished runs of the model."""
        try:
            params = RestoreParams.from_dict(request.params.model_dump())
        except (ParamsError, TypeError) as exc:
            raise ApiError(422, f"Invalid parameters: {exc}") from None
        params = s.engine.resolved(params, _known(s, request.model))
        plan = _check_work(s, request.height, request.width, params)
        _check_model(s, request.model, params.task)
        model = s.engine.find_model(request.model, params.task).root.name
        work = work_units(int(params.steps or 0), plan.process_size, float(params.guidance or 0))
        guess = s.jobs.speed.estimate(model, work) if s.jobs.speed is not None else None
        ph, pw = plan.process_size
        return schemas.Estimate(
            seconds=None if guess is None or guess.seconds is None else round(guess.seconds, 1),
            runs=0 if guess is None else guess.runs,
            work=round(work, 4),
            model=model,
            process_width=pw,
            process_height=ph,
            tiles=plan.tiles,
        )

    @app.get(f"{v}/jobs", response_model=schemas.JobList, tags=["jobs"])
    def list_jobs() -> schemas.JobList:
        """All jobs the server knows; listing does not count as polling a job."""
        return schemas.JobList(jobs=[_job_info(s, job) for job in s.jobs.jobs()])

    @app.get(f"{v}/jobs/{{job_id}}", response_model=schemas.JobInfo, tags=["jobs"])
    def job_status(job_id: str) -> schemas.JobInfo:
        return _job_info(s, _job(s, job_id))

    @app.post(
        f"{v}/jobs/{{job_id}}/cancel",
        response_model=schemas.JobInfo,
        tags=["jobs"],
        openapi_extra=EMPTY_JSON_BODY,
    )
    def cancel_job(job_id: str) -> schemas.JobInfo:
        _job(s, job_id)
        return _job_info(s, s.jobs.cancel(job_id))

    @app.delete(f"{v}/jobs/{{job_id}}", status_code=204, tags=["jobs"])
    def delete_job(job_id: str) -> Response:
        _job(s, job_id)
        s.jobs.delete(job_id)
        return Response(status_code=204)

    @app.get(
        f"{v}/jobs/{{job_id}}/preview",
        tags=["jobs"],
        response_class=Response,
        responses={
            200: {"content": {"image/png": {}}, "description": "a small PNG of the job's current state"},
            204: {"description": "no preview yet"},
        },
    )
    def job_preview(job_id: str) -> Response:
        job = _job(s, job_id)
        if job.preview_png is None:
            return Response(status_code=204)
        return Response(job.preview_png, media_type="image/png")

    @app.get(
        f"{v}/jobs/{{job_id}}/foreground",
        tags=["jobs"],
        response_class=FileResponse,
        responses={
            200: {
                "content": {"application/x-npy": {}, "image/png": {}, "image/tiff": {}},
                "description": "the soft foreground the run used when faces were part of it (8-bit grey, "
                "the result's size): to refine it, e.g. as a GIMP channel",
            }
        },
    )
    def job_foreground(
        job_id: str, format: Annotated[schemas.ImageFormat, Query(description="file format")] = "npy"
    ) -> FileResponse:
        _job(s, job_id)
        try:
            path = s.jobs.foreground_path(job_id, format)
        except ValueError as exc:
            raise ApiError(409 if "has no" in str(exc) else 422, str(exc)) from None
        media = {"npy": "application/x-npy", "png": "image/png", "tiff": "image/tiff"}[format]
        return PixelFileResponse(path, media_type=media, filename=f"{job_id}-foreground.{format}")

    @app.post(f"{v}/faces", response_model=schemas.FaceList, tags=["images"])
    def find_faces(request: schemas.FacesRequest) -> schemas.FaceList:
        """Faces in an uploaded image, for a dialog to show and let the user choose (face_boxes)."""
        _image(s, request.image)
        pixels = s.images.load(request.image)
        try:
            found = detect_faces(pixels)
        except FaceDetectionError as exc:
            raise ApiError(503, str(exc)) from None
        height, width = pixels.shape[:2]
        return schemas.FaceList(
            faces=[schemas.FaceBox(**f.to_dict()) for f in found],
            width=width,
            height=height,
            detector=DETECTOR,
            licence=DETECTOR_LICENCE,
        )

    @app.get(
        f"{v}/jobs/{{job_id}}/result",
        tags=["jobs"],
        response_class=FileResponse,
        responses={
            200: {
                "content": {"application/x-npy": {}, "image/png": {}, "image/tiff": {}},
                "description": "the result at the input's bit depth, with alpha if the input had it",
            }
        },
    )
    def job_result(
        job_id: str, format: Annotated[schemas.ImageFormat, Query(description="file format")] = "npy"
    ) -> FileResponse:
        _job(s, job_id)
        try:
            path = s.jobs.result_path(job_id, format)
        except ValueError as exc:
            raise ApiError(409 if "has no result" in str(exc) else 422, str(exc)) from None
        media = {"npy": "application/x-npy", "png": "image/png", "tiff": "image/tiff"}[format]
        s.jobs.mark_fetched(job_id)
        return PixelFileResponse(path, media_type=media, filename=f"{job_id}.{format}")


# State changes carry Content-Type: application/json even without a body (guard.py): say so.
EMPTY_JSON_BODY: dict[str, Any] = {
    "requestBody": {
        "required": False,
        "description": "empty, or {}; the Content-Type must be application/json (no cross-site forms)",
        "content": {"application/json": {"schema": {"type": "object", "maxProperties": 0}}},
    }
}
CHALLENGE = re.compile(r"[0-9a-fA-F]{16,128}")


def _full_health(s: Services, status: str, proofs: list[str] | None, problems: list[str]) -> schemas.Health:
    vm = psutil.virtual_memory()
    device_free = free_memory(s.engine.choice.device) if s.engine.choice.is_accelerator else None
    queued, running = s.jobs.counts()
    data = s.config.resolved_data_dir()
    warnings = []
    models = s.config.resolved_models_dir()
    if not models.is_dir():
        warnings.append(
            f"The model folder {models} does not exist: if it is on a drive, connect the drive; "
            "otherwise run the installer again, which makes it and downloads the models."
        )
    low_disk = low_disk_warning(data)
    if low_disk:
        warnings.append(low_disk)
    return schemas.Health(
        status=status,
        api=API_VERSION,
        proofs=proofs,
        version=__version__,
        device=s.engine.choice.name,
        dtype=str(s.engine.choice.dtype).removeprefix("torch."),
        memory=schemas.MemoryInfo(
            total_bytes=vm.total,
            available_bytes=vm.available,
            process_rss_bytes=psutil.Process().memory_info().rss,
            device_free_bytes=device_free,
        ),
        loaded_model=s.engine.loaded_model,
        queue=schemas.QueueInfo(queued=queued, running=running, limit=s.config.queue_size),
        log_file=str(s.log_file) if s.log_file else None,
        disk_free_bytes=free_space(data),
        problems=problems,
        warnings=warnings,
    )


def _default_model(s: Services, task: str) -> str | None:
    try:
        return s.engine.find_model(None, task).root.name
    except Exception:
        return None


def _known(s: Services, model: str | None) -> str | None:
    """A client's model name only if it is an installed model id (never a server path)."""
    if model is None:
        return None
    installed = {m.root.name for m in installed_models(s.config.resolved_models_dir())}
    return model if model in installed else None


def _check_work(s: Services, height: int, width: int, params: RestoreParams) -> RunPlan:
    """Refuse work out of proportion before it is queued: extreme strips, results or process sizes.

    Returns the run's plan (sizes and tiles)."""
    ratio = max(height, width) / max(1, min(height, width))
    if ratio > s.config.max_aspect_ratio:
        raise ApiError(
            422,
            f"The image is {width}×{height} pixels: its long side is {ratio:.0f} times its short side, "
            f"and this server takes at most {s.config.max_aspect_ratio:g}:1 (the diffusion needs a short "
            "side of some size, so a thin strip would cost as much as a huge image). Process a wider "
            "part of the image, or the strip in pieces.",
        )
    limit = s.config.max_output_megapixels * 1e6
    out_pixels = round(height * params.scale) * round(width * params.scale)
    if out_pixels > limit:
        raise ApiError(
            413,
            f"The result would have {out_pixels / 1e6:.1f} megapixels; this server makes at most "
            f"{s.config.max_output_megapixels:g}. Use a smaller scale or a part of the image.",
        )
    try:
        plan = s.engine.plan(height, width, params, None)
    except InputError as exc:  # a preview's frame that does not hold its crop
        raise ApiError(422, f"Invalid parameters: {exc}") from None
    ph, pw = plan.process_size
    if ph * pw > limit:
        raise ApiError(
            413,
            f"This job would run the diffusion at {pw}×{ph} pixels ({ph * pw / 1e6:.0f} megapixels), "
            f"more than this server's limit of {s.config.max_output_megapixels:g}; use a smaller "
            "process size or a part of the image.",
        )
    return plan


def _check_model(s: Services, model: str | None, task: str) -> None:
    """Only installed model ids are accepted (never server paths), and the model must do the task."""
    if model is not None:
        names = sorted(m.root.name for m in installed_models(s.config.resolved_models_dir()))
        if model not in names:
            hint = (
                f" Download it with POST /{API_VERSION}/models/{model}/download." if model in REGISTRY else ""
            )
            raise ApiError(
                404,
                f"Unknown model {model!r}; installed: {', '.join(names) or 'none'}.{hint}",
                code="unknown-model",
            )
    try:
        s.engine.find_model(model, task)
    except ModelLoadError as exc:
        raise ApiError(422, str(exc), code="no-model" if model is None else None) from None


def _check_prescaler(s: Services, params: RestoreParams) -> RestoreParams:
    """Clients name a GAN upscaler file in ``<models>/upscalers/``, never a server path."""
    name = (params.prescaler or "").strip()
    if name.lower() in ("", "bicubic"):
        return params.with_(prescaler=None)
    folder = s.config.resolved_models_dir() / "upscalers"
    candidate = folder / name
    if "/" in name or "\\" in name or name.startswith(".") or not candidate.is_file():
        found = (
            sorted(p.name for p in folder.iterdir() if p.suffix.lower() in GAN_SUFFIXES)
            if folder.is_dir()
            else []
        )
        raise ApiError(
            422,
            f"Unknown pre-scaler {name!r}: use 'bicubic' or the file name of a GAN upscaler in the server's "
            f"{folder} folder (there now: {', '.join(found) or 'none'}).",
        )
    return params.with_(prescaler=str(candidate))


def _check_style(s: Services, params: RestoreParams) -> None:
    """Clients name an installed style (``GET /v1/models`` lists them), never a server path."""
    if params.style is None:
        return
    from ..models.pasd.styles import find_styles

    names = sorted(style.name for style in find_styles(s.config.resolved_models_dir()))
    if params.style not in names:
        raise ApiError(
            422,
            f"Unknown style {params.style!r}: use the name of a style installed on the server (there now: "
            f"{', '.join(names) or 'none'}); styles are files in its models/styles folder.",
        )


def _image(s: Services, image_id: str, field: str = "image") -> Any:
    try:
        return s.images.get(image_id)
    except UnknownImage as exc:
        raise ApiError(404, f"{field}: {exc.args[0]}" if field != "image" else exc.args[0]) from None


def _job(s: Services, job_id: str) -> Any:
    try:
        return s.jobs.get(job_id)
    except UnknownJob as exc:
        raise ApiError(404, exc.args[0]) from None


def _image_info(stored: Any) -> schemas.ImageInfo:
    return schemas.ImageInfo(
        id=stored.id,
        width=stored.width,
        height=stored.height,
        channels=stored.channels,
        dtype=stored.dtype,
        bytes=stored.bytes,
    )


def _download_status(download: Any) -> schemas.DownloadStatus:
    return schemas.DownloadStatus(
        model=download.model,
        state=download.state,
        bytes_done=download.bytes_done(),
        bytes_total=download.bytes_total,
        error=download.error,
    )


def _job_info(s: Services, job: Any) -> schemas.JobInfo:
    return schemas.JobInfo(
        id=job.id,
        state=job.state,
        task=job.task,
        model=job.model,
        image=job.image,
        mask=job.mask,
        params=job.params,
        detached=job.detached,
        queue_position=s.jobs.position(job),
        progress=schemas.Progress(
            stage=job.stage,
            step=job.step,
            total=job.total,
            fraction=round(job.fraction, 4),
            eta_seconds=job.eta_seconds,
        ),
        cancel_requested=job.cancel_requested,
        error=job.error,
        result=schemas.ResultInfo(**job.result) if job.result else None,
        created=job.created,
        started=job.started,
        finished=job.finished,
    )
