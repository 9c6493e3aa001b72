"""Faces in the input: found by the backend, outlined on the image, switched on and off in a list.

The faces that are on are sent as ``face_boxes`` (the whole image's pixels), for previews and Apply
alike, so a framed preview gives its faces the fidelity Apply gives them. The outline is the ellipse
the backend makes of a box (``backend/face_box.py``, shared with the backend's mask).
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QLabel, QListWidget, QListWidgetItem, QSizePolicy, QVBoxLayout, QWidget

from backend.face_box import Face

LIST_ROWS = 3  # rows the list shows before it scrolls

SEARCHING = "Looking for faces…"
NONE_FOUND = "No faces found"
UNAVAILABLE = "Face detection is not available on this backend"


def face_label(face: Face, number: int) -> str:
    return f"Face {number} ({face.width}×{face.height})"


class FacesPanel(QWidget):
    """The faces as a checkable list ("Face 1 (95×95)"), or a line saying why there is none.

    Faces switched off stay off while the dialog is open (the list is filled once per image).
    """

    changed = Signal()  # a face was switched on or off, or the faces arrived

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = "waiting"  # waiting | searching | found | none | unavailable | failed
        self.faces: tuple[Face, ...] = ()
        self.list = QListWidget()
        self.list.setToolTip(
            "The faces found in the image, numbered as on the picture. Ticked faces get the foreground "
            "fidelity (see Foreground); untick a face, or click its outline on the picture, to leave "
            "it to the background fidelity."
        )
        self.list.itemChanged.connect(lambda _: self.changed.emit())
        self.list.hide()
        self.note = QLabel()
        self.note.setWordWrap(True)
        self.note.setForegroundRole(QPalette.ColorRole.PlaceholderText)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.list)
        layout.addWidget(self.note)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)  # no taller than needed
        self._status = "Faces are looked for once the backend is connected."
        self._hint = ""
        self._show_note()

    # ------------------------------------------------------------------ detection states
    def set_searching(self) -> None:
        self.state = "searching"
        self._status = SEARCHING
        self._show_note()

    def set_faces(self, faces: list[Face]) -> None:
        """The backend's answer: each face on, numbered from 1 in its order (largest first)."""
        self.faces = tuple(faces)
        self.state = "found" if faces else "none"
        self._status = "" if faces else NONE_FOUND
        self.list.blockSignals(True)
        self.list.clear()
        for number, face in enumerate(faces, 1):
            item = QListWidgetItem(face_label(face, number))
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked)
            item.setToolTip(
                f"At {face.x}, {face.y}; {face.kind} face, detector score {face.score:.2f}. Unticked: "
                "it gets the background fidelity."
            )
            self.list.addItem(item)
        self.list.blockSignals(False)
        if faces:
            rows = min(len(faces), LIST_ROWS)
            self.list.setFixedHeight(rows * self.list.sizeHintForRow(0) + 2 * self.list.frameWidth())
        self.list.setVisible(bool(faces))
        self._show_note()
        self.changed.emit()

    def set_unavailable(self, reason: str = "") -> None:
        """The backend cannot look for faces (older than face detection, or OpenCV missing there)."""
        self.state = "unavailable"
        self._status = UNAVAILABLE
        self.note.setToolTip(reason)
        self._show_note()
        self.changed.emit()

    def set_failed(self, reason: str) -> None:
        """Looking failed this time (the backend stopped answering): tried again once it is back."""
        self.state = "failed"
        self._status = f"Faces could not be looked for: {reason}"
        self._show_note()

    def set_hint(self, text: str) -> None:
        """What the faces do with the current Foreground choice (shown under the list)."""
        self._hint = text
        self._show_note()

    def _show_note(self) -> None:
        self.note.setText(self._status if self.state != "found" else self._hint)

    @property
    def status(self) -> str:
        return self.note.text()

    # ------------------------------------------------------------------ choosing
    def is_on(self, index: int) -> bool:
        item = self.list.item(index)
        return item is not None and item.checkState() == Qt.CheckState.Checked

    @property
    def on(self) -> tuple[bool, ...]:
        return tuple(self.is_on(i) for i in range(len(self.faces)))

    def set_on(self, index: int, on: bool) -> None:
        item = self.list.item(index)
        if item is not None:
            item.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)

    def toggle(self, index: int) -> None:
        if 0 <= index < len(self.faces) and self.list.isEnabled():
            self.set_on(index, not self.is_on(index))

    def chosen(self) -> tuple[Face, ...] | None:
        """The faces switched on; None until the backend has answered (the backend then looks itself)."""
        if self.state not in ("found", "none"):
            return None
        return tuple(face for i, face in enumerate(self.faces) if self.is_on(i))
