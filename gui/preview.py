"""The two picture widgets: the whole image with a movable crop, and a before/after split view.

Both draw with the palette's roles (no fixed colours, so dark themes work) and scale their
pictures to whatever size the layout gives them (so high-DPI screens work).
"""

from __future__ import annotations

from PySide6.QtCore import QPointF, QRect, QRectF, QSize, Qt, Signal
from PySide6.QtGui import (
    QColor,
    QImage,
    QKeyEvent,
    QMouseEvent,
    QPainter,
    QPainterPath,
    QPaintEvent,
    QPalette,
    QPen,
)
from PySide6.QtWidgets import QApplication, QSizePolicy, QWidget

from backend.face_box import Face

from .imaging import Rect


def fit(size: QSize, area: QRect) -> QRectF:
    """The largest rectangle of ``size``'s aspect that fits in ``area``, centred."""
    if size.isEmpty() or area.isEmpty():
        return QRectF()
    factor = min(area.width() / size.width(), area.height() / size.height())
    w, h = size.width() * factor, size.height() * factor
    return QRectF(area.x() + (area.width() - w) / 2, area.y() + (area.height() - h) / 2, w, h)


def _shade(widget: QWidget) -> QColor:
    """A translucent darkening that reads on light and dark themes alike."""
    colour = QColor(widget.palette().color(QPalette.ColorRole.Shadow))
    colour.setAlpha(120)
    return colour


def _draw_tag(painter: QPainter, widget: QWidget, text: str, anchor: QPointF, right: bool) -> None:
    """A small caption on a translucent plate in the window colours."""
    metrics = painter.fontMetrics()
    pad = metrics.height() / 4
    width = metrics.horizontalAdvance(text) + 2 * pad
    x = anchor.x() - width if right else anchor.x()
    plate = QRectF(x, anchor.y(), width, metrics.height() + pad)
    background = QColor(widget.palette().color(QPalette.ColorRole.Window))
    background.setAlpha(200)
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(background)
    painter.drawRoundedRect(plate, pad, pad)
    painter.setPen(widget.palette().color(QPalette.ColorRole.WindowText))
    painter.drawText(plate, Qt.AlignmentFlag.AlignCenter, text)


