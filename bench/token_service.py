"""Benchmark of the token service: keys minted per second and p50/p99 latency against a local upstream.

Three processes: the upstream (the realtime simulator, or a minimal stub that isolates the
service's own cost), ``speaker-tokens`` with its access log on, and this load generator (closed
loop: ``concurrency`` clients, each sending its next request when the last one is answered, spread
over ``--devices`` devices). For each concurrency it also measures the same load sent straight to
the upstream, so the service's overhead can be read off, and the service's CPU time per key.

    python bench/token_service.py                      # both upstreams, concurrency 1, 10, 50
    python bench/token_service.py --upstream stub --requests 5000 --concurrency 1 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402

from services.tokens_config import hash_secret  # noqa: E402

API_KEY = "sk-bench-" + secrets.token_hex(16)
TOKEN_PATH = "/v1/realtime/token"


# -- the minimal upstream (run in its own process with --stub-upstream) -----------------------------


async def _stub_upstream(api_key: str) -> None:
    async def mint(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {api_key}":
            return web.json_response({"error": {"code": "invalid_api_key"}}, status=401)
        body = await request.json()
        ttl = body.get("expires_after", {}).get("seconds", 600)
        return web.json_response({"value": "ek_" + secrets.token_hex(16), "expires_at": int(time.time()) + ttl, "session": body.get("session", {})})

    app = web.Application()
    app.router.add_post("/v1/realtime/client_secrets", mint)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    print(f"api_base=http://127.0.0.1:{runner.addresses[0][1]}/v1", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


# -- processes --------------------------------------------------------------------------------------


def _start(args: list[str], pattern: str, env: dict[str, str] | None = None, stderr: Any = subprocess.STDOUT) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = re.search(pattern, line)
        if m:
            # keep draining its output (the simulator logs every key): a full pipe would stall it
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, m.group(1)
    proc.kill()
    raise RuntimeError(f"{args} did not start")


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_upstream(kind: str) -> tuple[subprocess.Popen[str], str]:
    if kind == "sim":
        return _start(
            [sys.executable, "-m", "services.simulator", "--port", "0", "--api-key", API_KEY],
            r"api_base=(\S+)",
        )
    return _start([sys.executable, str(Path(__file__).resolve()), "--stub-upstream"], r"api_base=(\S+)", env={**os.environ, "BENCH_API_KEY": API_KEY})


def start_service(workdir: Path, api_base: str, devices: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    key_file = workdir / "openai.key"
    key_file.write_text(API_KEY + "\n")
    key_file.chmod(0o600)
    text = (
        f'[server]\nhost = "127.0.0.1"\nport = 0\n[upstream]\napi_base = "{api_base}"\napi_key_file = "{key_file}"\n'
        "[limits]\nper_device_per_minute = 100000\n[log]\nlevel = \"info\"\n"
    )
    for name, secret in devices.items():
        text += f'\n[[devices]]\nid = "{name}"\nsecret_hash = "{hash_secret(secret)}"\n'
    config = workdir / "tokens.toml"
    config.write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    # The access log goes to a file, as under journald it goes to a pipe that someone drains.
    log = open(workdir / "service.log", "w")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.tokens", "--config", str(config)], cwd=ROOT, env=env, stdout=log, stderr=log, text=True
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        m = re.search(r"listening on (http://\S+?)/v1", (workdir / "service.log").read_text())
        if m:
            return proc, m.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("speaker-tokens did not start:\n" + (workdir / "service.log").read_text())


# -- load -------------------------------------------------------------------------------------------


async def load(url: str, headers_for: list[dict[str, str]], body: Any, requests: int, concurrency: int) -> dict[str, float]:
    """Closed-loop load; returns keys/s and latency percentiles (ms)."""
    latencies: list[float] = []
    errors: dict[int, int] = {}
    next_i = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as http:

        async def worker() -> None:
            nonlocal next_i
            while next_i < requests:
                i = next_i
                next_i += 1
                t0 = time.perf_counter()
                async with http.post(url, headers=headers_for[i % len(headers_for)], json=body) as resp:
                    data = await resp.read()
                    if resp.status != 200 or b'"value"' not in data:
                        errors[resp.status] = errors.get(resp.status, 0) + 1
                latencies.append(time.perf_counter() - t0)

        # warm up connections and caches
        next_i = requests - min(requests, 4 * concurrency)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        latencies.clear()
        errors.clear()
        next_i = 0
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    latencies.sort()
    if errors:
        raise RuntimeError(f"non-200 answers: {errors}")
    return {
        "keys_per_s": requests / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1000,
        "wall_s": wall,
    }


def run(kind: str, requests: int, concurrencies: list[int], n_devices: int) -> list[dict[str, Any]]:
    devices = {f"room{i}": secrets.token_urlsafe(32) for i in range(n_devices)}
    rows: list[dict[str, Any]] = []
    up, api_base = start_upstream(kind)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            svc, base = start_service(Path(tmp), api_base, devices)
            try:
                dev_headers = [{"Authorization": f"Bearer {s}"} for s in devices.values()]
                up_headers = [{"Authorization": f"Bearer {API_KEY}"}]
                policy = {"expires_after": {"anchor": "created_at", "seconds": 600}, "session": {"type": "realtime", "model": "gpt-realtime", "audio": {"output": {"voice": "marin"}}}}
                for c in concurrencies:
                    direct = asyncio.run(load(api_base + "/realtime/client_secrets", up_headers, policy, requests, c))
                    cpu0 = _cpu_s(svc.pid)
                    via = asyncio.run(load(base + TOKEN_PATH, dev_headers, None, requests, c))
                    cpu = _cpu_s(svc.pid) - cpu0
                    rows.append({
                        "upstream": kind, "concurrency": c, "requests": requests,
                        "service": via, "direct": direct,
                        # includes the warm-up requests (4 per client)
                        "service_cpu_ms_per_key": cpu * 1000 / (requests + min(requests, 4 * c)),
                    })
                    print(
                        f"{kind:4} c={c:3}  service {via['keys_per_s']:7.0f} keys/s  p50 {via['p50_ms']:6.2f} ms  p99 {via['p99_ms']:6.2f} ms"
                        f"  | upstream alone {direct['keys_per_s']:7.0f}/s  p50 {direct['p50_ms']:6.2f}  p99 {direct['p99_ms']:6.2f}"
                        f"  | service CPU {rows[-1]['service_cpu_ms_per_key']:.2f} ms/key",
                        flush=True,
                    )
            finally:
                _stop(svc)
    finally:
        _stop(up)
    return rows


def identify_timing(n_devices: int, rounds: int = 20000) -> dict[str, float]:
    """ns per identify() for the first device, the last one and an unknown secret: they should match."""
    from services.tokens import TokenService
    from services.tokens_config import DeviceEntry, TokenServiceConfig

    devs = {f"room{i}": secrets.token_urlsafe(32) for i in range(n_devices)}
    cfg = TokenServiceConfig(path=Path("bench.toml"), devices=tuple(DeviceEntry(id=k, secret_hash=hash_secret(v)) for k, v in devs.items()))
    svc = TokenService(cfg)
    cases = {"first": devs["room0"], "last": devs[f"room{n_devices - 1}"], "unknown": secrets.token_urlsafe(32)}
    out: dict[str, float] = {}
    for _ in range(2):  # the second pass counts (warm)
        for name, secret in cases.items():
            best = float("inf")
            for _ in range(5):
                t0 = time.perf_counter_ns()
                for _ in range(rounds // 5):
                    svc.identify(secret)
                best = min(best, (time.perf_counter_ns() - t0) / (rounds // 5))
            out[name] = best
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--upstream", choices=["sim", "stub", "both"], default="both")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 10, 50])
    p.add_argument("--devices", type=int, default=10)
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--stub-upstream", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.stub_upstream:
        asyncio.run(_stub_upstream(os.environ["BENCH_API_KEY"]))
        return
    print(f"python {sys.version.split()[0]}, aiohttp {aiohttp.__version__}, {os.cpu_count()} CPUs; {args.requests} requests per run, {args.devices} devices")
    t = identify_timing(args.devices)
    print("identify() over %d devices: first %.0f ns, last %.0f ns, unknown %.0f ns (best of 5)" % (args.devices, t["first"], t["last"], t["unknown"]))
    rows: list[dict[str, Any]] = []
    for kind in (["stub", "sim"] if args.upstream == "both" else [args.upstream]):
        rows += run(kind, args.requests, args.concurrency, args.devices)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
