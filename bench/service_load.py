"""Many clients at once against one server: every job must succeed or be refused in plain words.

50 threads (one client each, on loopback) start together; each uploads its own small image,
submits one small job, waits for it and fetches the result. The queue takes the running job and
``--queue-size`` waiting ones (16 by default), so the rest get 429 "queue full". That is run
twice on a fresh server each time: once where a 429 is final (counted as a clear rejection), and
once where a client retries after a short wait, up to ``--retries`` times, so all of them should
finish. The server's resident memory is sampled every 0.2 s: its peak says what a burst of
clients costs, and start/end say whether anything stays behind.

    python bench/service_load.py [--clients 50] [--retries 60] [--retry-wait 1.0] [--queue-size 16]

Exits 1 if any job failed, was canceled, or any client met an error that is not a 4xx refusal.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.client import ApiError, Client, ClientError, JobCanceled, JobFailed, QueueFull, RawImage  # noqa: E402
from tests.service_server import RssSampler, ServerProcess  # noqa: E402

FAST = {"task": "upscale", "scale": 2, "steps": 2, "process_size": 256, "seed": 7}


@dataclass
class Outcome:
    kind: str  # succeeded | rejected-429 | rejected-4xx | failed | error
    detail: str = ""
    seconds: float = 0.0
    queue_full: int = 0  # 429 answers this client got (retried or not)


def one_client(
    url: str, index: int, size: int, retries: int, retry_wait: float, start: threading.Barrier
) -> Outcome:
    client = Client(url, timeout=120)
    rng = np.random.default_rng(index)
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    start.wait()
    began = time.perf_counter()
    queue_full = 0
    try:
        image = client.upload(RawImage(size, size, 3, "uint8", pixels.tobytes()))
        while True:
            try:
                job = client.submit(image.id, FAST)
                break
            except QueueFull as exc:
                queue_full += 1
                if queue_full > retries:
                    return Outcome("rejected-429", exc.detail, time.perf_counter() - began, queue_full)
                time.sleep(retry_wait)
        client.wait(job.id, interval=0.25)
        result = client.result_image(job.id)
        expected = (size * 2, size * 2, 3, "uint8")
        got = (result.width, result.height, result.channels, result.dtype)
        if got != expected:
            return Outcome("error", f"result is {got}, expected {expected}", time.perf_counter() - began)
        return Outcome("succeeded", "", time.perf_counter() - began, queue_full)
    except (JobFailed, JobCanceled) as exc:
        return Outcome("failed", str(exc), time.perf_counter() - began, queue_full)
    except ApiError as exc:
        kind = "rejected-4xx" if 400 <= exc.status < 500 and exc.detail.strip() else "error"
        return Outcome(kind, f"HTTP {exc.status}: {exc.detail}", time.perf_counter() - began, queue_full)
    except (ClientError, OSError, ValueError) as exc:
        return Outcome("error", f"{type(exc).__name__}: {exc}", time.perf_counter() - began, queue_full)


@dataclass
class Round:
    retries: int
    outcomes: list[Outcome]
    wall: float
    rss: list[float]  # MB, first sample before the clients start, last after they are done
    healthy: bool
    leftover: Counter[str]  # states of the jobs the server still lists

    @property
    def kinds(self) -> Counter[str]:
        return Counter(o.kind for o in self.outcomes)


def run_round(args: argparse.Namespace, models: Path, home: Path, retries: int) -> Round:
    serve_args = (
        "--queue-size",
        str(args.queue_size),
        "--max-megapixels",
        "4",
        "--max-output-megapixels",
        "4",
    )
    with ServerProcess(models, home, *serve_args) as server:
        deadline = time.monotonic() + 30
        while not server.healthy():  # "Serving on" comes a moment before the socket listens
            if time.monotonic() > deadline:
                raise RuntimeError("server does not answer:\n" + server.output)
            time.sleep(0.01)
        assert server.process is not None
        warm = server.client()
        warm.run(RawImage(8, 8, 3, "uint8", bytes(8 * 8 * 3)), FAST)  # loads the model
        barrier = threading.Barrier(args.clients, timeout=120)
        outcomes: list[Outcome | None] = [None] * args.clients

        def work(i: int) -> None:
            try:
                outcomes[i] = one_client(server.url, i, args.size, retries, args.retry_wait, barrier)
            except Exception as exc:  # a bug here must show in the table, not vanish with the thread
                outcomes[i] = Outcome("error", f"{type(exc).__name__}: {exc}")

        with RssSampler(server.process.pid, interval=0.2) as memory:
            began = time.perf_counter()
            threads = [threading.Thread(target=work, args=(i,)) for i in range(args.clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wall = time.perf_counter() - began
        healthy = server.healthy()
        leftover = Counter(j.state for j in warm.jobs())
    done = [o or Outcome("error", "no outcome") for o in outcomes]
    return Round(retries, done, wall, [rss / 2**20 for rss in memory.samples], healthy, leftover)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--size", type=int, default=32, help="image side, pixels (the job makes ×2)")
    parser.add_argument("--queue-size", type=int, default=16, help="the server's --queue-size")
    parser.add_argument("--retries", type=int, default=60, help="429 retries per client in the retry round")
    parser.add_argument("--retry-wait", type=float, default=1.0, help="seconds before a retry")
    parser.add_argument("--rounds", default="reject,retry", help="reject (429 is final), retry, or both")
    parser.add_argument("--models", type=Path, help="folder holding tiny-full (default: a fresh one)")
    args = parser.parse_args()

    rounds = []
    with tempfile.TemporaryDirectory(prefix="service-load-") as tmp:
        # One server secret for the servers started here and their clients (not the user's own).
        os.environ["GDU_SECRET_FILE"] = str(Path(tmp) / "server-secret")
        models = args.models
        if models is None:
            from backend.models.tiny import write_tiny_model

            models = Path(tmp) / "models"
            write_tiny_model(models / "tiny-full", "full", seed=1)
        for name in args.rounds.split(","):
            retries = 0 if name == "reject" else args.retries
            print(f"… round '{name}': {args.clients} clients, {retries} retries", file=sys.stderr, flush=True)
            rounds.append(run_round(args, models, Path(tmp) / f"home-{name}", retries))

    print(
        f"\nService load: {args.clients} clients at once, {args.size}×{args.size} → ×2, "
        f"{FAST['steps']} steps, tiny model, queue {args.queue_size} + 1 running, loopback"
    )
    columns = (
        "429 retries", "clients", "succeeded", "rejected (429)", "rejected (other 4xx)", "failed",
        "other errors", "429 answers", "wall s", "client s p50/max", "peak RSS MB", "RSS start/end MB",
    )  # fmt: skip
    print("| " + " | ".join(columns) + " |")
    print("|" + "---:|" * len(columns))
    ok = True
    for r in rounds:
        kinds = r.kinds
        seconds = [o.seconds for o in r.outcomes if o.kind == "succeeded"]
        latency = f"{statistics.median(seconds):.1f}/{max(seconds):.1f}" if seconds else "-"
        row = (
            r.retries, args.clients, kinds["succeeded"], kinds["rejected-429"], kinds["rejected-4xx"],
            kinds["failed"], kinds["error"], sum(o.queue_full for o in r.outcomes), f"{r.wall:.1f}", latency,
            f"{max(r.rss):.0f}", f"{r.rss[0]:.0f}/{r.rss[-1]:.0f}",
        )  # fmt: skip
        print("| " + " | ".join(str(v) for v in row) + " |")
        ok &= kinds["failed"] == 0 and kinds["error"] == 0 and r.healthy
    for r in rounds:
        problems = Counter(f"{o.kind}: {o.detail}" for o in r.outcomes if o.kind != "succeeded")
        for text, count in problems.most_common(5):
            print(f"- retries {r.retries}: {count}× {text[:200]}")
        if not r.healthy:
            print(f"- retries {r.retries}: the server was NOT healthy after the round")
        busy = {k: v for k, v in r.leftover.items() if k in ("queued", "running")}
        if busy:
            print(f"- retries {r.retries}: jobs still {busy} after all clients finished")
    print(f"\n{'every job succeeded or was refused in plain words' if ok else 'FAILED: see above'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
