"""The dialog: set up a run, preview a crop of it, follow the whole run, apply or cancel.

It owns no protocol code: every request goes through ``backend.client`` in a worker thread
(``gui.workers``), and the UI thread only reacts to their signals. The request is built by
``gui.request.build_request`` from the controls, the same for previews and the final run.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QByteArray, QSize, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QCloseEvent, QDesktopServices, QGuiApplication, QImage, QPalette, QWindow
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFrame,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from backend import paths
from backend.client import (
    STAGE_NAMES,
    ApiError,
    AuthError,
    Client,
    ClientError,
    DownloadStatus,
    Estimate,
    Health,
    JobFailed,
    JobInfo,
    NotFound,
    NotOurServer,
    RawImage,
    ServerStartError,
    ServerUnreachable,
    Undelivered,
    ensure_server,
    format_duration,
    gui_words,
    is_loopback,
    process_alive,
    progress_text,
    repair_advice,
)
from backend.face_box import Face
from backend.pipelines.params import (
    ParamsError,
)

from .controls import Controls
from .imaging import Rect, as_array, crop, mask_bounds, mask_to_upload, to_qimage, to_raw
from .preview import CropView, SplitView
from .request import Request, build_request, output_size
from .settings import (
    DialogSettings,
    SettingsStore,
    merge_host,
    random_seed,
)
from .widgets import Banner, StatusLine, format_bytes
from .workers import Call, DownloadRun, JobRun, JobSpec, Upload, Workers

PREVIEW_SIDE = 256  # input pixels of the preview crop: quick, yet enough to judge texture
THUMBNAIL_SIDE = 1024  # the image is shown at most this large (the screen needs no more)
STAGES = {  # the server's stages, and the client-side steps before and after them
    **STAGE_NAMES,
    "upload": "sending the image",
    "submit": "starting",
    "fetch": "receiving the result",
}

Deliver = Callable[[Request, JobInfo, RawImage], None]


def preview_frame(width: int, height: int, side: int = PREVIEW_SIDE) -> tuple[int, int]:
    """The preview frame's size: at most ``side`` square (a small part of a large image), and at most
    half of each side of a small one, so a Preview costs a quarter of Apply or less."""
    return min(side, max(16, width // 2), width), min(side, max(16, height // 2), height)


@dataclass
class DialogInput:
    """What the dialog works on and where its result goes (from a job file, or a file on disk)."""

    task: str
    image: RawImage
    mask: RawImage | None = None
    server: str = "http://127.0.0.1:7861"
    token: str | None = None
    python: str | None = None  # the backend environment's Python, for the Start button
    models: str | None = None
    title: str = ""
    host_settings: dict[str, Any] = field(default_factory=dict)  # the host's last values
    host_options: bool = True  # show "output" and "colour mode" (choices only a host like GIMP has)
    task_fixed: bool = True
    # Writes the result (and the answer); runs in a worker thread, before the dialog closes.
    deliver: Deliver | None = None
    host_pid: int | None = None  # the plug-in's process: the dialog must not outlive it
    about: str = ""  # which image, layer and part, in words
    window: dict[str, Any] | None = None  # the host's window to stay above (see keep_with_host)
    stop_file: str | None = None  # the host writes a reason here when the dialog must stop and close
    scratch: Path | None = None  # the host's run folder: removed by the dialog if the host dies first
    undelivered: Undelivered | None = None  # a result the host never received, offered again
    adopt: Callable[[Undelivered], None] | None = None  # hands that result over as this run's answer


def explain(exc: BaseException) -> str:
    """An exception in plain words for the banner (tracebacks go to the log, not the user)."""
    if isinstance(exc, JobFailed):
        return f"The run failed: {exc}"
    if isinstance(exc, AuthError):
        return f"The backend refused the access token: {exc.detail}"
    if isinstance(exc, ApiError):  # GUI words, never a status number or a command-line flag
        return gui_words(exc)
    if isinstance(exc, ServerUnreachable):
        return "The backend stopped answering. Start backend (above) starts it again."
    if isinstance(exc, (ClientError, ParamsError)):
        return str(exc)
    if isinstance(exc, OSError):
        return f"Could not write the result: {exc}"
    traceback.print_exception(exc, file=sys.stderr)
    return (
        f"Something unexpected went wrong ({type(exc).__name__}: {exc}). Details are in the terminal output."
    )


LARGE_DOWNLOAD = 1 << 30  # bytes; Install… asks before downloading more
README = Path(__file__).resolve().parents[1] / "README.md"  # its section Models: installing by hand


def first_line(text: str | None) -> str:
    """The first sentence of a long message (the banner is one short line; the rest goes in its tooltip)."""
    line = (text or "no reason given").strip().splitlines()[0].strip()
    return line if len(line) <= 200 else line[:197] + "…"


class RestoreDialog(QDialog):
    """Upscale or colorize one image with the diffusion backend; Accepted once the result is delivered."""

    progressed = Signal(object)  # JobInfo, each time a run's state is polled

    def __init__(
        self,
        source: DialogInput,
        store: SettingsStore | None = None,
        preview_side: int = PREVIEW_SIDE,
        poll_interval: float = 0.25,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.source = source
        self.task = source.task
        self.store = store if store is not None else SettingsStore.open()
        self.preview_side = preview_side
        self.poll_interval = poll_interval
        self.pixels = as_array(source.image)
        self.mask_pixels = mask_to_upload(as_array(source.mask)) if source.mask is not None else None
        self.client = Client(source.server, token=source.token, timeout=300)
        self.probe = Client(source.server, token=source.token, timeout=5)  # health: answer fast or not at all
        self.workers = Workers(self)
        self.connected = False
        self.health: Health | None = None
        self.loaded_model: str | None = None  # on the backend (health, or the last run's model)
        self.models: dict[str, list[dict[str, Any]]] = {"installed": [], "downloadable": []}
        self.models_loaded = False
        self.spawned: subprocess.Popen[bytes] | None = None  # a backend the Start button started
        self.job_id: str | None = None  # the running (or last) job
        self.last_job: JobInfo | None = None
        self.live_previews = 0  # live pictures shown during runs
        self._run: JobRun | None = None
        self._run_kind = ""
        self._run_started = 0.0
        self._close_when_stopped = False
        self._health_call: Call | None = None
        self._start_call: Call | None = None
        self._start_began = 0.0
        self._download: DownloadRun | None = None
        self._select_after_load: str | None = None  # a model just installed
        self._select_style_after_load: str | None = None  # a style just installed
        self._uploads: dict[str, str] = {}  # what the server already has: key → id
        self._mask_raw: RawImage | None = None
        self._press: str | None = None
        self._loading = False
        self._preview_after: QImage | None = None
        self._before_key: tuple[Rect, int] | None = None
        self._ending = False
        self._auto_start_tried = False  # a local backend that does not answer is started once, unasked
        self._faces_call: Call | None = None

        self._build()
        self.controls.configure(
            self.task, self.mask_pixels is not None, source.host_options, source.task_fixed
        )
        self.controls.set_values(merge_host(self.store.load(self.task), source.host_settings))
        self._set_title()
        self._show_image()
        self._restore_window()
        self.health_timer = QTimer(self)
        self.health_timer.setInterval(5000)
        self.health_timer.timeout.connect(self.check_health)
        self.start_timer = QTimer(self)
        self.start_timer.setInterval(1000)
        self.start_timer.timeout.connect(self._show_starting)
        self.estimate_timer = QTimer(self)  # settles changes before asking the backend
        self.estimate_timer.setSingleShot(True)
        self.estimate_timer.setInterval(300)
        self.estimate_timer.timeout.connect(self.estimate)
        self._estimate_call: Call | None = None
        self._estimate_again = False
        self.estimates: tuple[Estimate, Estimate] | None = None  # preview, apply
        self.host_timer = QTimer(self)
        self.host_timer.setInterval(1000)
        self.host_timer.timeout.connect(self._check_host)
        if source.host_pid is not None:
            self.host_timer.start()
        self.host_gone = False
        self.stop_reason = ""
        self.kept_with = self.keep_with_host(source.window)
        self.controls.prompt.setFocus()
        if source.undelivered is not None:
            self.offer_undelivered(source.undelivered)
        QTimer.singleShot(0, self.check_health)

    # =================================================================== building
    def _build(self) -> None:
        self.setSizeGripEnabled(True)
        self.status = StatusLine()
        self.status.startClicked.connect(self.start_backend)
        self.status.restartClicked.connect(self.restart_backend)
        self.banner = Banner()

        # ---------------------------------------------------------------- pictures (left)
        self.crop_view = CropView()
        self.crop_view.cropChanged.connect(self._crop_moved)
        self.crop_view.faceClicked.connect(lambda index: self.controls.faces_panel.toggle(index))
        self.split_view = SplitView()
        self.crop_view.setAccessibleName("Image with the preview frame")
        self.split_view.setAccessibleName("Preview, before and after")
        self.crop_label = QLabel()
        self.crop_label.setForegroundRole(QPalette.ColorRole.PlaceholderText)
        self.preview_button = QPushButton("&Preview")
        self.preview_button.setAutoDefault(False)
        self.preview_button.setToolTip(
            "Run the framed part through the same pipeline with these settings. Quick, because the part "
            "is small; Apply then runs the whole image the same way."
        )
        self.preview_button.clicked.connect(self.run_preview)
        self.about = QLabel(self.source.about or self.source.title)
        self.about.setWordWrap(True)
        self.about.setTextFormat(Qt.TextFormat.PlainText)
        self.about.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.about.setVisible(bool(self.about.text()))
        image_title = QLabel("Image: drag the frame over the part to preview")
        compare_title = QLabel("Preview: before | after")
        row = QHBoxLayout()
        row.addWidget(self.crop_label, 1)
        row.addWidget(self.preview_button)
        pictures = QWidget()
        left = QVBoxLayout(pictures)
        left.setContentsMargins(0, 0, 0, 0)
        left.addWidget(self.about)
        left.addWidget(image_title)
        left.addWidget(self.crop_view, 2)
        left.addWidget(compare_title)
        left.addWidget(self.split_view, 3)
        left.addLayout(row)

        # ---------------------------------------------------------------- controls (right)
        self.controls = Controls()
        self.controls.image_size = (self.pixels.shape[1], self.pixels.shape[0])
        self.controls.changed.connect(self._values_changed)
        self.controls.taskChosen.connect(self._task_chosen)
        self.controls.installRequested.connect(self.install_model)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(self.controls)
        # Room for the vertical scroll bar too: the controls never need a horizontal one.
        scroll.setMinimumWidth(
            self.controls.minimumSizeHint().width() + scroll.verticalScrollBar().sizeHint().width()
        )

        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(pictures)
        splitter.addWidget(scroll)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        splitter.setChildrenCollapsible(False)
        self.splitter = splitter

        # ---------------------------------------------------------------- progress and buttons
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)
        self.estimate_label = QLabel()
        self.estimate_label.setWordWrap(True)
        self.estimate_label.setForegroundRole(QPalette.ColorRole.PlaceholderText)
        self.estimate_label.setToolTip(
            "How long Preview and Apply take, from the backend's finished runs of this model on its "
            "computer; during a run the time left is measured as the steps go."
        )
        self.progress_label = QLabel("Ready.")
        self.progress_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok
            | QDialogButtonBox.StandardButton.Cancel
            | QDialogButtonBox.StandardButton.RestoreDefaults
        )
        self.apply_button = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        self.apply_button.setText("&Apply")
        self.apply_button.setDefault(True)
        self.apply_button.setToolTip("Run the whole image with these settings and put the result in (Enter).")
        self.cancel_button = self.buttons.button(QDialogButtonBox.StandardButton.Cancel)
        self.cancel_button.setToolTip("Close without changing anything (Esc). During a run: stop it.")
        self.reset_button = self.buttons.button(QDialogButtonBox.StandardButton.RestoreDefaults)
        self.reset_button.setText("Reset")
        self.reset_button.setToolTip("Put every setting back to its default.")
        self.reset_button.setAutoDefault(False)
        self.reset_button.clicked.connect(self.reset)
        self.buttons.accepted.connect(self.apply)
        self.buttons.rejected.connect(self.reject)

        layout = QVBoxLayout(self)
        layout.addWidget(self.status)
        layout.addWidget(self.banner)
        layout.addWidget(splitter, 1)
        progress_row = QHBoxLayout()
        progress_row.addWidget(self.progress_label, 1)
        progress_row.addWidget(self.progress, 1)
        layout.addLayout(progress_row)
        bottom = QHBoxLayout()
        bottom.addWidget(self.estimate_label, 1)
        bottom.addWidget(self.buttons)
        layout.addLayout(bottom)

        self.resize(QSize(1040, 700))

    # =================================================================== values
    def values(self) -> DialogSettings:
        """The controls as one value (what is saved, and what the request is built from)."""
        return self.controls.values()

    def request(self) -> Request:
        """The backend request the controls describe (ParamsError when a value is off)."""
        c = self.controls
        return build_request(self.task, self.values(), c.shown_defaults, c.context())

    def _values_changed(self) -> None:
        self._show_faces()
        self._show_before()
        self._want_estimate()
        if self._preview_after is not None and self._run is None:
            self.split_view.set_after_label("After (earlier settings)")

    def reset(self) -> None:
        """Every setting back to its default (the Reset button)."""
        self.controls.reset()

    def _task_chosen(self, task: str) -> None:
        """File mode only: switch task, keeping each task's own settings."""
        self.store.put(self.task, self.values())
        self.task = task
        self._preview_after = None
        self.split_view.set_after(None)
        self.controls.configure(
            task, self.mask_pixels is not None, self.source.host_options, self.source.task_fixed
        )
        self.controls.set_values(self.store.load(task))
        self._set_title()

    def _set_title(self) -> None:
        what = "Diffusion Upscale" if self.task == "upscale" else "Diffusion Colorize"
        self.setWindowTitle(f"{what} — {self.source.title}" if self.source.title else what)

    # =================================================================== the image and the crop
    def _show_image(self) -> None:
        h, w = self.pixels.shape[:2]
        step = max(1, math.ceil(max(h, w) / THUMBNAIL_SIDE))
        self.thumbnail = to_qimage(self.pixels[::step, ::step])
        overlay = None
        if self.mask_pixels is not None:
            small = self.mask_pixels[::step, ::step]
            tint = self.palette().color(QPalette.ColorRole.Highlight)
            rgba = np.empty((*small.shape[:2], 4), np.uint8)
            rgba[..., 0], rgba[..., 1], rgba[..., 2] = tint.red(), tint.green(), tint.blue()
            rgba[..., 3] = (small.astype(np.uint32) * 90 // 65535).astype(np.uint8)
            overlay = to_qimage(rgba)
        self.crop_view.set_image(self.thumbnail, w, h, overlay)
        side = Rect(0, 0, *preview_frame(w, h, self.preview_side))
        bounds = mask_bounds(self.mask_pixels) if self.mask_pixels is not None else None
        centre = bounds or Rect(0, 0, w, h)
        self.crop_view.set_crop(side.centered_on(centre.x + centre.width / 2, centre.y + centre.height / 2))

    def _crop_moved(self, rect: Rect) -> None:
        self.crop_label.setText(f"Frame: {rect.width} × {rect.height} px at {rect.x}, {rect.y}")
        self._want_estimate()
        self._preview_after = None
        self.split_view.set_after(None)
        self._show_before()

    def _show_before(self) -> None:
        """The crop at the output size, as the pipeline's input looks before diffusion."""
        rect = self.crop_view.crop
        scale = int(self.controls.scale_combo.currentData() or 1)
        if rect.width == 0 or self._run_kind == "apply" or self._before_key == (rect, scale):
            return
        self._before_key = (rect, scale)
        w, h = output_size(rect.width, rect.height, scale)
        before = to_qimage(crop(self.pixels, rect))
        self.split_view.set_before(
            before.scaled(
                w, h, Qt.AspectRatioMode.IgnoreAspectRatio, Qt.TransformationMode.SmoothTransformation
            )
        )

    # =================================================================== faces
    def detect_faces(self) -> None:
        """Look for faces in the input once (in a worker): the image goes up once, and Apply reuses it."""
        panel = self.controls.faces_panel
        if self._faces_call is not None or panel.state in ("found", "none", "unavailable"):
            return
        client, image, cached = self.client, self.source.image, self._uploads.get("image")

        def find(task: Call) -> tuple[str, list[dict[str, Any]]]:
            image_id = cached
            if image_id is not None:
                try:
                    return image_id, client.faces(image_id)
                except NotFound:  # the backend forgot the upload (restarted), or has no face detection
                    task.check()
            image_id = client.upload(image).id
            task.check()
            return image_id, client.faces(image_id)  # NotFound now: a backend without face detection

        panel.set_searching()
        self._faces_call = self.workers.call(find, self._faces_found, self._faces_failed)

    def _faces_found(self, answer: tuple[str, list[dict[str, Any]]]) -> None:
        self._faces_call = None
        image_id, faces = answer
        self._uploads["image"] = image_id
        self.controls.faces_panel.set_faces([Face.from_json(face) for face in faces])

    def _faces_failed(self, exc: BaseException) -> None:
        """An old backend (no /v1/faces) or one without OpenCV: said once, the dialog works on without."""
        self._faces_call = None
        panel = self.controls.faces_panel
        if isinstance(exc, NotFound) or (isinstance(exc, ApiError) and exc.status in (404, 405, 501, 503)):
            panel.set_unavailable(exc.detail if isinstance(exc, ApiError) else str(exc))
        else:  # the backend went away meanwhile: looked for again once it lists its models
            panel.set_failed(first_line(explain(exc)))

    def _show_faces(self) -> None:
        """The overlay follows the list: which faces are on, and whether the foreground uses them."""
        c = self.controls
        self.crop_view.set_faces(c.faces_panel.faces, c.faces_panel.on, c.faces_used())

    # =================================================================== the backend
    def log_path(self) -> str:
        if self.health is not None and self.health.log_file:
            return self.health.log_file
        return str(paths.log_dir() / f"server-{self.client.port}.log")

    def check_health(self) -> None:
        if self._health_call is not None or self._start_call is not None:
            return
        self._health_call = self.workers.call(
            lambda _: self.probe.health(), self._health_ok, self._health_failed
        )

    def _health_ok(self, health: Health) -> None:
        self._health_call = None
        first = not self.connected
        self.connected, self.health = True, health
        self.loaded_model = health.loaded_model
        gpu = (health.memory or {}).get("device_free_bytes")
        if health.device is not None and self.controls.backend_gpu != (gpu,):
            self.controls.backend_gpu = (gpu if isinstance(gpu, int) else None,)
            c = self.controls
            c.set_models(c.models, c.models_loaded, c.model_combo.currentData())
        self.status.connected(health, self.client.url)
        self.status.restart.setVisible(is_loopback(self.client.host) and self._run is None)
        if first:
            if health.warnings:  # a missing model folder, a nearly full disk: said before anything fails
                self.banner.show_message("\n".join(health.warnings), error=False)
            self.load_models()
        self.health_timer.start()
        self._update_buttons()

    def _health_failed(self, exc: BaseException) -> None:
        self._health_call = None
        self.connected = False
        local = is_loopback(self.client.host)
        if isinstance(exc, ServerUnreachable) and local and not self._auto_start_tried:
            # The first run starts the backend (as README says and Repeat does): no click needed.
            self._auto_start_tried = True
            self.start_backend()
            self._update_buttons()
            return
        detail = "" if isinstance(exc, ServerUnreachable) else explain(exc)
        if isinstance(exc, ServerUnreachable) and not is_loopback(self.client.host):
            detail = "It runs on another computer: start it there."
        # Starting a backend cannot help while another program holds the port.
        can_start = local and not isinstance(exc, NotOurServer)
        self.status.unreachable(self.client.url, detail, self.log_path(), can_start)
        self.health_timer.start()
        self._update_buttons()

    def start_backend(self) -> None:
        """Start a local backend (in a worker; it keeps running after the dialog closes)."""
        if self._start_call is not None:
            return
        python = self.source.python or sys.executable
        models = self.source.models
        url, token = self.client.url, self.source.token

        def start(task: Call) -> Client:
            return ensure_server(
                url, python=python, models_dir=models, token=token, on_wait=lambda _: task.check()
            )

        self.banner.hide()
        self._start_began = time.monotonic()
        self._start_call = self.workers.call(start, self._started, self._start_failed)
        self._show_starting()
        self.start_timer.start()

    def restart_backend(self) -> None:
        """Stop the local backend and start it again with the current settings (Python, model folder)."""
        if self._start_call is not None or self._run is not None:
            return
        client = self.probe

        def stop_then_start(task: Call) -> Client:
            with contextlib.suppress(ClientError):
                client.shutdown()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # until the old one has let go of the port
                task.check()
                try:
                    client.health()
                except ServerUnreachable:
                    break
                except ClientError:
                    pass
                time.sleep(0.2)
            return ensure_server(
                self.client.url,
                python=self.source.python or sys.executable,
                models_dir=self.source.models,
                token=self.source.token,
                on_wait=lambda _: task.check(),
            )

        self.connected = False
        self._update_buttons()
        self.banner.hide()
        self._start_began = time.monotonic()
        self._start_call = self.workers.call(stop_then_start, self._started, self._start_failed)
        self._show_starting()
        self.start_timer.start()

    def _show_starting(self) -> None:
        self.status.starting(self.client.url, time.monotonic() - self._start_began, self.log_path())

    def _started(self, client: Client) -> None:
        self._start_call = None
        self.start_timer.stop()
        self.spawned = client.spawned
        self.check_health()

    def _start_failed(self, exc: BaseException) -> None:
        self._start_call = None
        self.start_timer.stop()
        python = self.source.python or sys.executable
        if not Path(python).is_file():  # the environment moved or was removed
            self.banner.show_message(
                f"The backend could not start: its Python {python} does not exist.",
                after=repair_advice(None),
            )
        elif isinstance(exc, ServerStartError):  # its own last lines, then the one next step
            self.banner.show_message(exc.summary, details=exc.output, after=repair_advice(python))
        else:
            self.banner.show_message(
                f"The backend could not start. {explain(exc)}", after=repair_advice(python)
            )
        self._health_failed(ServerUnreachable(str(exc)))

    # =================================================================== models
    def load_models(self) -> None:
        self.workers.call(
            lambda _: self.client.models(),
            self._models_listed,
            lambda exc: self.banner.show_message(explain(exc)),
        )

    def _models_listed(self, models: dict[str, list[dict[str, Any]]]) -> None:
        self.models, self.models_loaded = models, True
        selected, self._select_after_load = self._select_after_load, None
        self._fill_models(selected or self.controls.model_combo.currentData())
        style, self._select_style_after_load = self._select_style_after_load, None
        if style:
            self.controls.select_style(style)
        self._want_estimate()
        self._maybe_press()
        self.detect_faces()

    def _fill_models(self, selected: str | None) -> None:
        count = self.controls.set_models(self.models, self.models_loaded, selected)
        self._update_buttons()
        if self.models_loaded and not count:
            missing = [w for w in (self.health.warnings if self.health else []) if "model folder" in w]
            self.banner.show_message(
                missing[0]
                if missing  # not "install a model": the models are there, on a drive not connected
                else f"No model for the task '{self.task}' is installed on the backend yet. Use Install… "
                "to download one.",
                error=bool(missing),
            )

    def install_model(self, model_id: str) -> None:
        if self._download is not None or not model_id:
            return
        accepted = self._accept_terms(model_id)
        if accepted is None or not self._confirm_download(model_id, asked=bool(accepted)):
            return
        run = DownloadRun(self.client, model_id, accept_licence=accepted)
        run.signals.progress.connect(self._download_progress)
        run.signals.finished.connect(self._download_finished)
        run.signals.failed.connect(self._download_failed)
        self._download = run
        self._update_buttons()
        self.controls.show_download(None, model_id)
        self.workers.start(run)

    def _accept_terms(self, model_id: str) -> tuple[str, ...] | None:
        """A model under terms (SUPIR's non-commercial licence): show them and ask for explicit
        acceptance; None when declined, () when the model has none."""
        spec = next((m for m in self.models.get("downloadable", []) if m.get("id") == model_id), {})
        terms = spec.get("terms")
        if not terms:
            return ()
        size = format_bytes(int(spec.get("size_bytes") or 0))
        box = QMessageBox(self)
        box.setIcon(QMessageBox.Icon.Warning)
        box.setWindowTitle("Licence terms")
        box.setText(
            f"{spec.get('title') or model_id} ({size} with what it needs) is under terms you must "
            "accept before it is downloaded:"
        )
        box.setInformativeText(spec.get("terms_text") or terms)
        accept = box.addButton("I &accept these terms: download", QMessageBox.ButtonRole.AcceptRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        box.exec()
        return (str(terms),) if box.clickedButton() is accept else None

    def _confirm_download(self, model_id: str, asked: bool = False) -> bool:
        """Ask before gigabytes: what it is, how large, under which licence (unless its terms were
        just shown and accepted, which said all that)."""
        spec = next((m for m in self.models.get("downloadable", []) if m.get("id") == model_id), {})
        size = int(spec.get("size_bytes") or 0)
        if size < LARGE_DOWNLOAD or asked:
            return True
        answer = QMessageBox.question(
            self,
            "Download a model",
            f"Download {spec.get('title') or model_id} ({format_bytes(size)}) to the backend's model "
            f"folder? It comes from the Hugging Face hub under the licence {spec.get('licence', 'stated')}, "
            "and takes a while; the dialog stays usable meanwhile.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        return answer == QMessageBox.StandardButton.Yes

    def _download_progress(self, status: DownloadStatus) -> None:
        self.controls.show_download(status)

    def _download_finished(self, status: DownloadStatus) -> None:
        self._download = None
        self.controls.show_download(None)
        if status.state == "succeeded":
            self.banner.show_message(f"Installed the model {status.model}.", error=False)
            spec = next((m for m in self.models.get("downloadable", []) if m.get("id") == status.model), {})
            tasks = spec.get("tasks", [self.task])
            if self.task in tasks:  # a model for this task is chosen; an add-on leaves the model as it is
                self._select_after_load = status.model
            elif "style" in tasks:
                self._select_style_after_load = status.model
            self.load_models()
        else:
            self._fill_models(self.controls.model_combo.currentData())  # first: this message is the news
            reason = first_line(status.error).rstrip(".")
            self.banner.show_message(
                f"The download of {status.model} failed ({reason}).",
                actions=[("&Manual instructions", self.open_manual)],
            )
            self.banner.setToolTip(status.error or "")

    def open_manual(self) -> None:
        """README's instructions for putting the model files in by hand (downloaded elsewhere)."""
        if not QDesktopServices.openUrl(QUrl.fromLocalFile(str(README))):
            self.banner.show_message(
                f"Could not open {README}; its section Models says how to copy the files in by hand.",
                error=False,
            )

    def _download_failed(self, exc: BaseException) -> None:
        self._download = None
        self.controls.show_download(None)
        self.banner.show_message(explain(exc))
        self._fill_models(self.controls.model_combo.currentData())

    # =================================================================== estimates
    def _want_estimate(self) -> None:
        if self.connected and self.models_loaded and not self._ending:
            self.estimate_timer.start()

    def estimate(self) -> None:
        """Ask the backend how long Preview (the frame) and Apply (the whole image) will take."""
        if self._estimate_call is not None:
            self._estimate_again = True
            return
        try:
            request = self.request()
        except ParamsError:
            self.estimate_label.setText("")
            return
        rect = self.crop_view.crop
        h, w = self.pixels.shape[:2]
        framed = {**request.params, "frame": [rect.x, rect.y, w, h]}
        probe, model = self.probe, request.model

        def ask(_: Call) -> tuple[Estimate, Estimate]:
            return (
                probe.estimate(rect.width, rect.height, framed, model),
                probe.estimate(w, h, request.params, model),
            )

        self._estimate_call = self.workers.call(ask, self._estimated, self._estimate_failed)

    def _estimated(self, pair: tuple[Estimate, Estimate]) -> None:
        self._estimate_call = None
        self.estimates = pair
        preview, whole = pair
        if preview.seconds is None or whole.seconds is None:
            ratio = whole.work / preview.work if preview.work > 0 else 0.0
            self.estimate_label.setText(
                f"Apply is about {max(1, round(ratio))}× the work of a Preview. Times are shown once this "
                "model has run on the backend (the first Preview measures it)."
            )
        else:
            loading = ", plus loading the model" if self._cold() else ""
            self.estimate_label.setText(
                f"Expected: Preview {format_duration(preview.seconds)}, "
                f"Apply {format_duration(whole.seconds)} (measured on the backend's computer{loading})."
            )
        if self._estimate_again:
            self._estimate_again = False
            self.estimate()

    def _estimate_failed(self, exc: BaseException) -> None:
        self._estimate_call = None
        self.estimate_label.setText("")  # a setting the backend refuses: the run itself says why
        if self._estimate_again:
            self._estimate_again = False
            self.estimate()

    def _cold(self) -> bool:
        """The chosen model is not loaded on the backend yet (its first run also loads it)."""
        chosen = self.controls.model_combo.currentData()
        return self.loaded_model is None or (chosen is not None and chosen != self.loaded_model)

    # =================================================================== runs
    def _prepared_request(self, preview: bool = False) -> Request | None:
        """The request for a run. Only a Preview may draw a new seed (when asked to): Apply keeps the
        seed shown, the last preview's, so the applied details are the approved ones."""
        if preview and self.controls.seed_new.isChecked():
            self.controls.seed.setValue(random_seed())
        try:
            return self.request()
        except ParamsError as exc:
            self.banner.show_message(f"A setting is out of range: {exc}")
            return None

    def run_preview(self) -> None:
        """Run the crop (and the selection's crop) with the current settings."""
        if self._run is not None or not self.connected:
            return
        request = self._prepared_request(preview=True)
        if request is None:
            return
        rect = self.crop_view.crop
        key = f"crop {rect.x},{rect.y},{rect.width},{rect.height}"
        image = Upload(key, to_raw(crop(self.pixels, rect)), self._uploads.get(key))
        mask = None
        if self.mask_pixels is not None:
            mask = Upload(
                f"mask {key}", to_raw(crop(self.mask_pixels, rect)), self._uploads.get(f"mask {key}")
            )
        h, w = self.pixels.shape[:2]
        # Processed as Apply processes the whole image, with the whole run's noise in this place.
        params = {**request.params, "frame": [rect.x, rect.y, w, h]}
        self._start_run("preview", JobSpec(image, mask, params, request.model))

    def apply(self) -> None:
        """Run the whole image; once the result is delivered the dialog closes as Accepted."""
        if self._run is not None or not self.connected:
            return
        request = self._prepared_request()
        if request is None:
            return
        image = Upload("image", self.source.image, self._uploads.get("image"))
        mask = None
        if self.mask_pixels is not None:
            if self._mask_raw is None:
                self._mask_raw = to_raw(self.mask_pixels)  # once: Apply may be tried again
            mask = Upload("mask", self._mask_raw, self._uploads.get("mask"))
        deliver = self.source.deliver
        spec = JobSpec(
            image,
            mask,
            request.params,
            request.model,
            None if deliver is None else lambda job, result: deliver(request, job, result),
        )
        self._start_run("apply", spec)
        self.split_view.set_before(self.thumbnail)
        self._before_key = None
        self.split_view.set_after(None, "Live")

    def _start_run(self, kind: str, spec: JobSpec) -> None:
        self.banner.hide()
        run = JobRun(self.client, spec, interval=self.poll_interval)
        s = run.signals
        s.stage.connect(self._run_stage)
        s.uploaded.connect(self._uploaded)
        s.submitted.connect(self._submitted)
        s.progress.connect(self._run_progress)
        s.preview.connect(self._live_preview)
        s.finished.connect(self._run_finished)
        s.canceled.connect(self._run_canceled)
        s.failed.connect(self._run_failed)
        self._run, self._run_kind, self._run_started = run, kind, time.monotonic()
        self.job_id = None
        self.progress.setValue(0)
        self._set_busy(True)
        self.workers.start(run)

    @property
    def running(self) -> bool:
        return self._run is not None

    @property
    def uploads(self) -> dict[str, str]:
        """What the server already holds from this dialog (name → id): sent once, reused."""
        return dict(self._uploads)

    def _what(self) -> str:
        return "Preview" if self._run_kind == "preview" else "Run"

    def _run_stage(self, stage: str) -> None:
        self.progress_label.setText(f"{self._what()}: {STAGES.get(stage, stage)}…")

    def _uploaded(self, key: str, image_id: str) -> None:
        self._uploads[key] = image_id

    def _submitted(self, job_id: str) -> None:
        self.job_id = job_id

    def _run_progress(self, job: JobInfo) -> None:
        self.last_job = job
        if self._run is not None and self._run.stopping:
            return
        self.progress.setValue(round(1000 * job.progress.fraction))
        self.progress_label.setText(progress_text(job, self._what()))
        self.progressed.emit(job)

    def _live_preview(self, png: bytes) -> None:
        image = QImage.fromData(png)
        if not image.isNull() and self._run is not None and not self._run.stopping:
            self.split_view.set_after(image, "Live")
            self.live_previews += 1

    def _run_finished(self, job: JobInfo, result: RawImage) -> None:
        kind = self._run_kind
        self.loaded_model = (job.result or {}).get("model") or self.loaded_model  # it ran: it is loaded
        self._want_estimate()  # one more measured run
        seconds = time.monotonic() - self._run_started
        self.last_job = job
        self._end_run()
        self.progress.setValue(1000)
        seed = (job.result or {}).get("seed")
        if kind == "preview":
            self._preview_after = to_qimage(as_array(result))
            self.split_view.set_after(self._preview_after, "After")
            self.progress_label.setText(f"Preview done in {format_duration(seconds)} (seed {seed}).")
            return
        self.progress_label.setText(f"Done in {format_duration(seconds)} (seed {seed}).")
        self.done(QDialog.DialogCode.Accepted)

    def _run_canceled(self, job: JobInfo | None) -> None:
        asked = self._run is not None and self._run.stopping
        self.last_job = job or self.last_job
        self._end_run("Stopped")
        self.progress.setValue(0)
        if asked:
            self.progress_label.setText("Stopped; the backend dropped the job.")
        else:  # the server's watchdog, or another client
            self.progress_label.setText("Canceled by the backend.")
            reason = job.error if job is not None and job.error else "no reason given"
            self.banner.show_message(f"The backend canceled the run ({reason}).")
        if self._close_when_stopped:
            self.done(QDialog.DialogCode.Rejected)

    def _run_failed(self, exc: BaseException) -> None:
        self._end_run("Failed")
        self.progress.setValue(0)
        self.progress_label.setText("Failed.")
        message = explain(exc)
        if isinstance(exc, JobFailed) or (isinstance(exc, ApiError) and exc.status >= 500):
            message += f"\nThe backend's log has the details: {self.log_path()}"
        self.banner.show_message(message)
        if isinstance(exc, ServerUnreachable):
            self._health_failed(exc)
        if self._close_when_stopped:
            self.done(QDialog.DialogCode.Rejected)

    def _end_run(self, outcome: str = "") -> None:
        """``outcome`` ("Stopped", "Failed") labels what a preview left behind: never "Live" after a run."""
        kind = self._run_kind
        self._run, self._run_kind = None, ""
        self._set_busy(False)
        if kind == "apply":  # back to the crop comparison
            self._before_key = None
            self._show_before()
            self.split_view.set_after(self._preview_after)
        elif outcome:
            self.split_view.set_after_label(outcome)

    def stop_run(self) -> None:
        """Cancel the running job on the backend; the dialog stays open and editable."""
        if self._run is None:
            return
        if self._run.stopping:
            self._close_when_stopped = True  # a second Cancel: close once stopped
            return
        self._run.stop()
        self.progress_label.setText(f"{self._what()}: stopping…")

    def _set_busy(self, busy: bool) -> None:
        self.controls.setEnabled(not busy)
        self.crop_view.setEnabled(not busy)
        self.reset_button.setEnabled(not busy)
        self.cancel_button.setText("&Stop" if busy else "&Cancel")
        self.cancel_button.setToolTip(
            "Stop the run; the backend drops the job and the dialog stays open (Esc)."
            if busy
            else "Close without changing anything (Esc). During a run: stop it."
        )
        self._update_buttons()

    def _update_buttons(self) -> None:
        ready = self.connected and self._run is None
        self.apply_button.setEnabled(ready)
        self.preview_button.setEnabled(ready)
        self.controls.install_button.setEnabled(
            self.connected and self._download is None and self.controls.installable
        )

    # =================================================================== closing
    def press_when_ready(self, button: str) -> None:
        """Press Apply or Cancel as soon as the backend is connected (installation checks, tests)."""
        self._press = button
        self._maybe_press()

    def _maybe_press(self) -> None:
        if self._press is None or not (self.connected and self.models_loaded):
            return
        button, self._press = self._press, None
        QTimer.singleShot(0, self.apply if button == "apply" else self.reject)

    def _check_host(self) -> None:
        """The host ended (GIMP's Cancel, GIMP quitting) or asked us to stop (its image was closed).

        Then the run is stopped and the dialog closes: a result finished after that could not be
        delivered to anyone, so the backend job is canceled rather than finished into the void.
        """
        pid, stop = self.source.host_pid, self.source.stop_file
        if self.host_gone:
            return
        reason = ""
        if stop and Path(stop).exists():
            with contextlib.suppress(OSError):
                reason = Path(stop).read_text(encoding="utf-8").strip()[:200]
            reason = reason or "the host asked the dialog to stop"
        elif pid is not None and not process_alive(pid):
            reason = "the plug-in that opened this dialog has ended (canceled in GIMP, or GIMP quit)"
        if not reason:
            return
        self.host_gone, self.stop_reason = True, reason
        self.host_timer.stop()
        print(f"Stopping: {reason}; the run is stopped and the dialog closes.", file=sys.stderr)
        self.close()

    def keep_with_host(self, window: dict[str, Any] | None) -> str:
        """Stay above the host's window: transient for it where the platform allows, else on top.

        Returns how ("transient", "on top", or "" for a dialog with no host).
        """
        if window is None and self.source.host_pid is None:
            return ""
        native = {"x11": "xcb", "windows": "windows"}.get(str((window or {}).get("system")))
        parent = None
        if native is not None and native == QGuiApplication.platformName():
            with contextlib.suppress(TypeError, ValueError, OverflowError):
                parent = QWindow.fromWinId(int(window["id"]))  # type: ignore[index]
        if parent is not None:
            self.winId()  # the native window exists from here on
            handle = self.windowHandle()
            if handle is not None:
                handle.setTransientParent(parent)
                self._host_window = parent  # kept alive with the dialog
                return "transient"
        self.setWindowFlag(Qt.WindowType.WindowStaysOnTopHint, True)
        return "on top"

    def offer_undelivered(self, kept: Undelivered) -> None:
        """A finished result that never reached the image: add it now, or let it go."""
        when = time.strftime("%d %b %H:%M", time.localtime(kept.finished))
        seed = f", seed {kept.seed}" if kept.seed is not None else ""
        self.banner.show_message(
            f"The result of an earlier run on this image ({kept.what}{seed}, finished {when}) was never "
            "added: the plug-in ended or the image was closed first.",
            error=False,
            actions=[
                ("&Add that result", lambda: self._adopt(kept)),
                ("&Discard it", lambda: self._discard(kept)),
            ],
        )

    def _adopt(self, kept: Undelivered) -> None:
        if self.source.adopt is None or self._run is not None:
            return
        try:
            self.source.adopt(kept)
        except (OSError, ValueError, ClientError) as exc:
            self.banner.show_message(f"That result could not be read ({exc}); it was discarded.")
            self._discard(kept, quiet=True)
            return
        self.progress_label.setText(f"Added the earlier result ({kept.what}).")
        self.done(QDialog.DialogCode.Accepted)

    def _discard(self, kept: Undelivered, quiet: bool = False) -> None:
        shutil.rmtree(kept.folder, ignore_errors=True)
        self.source.undelivered = None
        if not quiet:
            self.banner.hide()

    def reject(self) -> None:
        """Esc and Cancel: stop a run if one is going, else close without a result."""
        if self._run is not None:
            self.stop_run()
            return
        self.done(QDialog.DialogCode.Rejected)

    def closeEvent(self, event: QCloseEvent) -> None:
        if self._run is not None:
            self._close_when_stopped = True
            self.stop_run()
            event.ignore()
            return
        super().closeEvent(event)

    def done(self, result: int) -> None:
        if not self._ending:
            self._ending = True
            self.health_timer.stop()
            self.start_timer.stop()
            self.host_timer.stop()
            self.estimate_timer.stop()
            self._save()
            self.workers.stop_all()
            scratch = self.source.scratch
            if self.host_gone and scratch is not None and not (scratch / "answer.json").exists():
                shutil.rmtree(scratch, ignore_errors=True)  # nobody is left to remove it
        super().done(result)

    def _save(self) -> None:
        self.store.put(self.task, self.values())
        self.store.put_window(
            geometry=bytes(self.saveGeometry().toBase64().data()).decode("ascii"),
            advanced=self.controls.advanced.is_open,
            splitter=bytes(self.splitter.saveState().toBase64().data()).decode("ascii"),
        )
        try:
            self.store.save()
        except OSError as exc:
            print(f"Could not save the dialog's settings to {self.store.path}: {exc}", file=sys.stderr)

    def _restore_window(self) -> None:
        window = self.store.window
        if isinstance(window.get("geometry"), str):
            self.restoreGeometry(QByteArray.fromBase64(window["geometry"].encode("ascii")))
        if isinstance(window.get("splitter"), str):
            self.splitter.restoreState(QByteArray.fromBase64(window["splitter"].encode("ascii")))
        self.controls.advanced.set_open(bool(window.get("advanced", False)))
