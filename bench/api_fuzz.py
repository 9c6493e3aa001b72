"""Property-based fuzzing of the HTTP API from its own OpenAPI description, with schemathesis.

The server must answer every request, however malformed, with a 2xx or a 4xx in plain words: a
5xx means a handler let an exception through. This starts a real ``python -m backend serve`` on
tiny models, uploads a few real images and runs a few real jobs, and gives their ids to
schemathesis as dictionaries, so that part of the generated requests gets past "unknown id" into
the image and job code; job knobs that make runs slow are pinned to small values, and a
heartbeat thread polls the fuzzer's jobs so that they run instead of being abandoned. It runs
every schemathesis phase on every operation and counts, per operation, requests, 2xx/4xx/5xx
answers, other failed checks (conformance to the schema: reported, not fatal) and requests that
got no answer, from schemathesis' NDJSON report and again from the server's access log. The
tracebacks of 5xx answers and of jobs that failed with an internal error come from the server log.

    python bench/api_fuzz.py [--max-examples 100] [--min-requests 1000] [--seed 1] [--keep DIR]

Exits 1 on any 5xx (or a server that stops answering), 2 with fewer than --min-requests requests.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.client import API, Client, ClientError, RawImage  # noqa: E402
from tests.service_server import ServerProcess  # noqa: E402

FAST = {"task": "upscale", "scale": 2, "steps": 2, "process_size": 256, "seed": 7}
LIMITS = ("--max-megapixels", "4", "--max-output-megapixels", "4", "--max-upload-mb", "64")
# No model download may leave this machine, whatever ids the fuzzer sends.
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
CONFORMANCE = ("status_code_conformance", "content_type_conformance", "response_schema_conformance")
DEFAULT_CHECKS = ",".join(("not_a_server_error", *CONFORMANCE))
OTHER_METHODS = "other methods (405 probes)"
UNMATCHED = "no operation (probes, odd paths, schema)"
HEARTBEAT = "heartbeat=bench"
ACCESS = re.compile(r'uvicorn\.access: \S+ - "(\S+) (\S+) HTTP/[\d.]+" (\d{3})')


def raw(array: np.ndarray) -> RawImage:
    if array.ndim == 2:
        array = array[..., None]
    h, w, c = array.shape
    return RawImage(w, h, c, str(array.dtype), array.tobytes())


def wait_listening(server: ServerProcess, timeout: float = 30.0) -> int:
    """Wait until the server accepts connections; returns how many tries were refused.

    "Serving on" is printed from the app's lifespan startup, which uvicorn runs before it starts
    listening on the bound socket, so a request sent right after that line can be refused.
    """
    deadline = time.monotonic() + timeout
    refused = 0
    while not server.healthy():
        refused += 1
        if time.monotonic() > deadline:
            raise RuntimeError("the server does not answer:\n" + server.output)
        time.sleep(0.01)
    return refused


def seed_data(client: Client) -> dict[str, list[Any]]:
    """Real ids for the fuzzer: images of several layouts, finished and other jobs, model ids.

    The images that job requests name are not the ones path parameters name, so that the fuzzer's
    DELETE /images/{id} cannot take away every image the job requests need.
    """
    rng = np.random.default_rng(0)
    arrays = [
        rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
        rng.integers(0, 65536, (32, 32, 4), dtype=np.uint16),
        rng.integers(0, 256, (32, 32), dtype=np.uint8),  # grey: a mask for the others, or a colorize input
        rng.integers(0, 256, (32, 32, 2), dtype=np.uint8),
        rng.integers(0, 256, (24, 40, 3), dtype=np.uint8),  # another size: a mask that does not fit
        rng.random((16, 16, 3), dtype=np.float32),
    ]
    images = [client.upload(raw(a)).id for a in arrays]
    done = client.submit(images[0], FAST)
    client.wait(done.id, interval=0.2)
    colorized = client.submit(images[2], {**FAST, "task": "colorize", "scale": 1}, model="tiny-color")
    client.wait(colorized.id, interval=0.2)
    canceled = client.submit(images[1], {**FAST, "steps": 50}, detached=True)
    client.cancel(canceled.id)
    detached = client.submit(images[3], FAST, images[2], detached=True)
    return {
        "images": images,
        "path_images": [client.upload(raw(a)).id for a in arrays],
        "jobs": [done.id, colorized.id, canceled.id, detached.id],
        "models": ["tiny-full", "tiny-color", "pasd", "pasd-color", "sd15"],
        # Not checked when a job is submitted: a GAN weights path, and names that are neither.
        "prescalers": ["bicubic", "", "none", "esrgan.pth", "/etc/hostname", "../x.safetensors"],
    }


class Heartbeat:
    """Polls every queued or running job, as the client that submitted it would.

    The fuzzer never polls the jobs it submits, so the server would cancel them after 10 s and
    most would never reach the engine. Its requests carry ``?heartbeat=bench`` so that they can be
    told apart from the fuzzer's in the access log.
    """

    def __init__(self, client: Client, interval: float = 1.0) -> None:
        self.client = client
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                jobs = self.client.request("GET", f"{API}/jobs?{HEARTBEAT}").json()["jobs"]
                for job in jobs:
                    if job["state"] in ("queued", "running"):
                        self.client.request("GET", f"{API}/jobs/{job['id']}?{HEARTBEAT}")
            except ClientError:
                continue  # a job the fuzzer just deleted, or a moment of overload

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def write_config(path: Path, data: dict[str, list[Any]]) -> None:
    """Real ids, drawn with some probability, and job knobs that keep every run short.

    ``process_size`` is always 256 (a literal override also fills it in where the generated body
    has no params, which would otherwise run 20 steps at 768 px); ``steps`` is 1 or 2 nine times
    in ten and freely generated otherwise.
    """
    dictionaries = {**data, "steps": [1, 2], "tile": [64, 128, 256]}
    bindings = {
        "path.image_id": ("path_images", 0.6),
        "path.job_id": ("jobs", 0.6),
        "path.model_id": ("models", 0.5),
        "body.image": ("images", 0.8),
        "body.mask": ("images", 0.3),
        "body.model": ("models", 0.4),
        "body.params.steps": ("steps", 0.9),
        "body.params.tile": ("tile", 0.7),
        "body.params.vae_tile": ("tile", 0.7),
        "body.params.prescaler": ("prescalers", 0.3),
    }
    lines = []
    for name, values in dictionaries.items():
        lines += [f"[dictionaries.{name}]", f"values = {json.dumps(values)}", ""]
    lines.append("[parameters]")
    lines.append('"body.params.process_size" = 256')
    for key, (name, probability) in bindings.items():
        lines.append(f'"{key}" = {{ dictionary = "{name}", probability = {probability} }}')
    path.write_text("\n".join(lines) + "\n")


SHUTDOWN = "/v1/server/shutdown"


def operations(url: str) -> list[str]:
    with urllib.request.urlopen(f"{url}/openapi.json", timeout=30) as response:
        spec = json.load(response)
    paths = {path: item for path, item in spec["paths"].items() if path != SHUTDOWN}
    return [f"{method.upper()} {path}" for path, item in paths.items() for method in item]


def template_regex(operation: str) -> tuple[str, re.Pattern[str]]:
    method, path = operation.split(" ", 1)
    pattern = re.escape(path).replace(r"\{", "{").replace(r"\}", "}")
    return method, re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", pattern) + "$")


def read_report(path: Path, ops: list[str]) -> dict[str, Any]:
    """Per operation: requests, 2xx, 4xx, 5xx, cases failing another check, requests with no answer.

    Requests with a method the API does not document (the coverage phase's 405 probes) are counted
    under one OTHER_METHODS row.
    """
    known = set(ops)
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    other_by_check: Counter[str] = Counter()
    network_messages: dict[str, set[str]] = defaultdict(set)
    failing: list[dict[str, Any]] = []
    for line in path.read_text().splitlines():
        event = json.loads(line)
        kind, body = next(iter(event.items()))
        if kind == "NonFatalError":
            label = body.get("label") or "?"
            label = label if label in known else OTHER_METHODS
            counts[label]["no answer"] += 1
            counts[label]["requests"] += 1
            network_messages[label].add(f"{body['value']['type']}: {body['value']['message'][:200]}")
            continue
        if kind != "ScenarioFinished":
            continue
        recorder = body["recorder"]
        cases = recorder.get("cases", {})
        checks = recorder.get("checks", {})
        for case_id, interaction in recorder.get("interactions", {}).items():
            case = cases.get(case_id, {}).get("value", {})
            operation = f"{case.get('method', '?')} {case.get('path', '?')}"
            operation = operation if operation in known else OTHER_METHODS
            row = counts[operation]
            row["requests"] += 1
            response = interaction.get("response")
            if response is None:
                row["no answer"] += 1
                continue
            status = response["status_code"]
            row[f"{status // 100}xx"] += 1
            if status >= 500:
                failing.append({"operation": operation, "request": interaction["request"], "case": case})
            failed = {
                c["name"]
                for c in checks.get(case_id, [])
                if c["status"] == "failure" and c["name"] != "not_a_server_error"
            }
            if failed:
                row["other failures"] += 1
                other_by_check.update(failed)
    return {
        "counts": counts,
        "other_by_check": other_by_check,
        "network_messages": network_messages,
        "failing": failing,
    }


def access_log(lines: list[str], ops: list[str]) -> dict[str, Counter[str]]:
    """What the server itself answered, per operation: requests and 5xx (its access log)."""
    matchers = [(op, *template_regex(op)) for op in ops]
    seen: dict[str, Counter[str]] = defaultdict(Counter)
    for line in lines:
        m = ACCESS.search(line)
        if not m or HEARTBEAT in m.group(2):
            continue
        method, target, status = m.group(1), m.group(2).split("?", 1)[0], int(m.group(3))
        paths = [(op, meth) for op, meth, rx in matchers if rx.match(target)]
        name = next((op for op, meth in paths if meth == method), OTHER_METHODS if paths else UNMATCHED)
        seen[name]["server saw"] += 1
        if status >= 500:
            seen[name]["server 5xx"] += 1
    return seen


def job_outcomes(log_text: str) -> Counter[str]:
    """How the jobs ended, from the server log (the fuzzer also deletes jobs, so listing misses some)."""
    outcomes: Counter[str] = Counter()
    for pattern, name in (
        (r"job \w+ queued:", "submitted"),
        (r"job \w+ running$", "ran"),
        (r"job \w+ succeeded in", "succeeded"),
        (r"job \w+ canceled:", "canceled while running"),
        (r"job \w+ failed: ", "failed (clear error)"),
        (r"job \w+ failed with an internal error", "failed (internal error)"),
    ):
        outcomes[name] = len(re.findall(pattern, log_text, re.MULTILINE))
    outcomes["canceled or deleted before running"] = outcomes["submitted"] - outcomes["ran"]
    return outcomes


def tracebacks(log_text: str, marker: str) -> Counter[str]:
    """Distinct tracebacks following log records that contain ``marker``, with their counts."""
    found: Counter[str] = Counter()
    records = re.split(r"\n(?=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} )", log_text)
    for record in records:
        if marker in record and "Traceback" in record:
            head, _, trace = record.partition("\n")
            text = re.sub(r"^\S+ \S+ ", "", head) + "\n" + trace
            found[re.sub(r"\b[0-9a-f]{24}\b", "<id>", text)] += 1
    return found


def settle(client: Client, timeout: float) -> Counter[str]:
    """Wait until no job is queued or running (unpolled ones get abandoned); job states at the end."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = client.jobs()
        states = Counter(j.state for j in jobs)
        if not (states["queued"] or states["running"]) or time.monotonic() > deadline:
            return states
        time.sleep(1.0)


def curl(request: dict[str, Any]) -> str:
    parts = ["curl", "-X", request["method"]]
    for name, values in request.get("headers", {}).items():
        for value in values:
            parts += ["-H", f"'{name}: {value}'"]
    body = request.get("body")
    if body is not None:
        text = body.get("string", "")
        data = base64.b64decode(body["$base64"]) if "$base64" in body else str(text).encode()
        parts += ["--data-binary", repr(data)]
    return " ".join([*parts, f"'{request['uri']}'"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=100, help="cases per operation and phase")
    parser.add_argument("--min-requests", type=int, default=1000, help="fail (exit 2) with fewer requests")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", default="1", help="schemathesis workers (1-64 or auto)")
    parser.add_argument("--phases", default="examples,coverage,fuzzing,stateful")
    parser.add_argument("--checks", default=DEFAULT_CHECKS, help="schemathesis checks; only 5xx fail the run")
    parser.add_argument("--max-time", type=int, help="time budget of the schemathesis run, seconds")
    parser.add_argument("--keep", type=Path, help="keep models, server home, reports and config here")
    parser.add_argument("--quiet", action="store_true", help="hide schemathesis' own output")
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="api-fuzz-"))
    if args.keep and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    try:
        return run(args, work)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> int:
    from backend.models.tiny import write_tiny_model

    models = work / "models"
    write_tiny_model(models / "tiny-full", "full", seed=1)
    write_tiny_model(models / "tiny-color", "color", seed=3)
    home = work / "home"
    env = {**OFFLINE, "HF_HOME": str(work / "hf-home")}
    report = work / "report.ndjson"
    with ServerProcess(models, home, *LIMITS, "--verbose", env=env) as server:
        if refused := wait_listening(server):
            print(f"… refused {refused}× after 'Serving on' (announced before listening)", file=sys.stderr)
        client = server.client()
        data = seed_data(client)
        config = work / "schemathesis.toml"
        write_config(config, data)
        ops = operations(server.url)
        first_line = len(server.lines)
        command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run"]
        command += [f"{server.url}/openapi.json", "--checks", args.checks, "--continue-on-failure"]
        command += ["--max-examples", str(args.max_examples), "--seed", str(args.seed)]
        command += ["--workers", args.workers, "--phases", args.phases, "--no-color"]
        command += ["--report", "ndjson", "--report-ndjson-path", str(report), "--request-timeout", "60"]
        command += ["--suppress-health-check", "all", "--generation-database", "none"]
        command += ["--exclude-path", SHUTDOWN]  # it would end the very server being fuzzed
        if args.max_time:
            command += ["--max-time", str(args.max_time)]
        print(f"… fuzzing {server.url} ({len(ops)} operations)", file=sys.stderr, flush=True)
        start = time.perf_counter()
        out = None if not args.quiet else subprocess.DEVNULL
        with Heartbeat(server.client()):
            done = subprocess.run(command, cwd=work, stdout=out or sys.stderr, stderr=subprocess.STDOUT)
            seconds = time.perf_counter() - start
            time.sleep(0.5)  # the access log of the last answers
            server_lines = server.lines[first_line:]
            try:
                states = settle(client, timeout=300)
            except ClientError as exc:
                print(f"could not list jobs after the run: {exc}", file=sys.stderr)
                states = Counter()
        alive = server.healthy()
        log_file = home / "logs" / f"server-{server.port}.log"
    log_text = log_file.read_text(encoding="utf-8", errors="replace") if log_file.exists() else ""

    if not report.exists():
        print(f"schemathesis wrote no report (exit code {done.returncode})", file=sys.stderr)
        return 1
    found = read_report(report, ops)
    counts = found["counts"]
    for name, row in access_log(server_lines, ops).items():
        counts[name].update(row)
    names = [*ops, *(n for n in (OTHER_METHODS, UNMATCHED) if n in counts)]
    outcomes = job_outcomes(log_text)

    print(f"\nAPI fuzzing with schemathesis, seed {args.seed}, {args.max_examples} examples, {seconds:.0f} s")
    print(f"checks: {args.checks} (only 5xx fail the run)\n")
    columns = ("requests", "2xx", "4xx", "5xx", "other failures", "no answer", "server saw", "server 5xx")
    print("| operation | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for name in names:
        print(f"| {name} | " + " | ".join(str(counts[name][c]) for c in columns) + " |")
    totals = {c: sum(counts[n][c] for n in names) for c in columns}
    print("| **total** | " + " | ".join(f"**{totals[c]}**" for c in columns) + " |")
    print(
        '\n"requests" and the status columns: schemathesis\' report; "server saw"/"server 5xx": the '
        'server\'s access log; "other failures": requests failing a check other than not_a_server_error.'
    )
    if found["other_by_check"]:
        by_check = found["other_by_check"].most_common()
        print("other failed checks: " + ", ".join(f"{k} {v}" for k, v in by_check))
    for label, messages in found["network_messages"].items():
        for message in sorted(messages):
            print(f"no answer on {label}: {message}")
    print(
        "jobs: " + ", ".join(f"{k} {v}" for k, v in outcomes.items()) + f"; left at the end: {dict(states)}"
    )
    print(f"server {'still healthy' if alive else 'NOT HEALTHY'} after the run")

    for failure in found["failing"][:10]:
        print(f"\n5xx on {failure['operation']}:\n    {curl(failure['request'])}")
    for marker, title in (
        ("internal error on", "5xx tracebacks"),
        ("failed with an internal error", "jobs that failed with an internal error"),
        ("Exception in ASGI application", "uncaught exceptions"),
    ):
        found_traces = tracebacks(log_text, marker)
        if found_traces:
            print(f"\n{title} ({sum(found_traces.values())}, {len(found_traces)} distinct), from {log_file}:")
            for trace, count in found_traces.most_common():
                print(f"--- {count}×\n{trace.rstrip()}")

    ok = totals["5xx"] == 0 and totals["server 5xx"] == 0 and alive
    print(f"\n{'no' if ok else 'FOUND'} 5xx answers in {totals['requests']} generated requests")
    if not ok:
        return 1
    if totals["requests"] < args.min_requests:
        print(f"only {totals['requests']} requests; at least {args.min_requests} were asked for")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
