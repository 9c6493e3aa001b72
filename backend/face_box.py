"""A face's box and the soft ellipse the foreground makes of it.

Standard library only: the dialog (which never loads torch) outlines exactly the region the backend
gives the foreground fidelity, and the client returns the same type the detector makes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# A face box from a detector spans brows to chin and cheek to cheek; the region that should keep
# the face's identity also holds the forehead, the jaw line and the ears' edge.
FACE_WIDEN = 0.62  # ellipse half-width per box width
FACE_HEIGHTEN = 0.80  # ellipse half-height per box height
FACE_LIFT = 0.08  # centre raised by this much of the box height (the forehead)
FACE_FEATHER = 0.25  # soft edge, as a fraction of the ellipse's radius (half inside, half outside)
LIMIT = 1 << 20  # no picture is a million pixels wide; bigger numbers are an attack or a mistake


def face_ellipse(x: float, y: float, width: float, height: float) -> tuple[float, float, float, float]:
    """Centre x, y and half-axes of a box's face region (before its soft edge), in the box's pixels."""
    return (
        x + width / 2.0,
        y + height / 2.0 - FACE_LIFT * height,
        max(0.5, FACE_WIDEN * width),
        max(0.5, FACE_HEIGHTEN * height),
    )


@dataclass(frozen=True)
class Face:
    """A face's box in the picture's pixels, how sure the detector is (0–1) and how it was found."""

    x: int
    y: int
    width: int
    height: int
    score: float = 1.0
    kind: str = "frontal"  # "frontal" | "profile" | "given" (boxes chosen by the user)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Face:
        """From a face as ``POST /v1/faces`` lists it."""
        return cls(
            int(data["x"]),
            int(data["y"]),
            int(data["width"]),
            int(data["height"]),
            float(data.get("score", 1.0)),
            str(data.get("kind", "frontal")),
        )

    @classmethod
    def from_box(cls, box: Any, kind: str = "given") -> Face:
        """From ``[x, y, width, height]`` (JSON) with whole, positive sizes."""
        if isinstance(box, dict):
            box = [box.get(k) for k in ("x", "y", "width", "height")]
        if not isinstance(box, (list, tuple)) or len(box) != 4:
            raise ValueError("a face box is [x, y, width, height]")
        if any(isinstance(v, bool) or not isinstance(v, int) for v in box):
            raise ValueError(f"a face box holds whole numbers, not {box!r}")
        x, y, w, h = box
        if w < 1 or h < 1 or abs(x) > LIMIT or abs(y) > LIMIT or w > LIMIT or h > LIMIT:
            raise ValueError(f"a face box needs a positive width and height, not {box!r}")
        return cls(x, y, w, h, 1.0, kind)

    def box(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.width, self.height)

    def moved(self, dx: int, dy: int) -> Face:
        return Face(self.x + dx, self.y + dy, self.width, self.height, self.score, self.kind)

    def ellipse(self) -> tuple[float, float, float, float]:
        """Centre x, y and half-axes: the region that gets the foreground fidelity."""
        return face_ellipse(self.x, self.y, self.width, self.height)

    def contains(self, x: float, y: float) -> bool:
        cx, cy, rx, ry = self.ellipse()
        return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0
