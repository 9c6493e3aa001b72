"""Small composite widgets of the dialog: backend status line, message banner, slider with number,
and a fold-out section. Sizes come from the style and fonts, colours from the palette."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFontDatabase, QPalette
from PySide6.QtWidgets import (
    QDoubleSpinBox,
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QSlider,
    QStyle,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from backend.client import Health


def format_bytes(n: float) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 1024:.0f} KB"


def free_memory(health: Health) -> str:
    """The memory that limits a run: the accelerator's when there is one, else the system's."""
    memory = health.memory or {}
    device = memory.get("device_free_bytes")
    if device is not None:
        return f"{format_bytes(device)} free on the device"
    available = memory.get("available_bytes")
    return f"{format_bytes(available)} memory free" if available is not None else "memory unknown"


class StatusLine(QFrame):
    """Where the backend stands: connecting, connected, starting, unreachable (with Start and the log)."""

    startClicked = Signal()
    restartClicked = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = "connecting"
        self.icon = QLabel()
        self.text = QLabel()
        self.text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.text.setWordWrap(True)
        self.text.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.start = QPushButton("&Start backend")
        self.start.setAutoDefault(False)
        self.start.setToolTip(
            "Start the diffusion backend on this computer (it keeps running for the next use)."
        )
        self.start.clicked.connect(self.startClicked)
        self.restart = QPushButton("&Restart backend")
        self.restart.setAutoDefault(False)
        self.restart.setToolTip(
            "Stop the backend on this computer and start it again, e.g. after the installer changed its "
            "settings or the model folder (a running job is stopped)."
        )
        self.restart.clicked.connect(self.restartClicked)
        self.restart.setVisible(False)
        self.log = QLabel()
        self.log.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.log.setWordWrap(True)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.icon)
        row.addWidget(self.text, 1)
        row.addWidget(self.start)
        row.addWidget(self.restart)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.log)
        self.connecting("")

    def _show(self, state: str, icon: QStyle.StandardPixmap, text: str, start: bool, log: str | None) -> None:
        self.state = state
        size = self.style().pixelMetric(QStyle.PixelMetric.PM_SmallIconSize)
        self.icon.setPixmap(self.style().standardIcon(icon).pixmap(size, size))
        self.text.setText(text)
        self.start.setVisible(start)
        self.restart.setVisible(False)
        self.log.setVisible(bool(log))
        self.log.setText(f"Log: {log}" if log else "")

    def connecting(self, url: str) -> None:
        self._show(
            "connecting",
            QStyle.StandardPixmap.SP_BrowserReload,
            f"Connecting to the backend at {url}…",
            False,
            None,
        )

    def connected(self, health: Health, url: str) -> None:
        model = f", model {health.loaded_model} loaded" if health.loaded_model else ""
        self._show(
            "connected",
            QStyle.StandardPixmap.SP_DialogApplyButton,
            f"Connected: {health.device}, {free_memory(health)}{model}",
            False,
            None,
        )
        queue = health.queue or {}
        self.setToolTip(
            f"Backend {health.version} at {url}\nPrecision: {health.dtype}\n"
            f"Jobs queued: {queue.get('queued', 0)}, running: {queue.get('running', 0)}\n"
            f"Log: {health.log_file or 'unknown'}"
        )

    def starting(self, url: str, seconds: float, log: str) -> None:
        wait = f" ({seconds:.0f} s)" if seconds >= 1 else ""
        self._show(
            "starting",
            QStyle.StandardPixmap.SP_BrowserReload,
            f"Starting the backend at {url}…{wait}",
            False,
            log,
        )
        self.start.setVisible(True)
        self.start.setEnabled(False)

    def unreachable(self, url: str, detail: str, log: str, can_start: bool) -> None:
        text = f"Backend unreachable at {url}."
        if detail:
            text += f" {detail}"
        self._show("unreachable", QStyle.StandardPixmap.SP_MessageBoxWarning, text, can_start, log)
        self.start.setEnabled(True)


class Banner(QFrame):
    """A message in plain words above the controls (errors, notes), until closed or replaced.

    ``details`` (a program's own last lines) show below it in a fixed-width font, and ``actions``
    as buttons beside it (an offer the user can take or turn down).
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setAutoFillBackground(True)
        self.setBackgroundRole(QPalette.ColorRole.AlternateBase)
        self.icon = QLabel()
        self.icon.setAlignment(Qt.AlignmentFlag.AlignTop)
        self.text = QLabel()
        self.text.setWordWrap(True)
        self.text.setTextFormat(Qt.TextFormat.PlainText)  # never renders what a server sent as HTML
        self.text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.text.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.details = QLabel()
        self.details.setTextFormat(Qt.TextFormat.PlainText)
        self.details.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.details.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.details.setWordWrap(True)
        self.after = QLabel()
        self.after.setWordWrap(True)
        self.after.setTextFormat(Qt.TextFormat.PlainText)
        self.after.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.action_row = QHBoxLayout()
        self.action_row.setContentsMargins(0, 0, 0, 0)
        self.action_row.addStretch(1)
        self.buttons: list[QPushButton] = []
        close = QToolButton()
        close.setAutoRaise(True)
        close.setIcon(self.style().standardIcon(QStyle.StandardPixmap.SP_TitleBarCloseButton))
        close.setToolTip("Hide this message")
        close.clicked.connect(self.hide)
        body = QVBoxLayout()
        body.setContentsMargins(0, 0, 0, 0)
        body.addWidget(self.text)
        body.addWidget(self.details)
        body.addWidget(self.after)
        body.addLayout(self.action_row)
        layout = QHBoxLayout(self)
        layout.addWidget(self.icon, 0, Qt.AlignmentFlag.AlignTop)
        layout.addLayout(body, 1)
        layout.addWidget(close, 0, Qt.AlignmentFlag.AlignTop)
        self.hide()

    def show_message(
        self,
        text: str,
        error: bool = True,
        details: list[str] | None = None,
        after: str = "",
        actions: list[tuple[str, Callable[[], None]]] | None = None,
    ) -> None:
        icon = (
            QStyle.StandardPixmap.SP_MessageBoxCritical
            if error
            else QStyle.StandardPixmap.SP_MessageBoxInformation
        )
        size = self.style().pixelMetric(QStyle.PixelMetric.PM_SmallIconSize)
        self.icon.setPixmap(self.style().standardIcon(icon).pixmap(size, size))
        self.text.setText(text)
        self.details.setText("\n".join(details or []))
        self.details.setVisible(bool(details))
        self.after.setText(after)
        self.after.setVisible(bool(after))
        for button in self.buttons:
            self.action_row.removeWidget(button)
            button.deleteLater()
        self.buttons = []
        for label, callback in actions or []:
            button = QPushButton(label)
            button.setAutoDefault(False)
            button.clicked.connect(callback)
            self.action_row.addWidget(button)
            self.buttons.append(button)
        self.show()

    @property
    def message(self) -> str:
        if not self.isVisible():
            return ""
        return "\n".join(w.text() for w in (self.text, self.details, self.after) if w.text())


class SliderNumber(QWidget):
    """A slider for quick setting and a number box for exact values, kept in step."""

    valueChanged = Signal(float)

    def __init__(
        self, low: float, high: float, step: float, decimals: int = 2, parent: QWidget | None = None
    ):
        super().__init__(parent)
        self._factor = 10**decimals  # slider units: the number box's last decimal
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(round(low * self._factor), round(high * self._factor))
        self.slider.setSingleStep(round(step * self._factor))
        self.slider.setPageStep(round(0.25 * (high - low) * self._factor) or 1)
        self.slider.setTickPosition(QSlider.TickPosition.TicksBelow)
        self.slider.setTickInterval(round(0.5 * self._factor) or 1)
        self.number = QDoubleSpinBox()
        self.number.setRange(low, high)
        self.number.setSingleStep(step)
        self.number.setDecimals(decimals)
        self.number.setKeyboardTracking(False)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.slider, 1)
        layout.addWidget(self.number)
        self.slider.valueChanged.connect(lambda v: self.number.setValue(v / self._factor))
        self.number.valueChanged.connect(self._number_changed)

    def _number_changed(self, value: float) -> None:
        self.slider.blockSignals(True)
        self.slider.setValue(round(value * self._factor))
        self.slider.blockSignals(False)
        self.valueChanged.emit(value)

    def value(self) -> float:
        return round(self.number.value(), self.number.decimals())

    def setValue(self, value: float) -> None:
        self.number.setValue(value)

    def setToolTip(self, text: str) -> None:
        super().setToolTip(text)
        self.slider.setToolTip(text)
        self.number.setToolTip(text)


class Fold(QWidget):
    """A titled section that folds away (the Advanced settings)."""

    toggled = Signal(bool)

    def __init__(self, title: str, content: QWidget, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.button = QToolButton()
        self.button.setText(title)
        self.button.setCheckable(True)
        self.button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.button.setAutoRaise(True)
        self.button.toggled.connect(self.set_open)
        self.content = content
        line = QFrame()
        line.setFrameShape(QFrame.Shape.HLine)
        line.setFrameShadow(QFrame.Shadow.Sunken)
        head = QHBoxLayout()
        head.setContentsMargins(0, 0, 0, 0)
        head.addWidget(self.button)
        head.addWidget(line, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(head)
        layout.addWidget(content)
        self.set_open(False)

    @property
    def is_open(self) -> bool:
        return self.button.isChecked()

    def set_open(self, open_: bool) -> None:
        self.button.blockSignals(True)
        self.button.setChecked(open_)
        self.button.blockSignals(False)
        self.button.setArrowType(Qt.ArrowType.DownArrow if open_ else Qt.ArrowType.RightArrow)
        self.content.setVisible(open_)
        self.toggled.emit(open_)
