"""What moving pixels to the server and back costs, with no model work: 4096×4096 RGBA, 8 and 16 bit.

The plug-in sends a whole layer before every run and fetches a result of the same kind, so the
transfer itself must stay well under a second at this size, even as 16-bit (128 MiB). Each
repeat uploads the pixels through the client (``Client.upload(RawImage)``, an ``.npy`` stream),
downloads them again (``Client.image_pixels``), checks that every byte came back unchanged and
deletes the upload. Best and median of the repeats are shown; the run fails when the median
round trip misses the target, or when any byte differs.

    python bench/transfer.py [--side 4096] [--repeats 5] [--target 1.0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.client import Client, RawImage  # noqa: E402
from tests.service_server import ServerProcess  # noqa: E402


def pixels(side: int, dtype: str, seed: int) -> np.ndarray:
    """Random RGBA pixels: nothing compresses or repeats, every byte is checked on the way back."""
    top = np.iinfo(dtype).max
    return np.random.default_rng(seed).integers(0, top, (side, side, 4), dtype=dtype, endpoint=True)


def round_trips(client: Client, array: np.ndarray, repeats: int) -> tuple[list[float], list[float], bool]:
    h, w, c = array.shape
    image = RawImage(w, h, c, str(array.dtype), array.data)
    uploads, downloads, identical = [], [], True
    for _ in range(repeats):
        start = time.perf_counter()
        info = client.upload(image)
        uploads.append(time.perf_counter() - start)
        start = time.perf_counter()
        back = client.image_pixels(info.id)
        downloads.append(time.perf_counter() - start)
        got = (back.width, back.height, back.channels, back.dtype, info.bytes >= array.nbytes)
        identical &= got == (w, h, c, str(array.dtype), True)
        identical &= np.array_equal(np.frombuffer(back.data, array.dtype).reshape(array.shape), array)
        del back
        client.delete_image(info.id)
    return uploads, downloads, identical


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--target", type=float, default=1.0, help="seconds a round trip may take (median)")
    parser.add_argument("--url", help="a running server to use instead of starting one")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="transfer-") as tmp:
        # One server secret for the servers started here and their clients (not the user's own).
        os.environ["GDU_SECRET_FILE"] = str(Path(tmp) / "server-secret")
        server = None
        if args.url is None:
            home = Path(tmp)
            (home / "models").mkdir()  # no model: nothing here runs one
            server = ServerProcess(home / "models", home, "--max-megapixels", str(args.side**2 / 1e6 + 1))
            server.start()
            deadline = time.monotonic() + 30
            while not server.healthy():  # "Serving on" comes a moment before the socket listens
                if time.monotonic() > deadline:
                    raise RuntimeError("server does not answer:\n" + server.output)
                time.sleep(0.01)
        client = Client(server.url if server else args.url, timeout=120)
        try:
            client.upload(RawImage(1, 1, 4, "uint8", bytes(4)))  # first connection, imports
            for seed, dtype in enumerate(("uint8", "uint16")):
                array = pixels(args.side, dtype, seed)
                print(f"… {args.side}² RGBA {dtype}", file=sys.stderr, flush=True)
                up, down, same = round_trips(client, array, args.repeats)
                rows.append((f"{args.side}×{args.side} RGBA {dtype}", array.nbytes / 2**20, up, down, same))
        finally:
            if server is not None:
                server.stop()

    def best_median(values: list[float]) -> str:
        return f"{min(values):.2f} / {statistics.median(values):.2f}"

    print(f"\nTransfer through the client on loopback, {args.repeats} repeats (best / median seconds)")
    columns = ("image", "MB", "upload s", "download s", "round trip s", "MB/s (median)", "identical")
    print("| " + " | ".join(columns) + f" | target (<{args.target:g} s) |")
    print("|---|" + "---:|" * (len(columns) - 2) + "---|---|")
    ok = True
    for name, mb, up, down, same in rows:
        trips = [u + d for u, d in zip(up, down, strict=True)]
        median = statistics.median(trips)
        meets = median < args.target
        ok &= meets and same
        cells = (name, f"{mb:.0f}", best_median(up), best_median(down), best_median(trips))
        cells += (f"{2 * mb / median:.0f}", "yes" if same else "NO", "meets" if meets else "MISSES")
        print("| " + " | ".join(cells) + " |")
    print("\nround trip = upload + download; MB counts the pixels, once each way")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