class CropView(QWidget):
    """The image (a thumbnail) with the preview crop drawn on it; drag or use the arrow keys to move it.

    Faces found in the image are outlined as the ellipses the backend uses and numbered as in the
    faces list; a click on one (without dragging) switches it on or off.
    """

    cropChanged = Signal(object)  # Rect, in input pixels
    faceClicked = Signal(int)  # the face's index in the list

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._image = QImage()
        self._overlay = QImage()
        self._size = QSize(0, 0)  # the input's size in pixels (the thumbnail may be smaller)
        self._crop = Rect(0, 0, 0, 0)
        self._grab: QPointF | None = None  # where in the crop the pointer holds it
        self._faces: tuple[Face, ...] = ()
        self._faces_on: tuple[bool, ...] = ()
        self._faces_used = False  # the Foreground choice gives the faces that are on their fidelity
        self._face_press: tuple[int, QPointF] | None = None  # a press on a face: a click, or a drag
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMouseTracking(True)
        self.setToolTip(
            "The whole image. The frame is the part the Preview button runs; drag it, click "
            "elsewhere, or move it with the arrow keys (Shift: faster). Tinted: the selection. "
            "Ellipses: the faces found; click one to switch it on or off (dashed: off)."
        )

    # ------------------------------------------------------------------ content
    def set_image(self, thumbnail: QImage, width: int, height: int, overlay: QImage | None = None) -> None:
        self._image = thumbnail
        self._overlay = overlay or QImage()
        self._size = QSize(width, height)
        self.update()

    @property
    def crop(self) -> Rect:
        return self._crop

    def set_crop(self, rect: Rect) -> None:
        rect = rect.clamped(self._size.width(), self._size.height())
        if rect != self._crop:
            self._crop = rect
            self.update()
            self.cropChanged.emit(rect)

    def set_faces(self, faces: tuple[Face, ...], on: tuple[bool, ...], used: bool) -> None:
        """The faces to outline, which are on, and whether the foreground uses them now."""
        if (faces, on, used) != (self._faces, self._faces_on, self._faces_used):
            self._faces, self._faces_on, self._faces_used = faces, on, used
            self.update()

    @property
    def faces(self) -> tuple[Face, ...]:
        return self._faces

    @property
    def faces_on(self) -> tuple[bool, ...]:
        return self._faces_on

    @property
    def faces_used(self) -> bool:
        return self._faces_used

    def image_on_screen(self) -> QRectF:
        """Where the image is drawn (widget coordinates)."""
        return self._target()

    def face_on_screen(self, index: int) -> QRectF:
        """The face's ellipse, as the rectangle it is drawn in (widget coordinates)."""
        target = self._target()
        if target.isEmpty() or not 0 <= index < len(self._faces):
            return QRectF()
        factor = target.width() / self._size.width()
        cx, cy, rx, ry = self._faces[index].ellipse()
        return QRectF(
            target.x() + (cx - rx) * factor, target.y() + (cy - ry) * factor, 2 * rx * factor, 2 * ry * factor
        )

    def face_at(self, point: QPointF) -> int | None:
        """The face under a widget point (the smallest, where ellipses overlap)."""
        at = self._to_image(point)
        hits = [i for i, face in enumerate(self._faces) if face.contains(at.x(), at.y())]
        return min(hits, key=lambda i: self._faces[i].width * self._faces[i].height) if hits else None

    def sizeHint(self) -> QSize:
        return QSize(360, 260)

    def minimumSizeHint(self) -> QSize:
        return QSize(120, 90)

    # ------------------------------------------------------------------ geometry
    def _target(self) -> QRectF:
        return fit(self._size, self.contentsRect().adjusted(2, 2, -2, -2))

    def _to_image(self, point: QPointF) -> QPointF:
        target = self._target()
        if target.isEmpty():
            return QPointF()
        factor = self._size.width() / target.width()
        return QPointF((point.x() - target.x()) * factor, (point.y() - target.y()) * factor)

    def crop_on_screen(self) -> QRectF:
        target = self._target()
        if target.isEmpty():
            return QRectF()
        factor = target.width() / self._size.width()
        c = self._crop
        return QRectF(
            target.x() + c.x * factor, target.y() + c.y * factor, c.width * factor, c.height * factor
        )

    # ------------------------------------------------------------------ input
    def mousePressEvent(self, event: QMouseEvent) -> None:
        if event.button() != Qt.MouseButton.LeftButton or self._size.isEmpty():
            return
        face = self.face_at(event.position())
        if face is not None:  # a click switches the face; a drag from it still moves the frame
            self._face_press = (face, event.position())
            return
        self._press(event.position())

    def _press(self, position: QPointF) -> None:
        at = self._to_image(position)
        c = self._crop
        if not (c.x <= at.x() < c.x + c.width and c.y <= at.y() < c.y + c.height):
            self.set_crop(c.centered_on(at.x(), at.y()))  # a click elsewhere brings the crop there
            c = self._crop
        self._grab = QPointF(at.x() - c.x, at.y() - c.y)
        self.setCursor(Qt.CursorShape.ClosedHandCursor)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        if self._face_press is not None:
            start = self._face_press[1]
            if (event.position() - start).manhattanLength() < QApplication.startDragDistance():
                return
            self._face_press = None
            self._press(start)
        at = self._to_image(event.position())
        if self._grab is not None:
            c = self._crop
            self.set_crop(
                Rect(round(at.x() - self._grab.x()), round(at.y() - self._grab.y()), c.width, c.height)
            )
            return
        c = self._crop
        inside = c.x <= at.x() < c.x + c.width and c.y <= at.y() < c.y + c.height
        if self.face_at(event.position()) is not None:
            self.setCursor(Qt.CursorShape.PointingHandCursor)
        else:
            self.setCursor(Qt.CursorShape.OpenHandCursor if inside else Qt.CursorShape.CrossCursor)

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if self._face_press is not None:
            face, self._face_press = self._face_press[0], None
            self.faceClicked.emit(face)
            return
        self._grab = None
        self.setCursor(Qt.CursorShape.OpenHandCursor)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        step = 64 if event.modifiers() & Qt.KeyboardModifier.ShiftModifier else 8
        moves = {
            Qt.Key.Key_Left: (-step, 0),
            Qt.Key.Key_Right: (step, 0),
            Qt.Key.Key_Up: (0, -step),
            Qt.Key.Key_Down: (0, step),
        }
        move = moves.get(Qt.Key(event.key()))
        if move is None:
            super().keyPressEvent(event)
            return
        c = self._crop
        self.set_crop(Rect(c.x + move[0], c.y + move[1], c.width, c.height))

    # ------------------------------------------------------------------ drawing
    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        target = self._target()
        if self._image.isNull() or target.isEmpty():
            painter.setPen(self.palette().color(QPalette.ColorRole.PlaceholderText))
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "No image")
            return
        painter.drawImage(target, self._image)
        if not self._overlay.isNull():
            painter.drawImage(target, self._overlay)
        crop = self.crop_on_screen()
        # Darken what the preview leaves out, so the crop stands out on any picture.
        outside = QPainterPath()
        outside.setFillRule(Qt.FillRule.OddEvenFill)
        outside.addRect(target)
        outside.addRect(crop)
        painter.fillPath(outside, _shade(self))
        pen = QPen(self.palette().color(QPalette.ColorRole.Highlight), 2)
        pen.setCosmetic(True)
        painter.setPen(pen)
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.drawRect(crop)
        self._draw_faces(painter)
        painter.setBrush(Qt.BrushStyle.NoBrush)  # the tags' plates leave theirs set
        if self.hasFocus():
            painter.setPen(QPen(self.palette().color(QPalette.ColorRole.Highlight), 1, Qt.PenStyle.DotLine))
            painter.drawRect(QRectF(self.rect()).adjusted(0.5, 0.5, -0.5, -0.5))

    def _draw_faces(self, painter: QPainter) -> None:
        """Each face's ellipse on a light halo (readable on any picture, and unlike the frame): solid in
        the highlight colour when it gets the foreground fidelity, dashed when it is off or unused."""
        halo = QColor(self.palette().color(QPalette.ColorRole.HighlightedText))
        halo.setAlpha(170)
        for index in range(len(self._faces)):
            rect = self.face_on_screen(index)
            on = index < len(self._faces_on) and self._faces_on[index]
            active = on and self._faces_used
            painter.setBrush(Qt.BrushStyle.NoBrush)
            shadow = QPen(halo, 4)
            shadow.setCosmetic(True)
            painter.setPen(shadow)
            painter.drawEllipse(rect)
            role = QPalette.ColorRole.Highlight if on else QPalette.ColorRole.Light
            pen = QPen(self.palette().color(role), 2 if active else 1.5)
            pen.setCosmetic(True)
            if not active:
                pen.setStyle(Qt.PenStyle.DashLine)
            painter.setPen(pen)
            painter.drawEllipse(rect)
            # The number sits just outside the ellipse's upper left (its 45° point, 1/√8 of each side).
            rim = rect.center() - QPointF(rect.width(), rect.height()) * 0.354
            lift = painter.fontMetrics().height() * 1.25
            _draw_tag(painter, self, str(index + 1), QPointF(rim.x(), rim.y() - lift), right=True)


