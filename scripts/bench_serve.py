"""Serving benchmark: continuous batching against bucketed batches, in the same run, under
closed-loop clients (each sends its next request when the last is answered) and under
Poisson arrivals at several rates.

  python scripts/bench_serve.py --workdir runs/gpt_tiny --clients 16,64 --rates 4,8,16 \
      --duration 20

Starts one server per batching (`serve --batching continuous|bucketed --warmup`) on a
free local port, both at once, and runs each workload on one then the other. Every
request streams, with its own max_tokens drawn from 1..--max_tokens (mixed lengths: where
the two differ); a short unmeasured phase first. Measures per
workload: requests/s, generated tokens/s (the server's own counter), p50/p99 latency, p50
and p99 time to first token, errors, and the server's peak RSS at the end. Prints a table
and the continuous/bucketed ratios, and writes --out (JSON). Language models only.
"""

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import time

import httpx
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = [
  "def ",
  "import os\n",
  "class Parser(",
  "for i in range(",
  "# Copyright",
  "return self.",
  "if __name__ == '__main__':\n",
  "x = ",
]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def server(source_flag, source, batching, max_batch, max_wait_ms):
  port = free_port()
  process = subprocess.Popen(
    [
      sys.executable,
      "-m",
      "bigflax",
      "serve",
      source_flag,
      source,
      "--port",
      str(port),
      "--batching",
      batching,
      "--max_batch",
      str(max_batch),
      "--max_wait_ms",
      str(max_wait_ms),
      "--max_queue",
      "4096",
      "--timeout_s",
      "600",
      "--warmup",
    ],
    cwd=REPO,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  url = f"http://127.0.0.1:{port}"
  try:
    for _ in range(1200):
      if process.poll() is not None:
        raise RuntimeError(f"the server exited with {process.returncode}")
      with contextlib.suppress(httpx.HTTPError):
        if httpx.get(f"{url}/health", timeout=2).status_code == 200:
          break
      time.sleep(0.5)
    yield url, process.pid
  finally:
    process.terminate()
    process.wait(timeout=60)


def peak_rss_mb(pid: int) -> float:
  with open(f"/proc/{pid}/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) / 1024
  return float("nan")


def generated_tokens(url) -> float:
  text = httpx.get(f"{url}/metrics").text
  return sum(
    float(line.split()[-1])
    for line in text.splitlines()
    if line.startswith("bigflax_generated_tokens_total")
  )


async def one_request(http, url, body, record):
  """Streams one completion: its latency and time to first token go into `record`."""
  started, first = time.monotonic(), None
  try:
    async with http.stream("POST", url + "/v1/completions", json=body) as response:
      if response.status_code != 200:
        record["errors"] += 1
        return
      async for line in response.aiter_lines():
        if first is None and line.startswith("data: {"):
          first = time.monotonic()
  except httpx.HTTPError:
    record["errors"] += 1
    return
  record["latency"].append(time.monotonic() - started)
  record["ttft"].append((first or time.monotonic()) - started)


def body_of(rng, max_tokens):
  return {
    "prompt": rng.choice(PROMPTS),
    "max_tokens": rng.randint(1, max_tokens),
    "temperature": 0.8,
    "seed": rng.randrange(2**31),
    "stream": True,
  }


async def run_load(url, workload: tuple, seconds: float, max_tokens: int, seed: int) -> dict:
  """`workload`: ("clients", n) closed-loop clients or ("rate", r) Poisson arrivals/s."""
  rng = random.Random(seed)
  record = {"latency": [], "ttft": [], "errors": 0}
  deadline = time.monotonic() + seconds
  tokens_before, started = generated_tokens(url), time.monotonic()
  async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=None)) as http:
    kind, value = workload
    if kind == "clients":

      async def client():
        while time.monotonic() < deadline:
          await one_request(http, url, body_of(rng, max_tokens), record)

      await asyncio.gather(*(client() for _ in range(value)))
    else:
      tasks = []
      while time.monotonic() < deadline:
        tasks.append(asyncio.create_task(one_request(http, url, body_of(rng, max_tokens), record)))
        await asyncio.sleep(rng.expovariate(value))
      await asyncio.gather(*tasks)
  elapsed = time.monotonic() - started
  pct = lambda xs, q: 1000 * float(np.percentile(xs, q)) if xs else None
  return {
    "requests": len(record["latency"]),
    "errors": record["errors"],
    "seconds": round(elapsed, 2),
    "requests_per_s": len(record["latency"]) / elapsed,
    "tokens_per_s": (generated_tokens(url) - tokens_before) / elapsed,
    "p50_ms": pct(record["latency"], 50),
    "p99_ms": pct(record["latency"], 99),
    "ttft_p50_ms": pct(record["ttft"], 50),
    "ttft_p99_ms": pct(record["ttft"], 99),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--workdir")
  source.add_argument("--bundle")
  parser.add_argument("--clients", default="16,64", help="closed-loop client counts")
  parser.add_argument("--rates", default="4,8,16", help="Poisson arrival rates (req/s)")
  parser.add_argument("--duration", type=float, default=20.0, help="seconds per workload")
  parser.add_argument("--warmup", type=float, default=5.0, help="seconds discarded")
  parser.add_argument("--max_tokens", type=int, default=32)
  parser.add_argument("--max_batch", type=int, default=16)
  parser.add_argument("--max_wait_ms", type=float, default=10.0)
  parser.add_argument("--out", default="bench_serve.json")
  args = parser.parse_args()
  source_flag, source_dir = (
    ("--workdir", args.workdir) if args.workdir else ("--bundle", args.bundle)
  )
  workloads = [("clients", int(c)) for c in args.clients.split(",") if c] + [
    ("rate", float(r)) for r in args.rates.split(",") if r
  ]
  results = []
  with contextlib.ExitStack() as stack:
    # Both servers up at once, each workload run on one then the other: the machine's
    # load drifts less between the two than between two halves of the run.
    servers = {
      batching: stack.enter_context(
        server(source_flag, source_dir, batching, args.max_batch, args.max_wait_ms)
      )
      for batching in ("continuous", "bucketed")
    }
    for url, _ in servers.values():
      task = httpx.get(f"{url}/health").json()["task"]
      if task != "lm":
        raise SystemExit(
          f"{source_dir} serves a {task!r} model; this benchmark is for language models"
        )
      asyncio.run(run_load(url, ("clients", 8), args.warmup, args.max_tokens, seed=-1))
    for i, workload in enumerate(workloads):
      for batching, (url, _) in servers.items():
        result = asyncio.run(run_load(url, workload, args.duration, args.max_tokens, i))
        results.append(
          {"batching": batching, "workload": f"{workload[0]}={workload[1]:g}", **result}
        )
        print(json.dumps(results[-1]), flush=True)
    for r in results:
      r["peak_rss_mb"] = peak_rss_mb(servers[r["batching"]][1])
  results.sort(key=lambda r: r["batching"] != "continuous")
  print(
    f"\n{source_dir}, max_batch={args.max_batch}, max_tokens 1..{args.max_tokens}, "
    f"{args.duration:g} s per workload"
  )
  header = (
    f"| {'batching':<10} | {'workload':<10} | {'req/s':>6} | {'tok/s':>6} | "
    f"{'p50 ms':>6} | {'p99 ms':>6} | {'TTFT p50':>8} | {'TTFT p99':>8} | "
    f"{'errors':>6} | {'peak RSS MB':>11} |"
  )
  print(header + "\n|" + "|".join("-" * (len(c) + 0) for c in header.split("|")[1:-1]) + "|")
  fmt = lambda x: f"{x:.0f}" if x is not None else "-"
  for r in results:
    print(
      f"| {r['batching']:<10} | {r['workload']:<10} | {r['requests_per_s']:>6.2f} | "
      f"{r['tokens_per_s']:>6.0f} | {fmt(r['p50_ms']):>6} | {fmt(r['p99_ms']):>6} | "
      f"{fmt(r['ttft_p50_ms']):>8} | {fmt(r['ttft_p99_ms']):>8} | {r['errors']:>6} | "
      f"{r['peak_rss_mb']:>11.0f} |"
    )
  ratios = {}
  for w in dict.fromkeys(r["workload"] for r in results):
    c, b = (
      next(r for r in results if r["workload"] == w and r["batching"] == name)
      for name in ("continuous", "bucketed")
    )
    ratio = lambda k: (b[k] / c[k]) if c[k] and b[k] else None  # noqa: B023  (used in this iteration)
    ratios[w] = {
      "tokens_per_s": c["tokens_per_s"] / max(b["tokens_per_s"], 1e-9),
      "p50_latency": ratio("p50_ms"),
      "p99_latency": ratio("p99_ms"),
      "ttft_p50": ratio("ttft_p50_ms"),
    }
  print(
    "\ncontinuous / bucketed: tok/s ratio, and bucketed / continuous latencies "
    "(> 1: continuous is better)"
  )
  for w, r in ratios.items():
    print(
      f"  {w:<10} tok/s {r['tokens_per_s']:.2f}x, p50 {fmt_ratio(r['p50_latency'])}, "
      f"p99 {fmt_ratio(r['p99_latency'])}, TTFT p50 {fmt_ratio(r['ttft_p50'])}"
    )
  with open(args.out, "w") as f:
    json.dump(
      {
        "source": source_dir,
        "max_batch": args.max_batch,
        "max_tokens": args.max_tokens,
        "duration": args.duration,
        "results": results,
        "ratios": ratios,
      },
      f,
      indent=2,
    )


def fmt_ratio(x):
  return f"{x:.2f}x" if x is not None else "-"


if __name__ == "__main__":
  main()
