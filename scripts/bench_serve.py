"""Serving benchmark: N concurrent clients against `bigflax serve` for a fixed time, with
dynamic batching (--max_batch) and without (max_batch=1).

  python scripts/bench_serve.py --workdir runs/gpt_tiny --clients 16 --duration 30

Starts one server per setting on a free local port with --warmup (every batch shape
compiled first), runs the clients for --warmup seconds unmeasured, then measures:
requests/s, generated tokens/s, p50/p99 latency and errors. Prints a table and writes --out (JSON). A language model gets completion requests,
a classifier classification requests.
"""

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time

import httpx
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["def ", "import os\n", "class Parser(", "for i in range(", "# Copyright",
           "return self.", "if __name__ == '__main__':\n", "x = "]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def server(source_flag, source, max_batch, max_wait_ms):
  port = free_port()
  process = subprocess.Popen(
      [sys.executable, "-m", "bigflax", "serve", source_flag, source, "--port", str(port),
       "--max_batch", str(max_batch), "--max_wait_ms", str(max_wait_ms), "--warmup"],
      cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  url = f"http://127.0.0.1:{port}"
  try:
    for _ in range(600):
      if process.poll() is not None:
        raise RuntimeError(f"the server exited with {process.returncode}")
      with contextlib.suppress(httpx.HTTPError):
        if httpx.get(f"{url}/health", timeout=2).status_code == 200:
          break
      time.sleep(0.5)
    yield url
  finally:
    process.terminate()
    process.wait(timeout=60)


def request_body(task: str, i: int, max_tokens: int) -> tuple[str, dict]:
  if task == "lm":
    return "/v1/completions", {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens,
                               "temperature": 0.8, "seed": i}
  return "/v1/classify", {"input": "a sentence to classify"}


async def load(url: str, task: str, clients: int, seconds: float, max_tokens: int) -> dict:
  latencies, errors, tokens = [], 0, 0
  deadline = time.monotonic() + seconds

  async def client(c, http):
    nonlocal errors, tokens
    i = c
    while time.monotonic() < deadline:
      path, body = request_body(task, i, max_tokens)
      started = time.monotonic()
      try:
        response = await http.post(url + path, json=body)
        ok = response.status_code == 200
      except httpx.HTTPError:
        ok = False
      if ok:
        latencies.append(time.monotonic() - started)
        tokens += response.json().get("usage", {}).get("completion_tokens", 0)
      else:
        errors += 1
      i += clients

  started = time.monotonic()
  async with httpx.AsyncClient(timeout=300) as http:
    await asyncio.gather(*(client(c, http) for c in range(clients)))
  elapsed = time.monotonic() - started
  return {"requests": len(latencies), "errors": errors, "seconds": round(elapsed, 2),
          "requests_per_s": len(latencies) / elapsed, "tokens_per_s": tokens / elapsed,
          "p50_ms": 1000 * float(np.percentile(latencies, 50)) if latencies else None,
          "p99_ms": 1000 * float(np.percentile(latencies, 99)) if latencies else None}


def batches_run(url) -> float:
  text = httpx.get(f"{url}/metrics").text
  return sum(float(line.split()[-1]) for line in text.splitlines()
             if line.startswith("bigflax_batches_total"))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--workdir")
  source.add_argument("--bundle")
  parser.add_argument("--clients", type=int, default=16)
  parser.add_argument("--duration", type=float, default=30.0, help="seconds measured")
  parser.add_argument("--warmup", type=float, default=15.0, help="seconds discarded")
  parser.add_argument("--max_tokens", type=int, default=32)
  parser.add_argument("--max_batch", type=int, default=16)
  parser.add_argument("--max_wait_ms", type=float, default=10.0)
  parser.add_argument("--out", default="bench_serve.json")
  args = parser.parse_args()
  source_flag, source_dir = ("--workdir", args.workdir) if args.workdir else ("--bundle",
                                                                              args.bundle)
  results = {}
  for name, max_batch in (("batched", args.max_batch), ("unbatched", 1)):
    with server(source_flag, source_dir, max_batch, args.max_wait_ms) as url:
      task = httpx.get(f"{url}/health").json()["task"]
      asyncio.run(load(url, task, args.clients, args.warmup, args.max_tokens))
      before = batches_run(url)
      results[name] = asyncio.run(load(url, task, args.clients, args.duration,
                                       args.max_tokens))
      results[name].update(max_batch=max_batch,
                           rows_per_batch=results[name]["requests"] /
                           max(batches_run(url) - before, 1))
  header = (f"{'setting':<10} {'max_batch':>9} {'req/s':>8} {'tok/s':>8} {'p50 ms':>8} "
            f"{'p99 ms':>8} {'errors':>6} {'rows/batch':>10}")
  print(f"{args.clients} clients, {args.duration:.0f} s, max_tokens={args.max_tokens}, "
        f"{source_dir}\n{header}")
  for name, r in results.items():
    print(f"{name:<10} {r['max_batch']:>9} {r['requests_per_s']:>8.2f} "
          f"{r['tokens_per_s']:>8.1f} {r['p50_ms']:>8.0f} {r['p99_ms']:>8.0f} "
          f"{r['errors']:>6} {r['rows_per_batch']:>10.2f}")
  speedup = results["batched"]["requests_per_s"] / max(results["unbatched"]["requests_per_s"],
                                                       1e-9)
  print(f"batched / unbatched throughput: {speedup:.2f}x")
  with open(args.out, "w") as f:
    json.dump({"source": source_dir, "clients": args.clients, "duration": args.duration,
               "max_tokens": args.max_tokens, "results": results, "speedup": speedup}, f,
              indent=2)


if __name__ == "__main__":
  main()