class SplitView(QWidget):
    """Before on the left of a line, after on the right; drag the line (or use the arrow keys)."""

    splitChanged = Signal(float)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._before = QImage()
        self._after = QImage()
        self._labels = ("Before", "After")
        self._placeholder = "Press Preview to see the result on the framed part."
        self._split = 0.5
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setCursor(Qt.CursorShape.SplitHCursor)
        self.setToolTip(
            "The framed part before and after the run, at the output size. Drag the line (or use "
            "the arrow keys) to compare."
        )

    # ------------------------------------------------------------------ content
    @property
    def before(self) -> QImage:
        return self._before

    @property
    def after(self) -> QImage:
        return self._after

    @property
    def split(self) -> float:
        return self._split

    @property
    def labels(self) -> tuple[str, str]:
        return self._labels

    def set_before(self, image: QImage | None) -> None:
        self._before = image if image is not None else QImage()
        self.update()

    def set_after(self, image: QImage | None, label: str = "After") -> None:
        self._after = image if image is not None else QImage()
        self._labels = (self._labels[0], label)
        self.update()

    @property
    def after_label(self) -> str:
        return self._labels[1]

    def set_after_label(self, label: str) -> None:
        self._labels = (self._labels[0], label)
        self.update()

    def set_placeholder(self, text: str) -> None:
        self._placeholder = text
        self.update()

    def set_split(self, value: float) -> None:
        value = min(max(value, 0.0), 1.0)
        if value != self._split:
            self._split = value
            self.update()
            self.splitChanged.emit(value)

    def sizeHint(self) -> QSize:
        return QSize(360, 300)

    def minimumSizeHint(self) -> QSize:
        return QSize(120, 90)

    # ------------------------------------------------------------------ geometry and input
    def _target(self) -> QRectF:
        shown = self._before if not self._before.isNull() else self._after
        return fit(shown.size(), self.contentsRect().adjusted(2, 2, -2, -2))

    def _split_at(self, x: float) -> None:
        target = self._target()
        if target.width() > 0:
            self.set_split((x - target.x()) / target.width())

    def mousePressEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.LeftButton:
            self._split_at(event.position().x())

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        if event.buttons() & Qt.MouseButton.LeftButton:
            self._split_at(event.position().x())

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() in (Qt.Key.Key_Left, Qt.Key.Key_Right):
            step = 0.1 if event.modifiers() & Qt.KeyboardModifier.ShiftModifier else 0.02
            self.set_split(self._split + (step if event.key() == Qt.Key.Key_Right else -step))
        else:
            super().keyPressEvent(event)

    # ------------------------------------------------------------------ drawing
    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        target = self._target()
        if target.isEmpty():
            painter.setPen(self.palette().color(QPalette.ColorRole.PlaceholderText))
            painter.drawText(
                self.contentsRect().adjusted(8, 8, -8, -8),
                Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap,
                self._placeholder,
            )
            return
        line_x = target.x() + target.width() * self._split
        for image, side in (
            (self._before, QRectF(target.x(), target.y(), line_x - target.x(), target.height())),
            (self._after, QRectF(line_x, target.y(), target.right() - line_x, target.height())),
        ):
            if image.isNull():
                continue
            # Enlarged pictures show their pixels (the detail the run made); reduced ones are smoothed.
            smooth = target.width() < image.width()
            painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, smooth)
            painter.save()
            painter.setClipRect(side)
            painter.drawImage(target, image)
            painter.restore()
        if self._after.isNull():
            painter.save()
            painter.setClipRect(QRectF(line_x, target.y(), target.right() - line_x, target.height()))
            painter.fillRect(target, _shade(self))
            painter.restore()
        pen = QPen(self.palette().color(QPalette.ColorRole.Highlight), 2)
        pen.setCosmetic(True)
        painter.setPen(pen)
        painter.drawLine(QPointF(line_x, target.top()), QPointF(line_x, target.bottom()))
        radius = painter.fontMetrics().height() / 2
        painter.setBrush(self.palette().color(QPalette.ColorRole.Highlight))
        painter.drawEllipse(QPointF(line_x, target.center().y()), radius / 2, radius)
        margin = radius / 2
        _draw_tag(
            painter, self, self._labels[0], QPointF(target.x() + margin, target.y() + margin), right=False
        )
        _draw_tag(
            painter, self, self._labels[1], QPointF(target.right() - margin, target.y() + margin), right=True
        )
