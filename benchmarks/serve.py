"""Serving throughput: `transformerkit serve` and llama.cpp's llama-server side by side, same GGUF file, same machine.

    python benchmarks/serve.py                          # SmolLM2, 1, 4 and 8 clients, 128 tokens each
    python benchmarks/serve.py --model runs/tiny --clients 2 --tokens 8 --no-llama    # a quick check

Each server runs as its own process. N clients stream greedy chat completions at once (`ignore_eos`, so each
makes exactly --tokens tokens), each with its own question. Per stream: the time to its first token, and its
tokens/s after that; for the run: every stream's tokens over the wall time (aggregate). Continuous batching
pays when the aggregate at 8 clients is well above one stream's rate (the target: 3x).
llama-server comes from ../shared/tools/build-llama-cpp.sh (built on first use, about 10 minutes; cached).
Writes benchmarks/results/serve.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from statistics import mean

import httpx
from common import machine_facts, print_table, write_json

from transformerkit.loading import ALIASES, resolve

ROOT = Path(__file__).resolve().parents[1]
BUILD_LLAMA = ROOT.parent / "shared" / "tools" / "build-llama-cpp.sh"
TOPICS = ["a lighthouse keeper", "the first day of school", "a dragon who cannot fly", "the history of bread",
          "a robot learning to paint", "a storm at sea", "a city under the ocean", "the last tree on Mars"]


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """A server process on a free local port, ready once GET /health answers 200; its output goes to a log file."""

    def __init__(self, name: str, command: list[str], port: int, env: dict | None = None, timeout: float = 600):
        self.name, self.url = name, f"http://127.0.0.1:{port}"
        self.log = Path(tempfile.gettempdir()) / f"bench-serve-{name}.log"
        self.process = subprocess.Popen(command, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
                                        env={**os.environ, **(env or {})})
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise SystemExit(f"{name} exited with {self.process.returncode}; see {self.log}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"{name} did not start in {timeout:.0f} s; see {self.log}")
            time.sleep(0.5)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def stream_once(url: str, model: str, question: str, tokens: int) -> dict:
    """One streamed greedy chat completion of exactly `tokens` tokens -> its timings and token count."""
    body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": tokens,
            "temperature": 0, "stream": True, "ignore_eos": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first = last = None
    chunks, counted = 0, None
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                counted = chunk["usage"]["completion_tokens"]
            elif chunk.get("timings"):  # llama-server's own count
                counted = counted or chunk["timings"].get("predicted_n")
            if chunk.get("choices") and chunk["choices"][0].get("delta", {}).get("content"):
                now = time.perf_counter()
                first, last, chunks = first or now, now, chunks + 1
    end = time.perf_counter()
    n = counted or chunks
    return {"start": start, "end": end, "tokens": n, "ttft": (first or end) - start,
            "tokens_per_s": (n - 1) / (last - first) if first and last and last > first else 0.0}


def trial(url: str, model: str, clients: int, tokens: int) -> dict:
    """`clients` streams at once -> time to first token and tokens/s per stream, and the aggregate tokens/s."""
    results: list[dict] = [{} for _ in range(clients)]

    def run(i: int) -> None:
        results[i] = stream_once(url, model, f"Write a long story about {TOPICS[i % len(TOPICS)]}.", tokens)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    return {"clients": clients, "ttft_s": [round(r["ttft"], 4) for r in results],
            "stream_tokens_per_s": [round(r["tokens_per_s"], 2) for r in results],
            "tokens": [r["tokens"] for r in results], "wall_s": round(wall, 3),
            "aggregate_tokens_per_s": round(sum(r["tokens"] for r in results) / wall, 2)}


def measure(server: Server, model: str, client_counts: list[int], tokens: int) -> list[dict]:
    stream_once(server.url, model, "Hello!", 4)  # warm up: first-call allocations, kernel choices
    rows = []
    for clients in client_counts:
        row = {"server": server.name, **trial(server.url, model, clients, tokens)}
        print(f"  {server.name}, {clients} client(s): {row['aggregate_tokens_per_s']:.1f} tokens/s in all",
              flush=True)
        rows.append(row)
    return rows


def llama_binaries(folder: str | None) -> Path | None:
    """The folder holding llama-server: the one given, else what build-llama-cpp.sh prints (building it once)."""
    if folder:
        return Path(folder)
    if not BUILD_LLAMA.exists():
        print(f"no {BUILD_LLAMA}: llama.cpp is left out")
        return None
    print("building llama.cpp's llama-server (cached after the first time)...", flush=True)
    built = subprocess.run(["bash", str(BUILD_LLAMA), "llama-server"], capture_output=True, text=True)
    if built.returncode != 0:
        print(f"llama.cpp could not be built; it is left out:\n{built.stderr[-2000:]}")
        return None
    return Path(built.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="MODEL to serve (default smollm2)")
    parser.add_argument("--clients", default="1,4,8", help="concurrent clients per trial (default 1,4,8)")
    parser.add_argument("--tokens", type=int, default=128, help="tokens each client generates (default 128)")
    parser.add_argument("--dtype", default="auto", help="our server's --dtype (default auto)")
    parser.add_argument("--quantize", default="auto", help="our server's --quantize (default auto)")
    parser.add_argument("--no-llama", action="store_true", help="measure ours only")
    parser.add_argument("--llama-bin", help="the folder holding llama-server (default: build-llama-cpp.sh's)")
    args = parser.parse_args()
    client_counts = [int(c) for c in args.clients.split(",")]
    threads = str(int(os.environ.get("OMP_NUM_THREADS") or len(os.sched_getaffinity(0))))

    model_id = args.model if args.model in ALIASES else "model"
    port = free_port()
    ours = Server("transformerkit", [sys.executable, "-m", "transformerkit", "serve", f"{model_id}={args.model}",
                                     "--port", str(port), "--dtype", args.dtype, "--quantize", args.quantize,
                                     "--max-batch", str(max(client_counts))], port, timeout=300)
    settings = [line for line in ours.log.read_text().splitlines() if line.startswith("precision")]
    print(f"transformerkit serve: {settings[0] if settings else ''}", flush=True)
    try:
        rows = measure(ours, model_id, client_counts, args.tokens)
    finally:
        ours.stop()

    gguf = resolve(args.model)
    binaries = None if args.no_llama or gguf.suffix != ".gguf" else llama_binaries(args.llama_bin)
    if binaries is not None:
        port = free_port()
        llama = Server("llama.cpp", [str(binaries / "llama-server"), "-m", str(gguf), "--host", "127.0.0.1",
                                     "--port", str(port), "-np", str(max(client_counts)),
                                     "-c", str(max(client_counts) * (args.tokens + 256)), "-t", threads],
                       port, env={"LD_LIBRARY_PATH": str(binaries)}, timeout=300)
        try:
            rows += measure(llama, model_id, client_counts, args.tokens)
        finally:
            llama.stop()

    print_table([(r["server"], r["clients"], mean(r["ttft_s"]), max(r["ttft_s"]), mean(r["stream_tokens_per_s"]),
                  r["aggregate_tokens_per_s"]) for r in rows],
                ("server", "clients", "first token s (mean)", "(max)", "tokens/s per stream", "tokens/s in all"))
    single = {r["server"]: r["aggregate_tokens_per_s"] for r in rows if r["clients"] == 1}
    most = {r["server"]: r["aggregate_tokens_per_s"] for r in rows if r["clients"] == max(client_counts)}
    scaling = {name: round(most[name] / single[name], 2) for name in most if single.get(name)}
    for name, ratio in scaling.items():
        print(f"{name}: {max(client_counts)} clients give {ratio:.1f}x one stream's tokens/s (target for ours: 3x)")
    result = {**machine_facts(), "model": args.model, "tokens_per_client": args.tokens, "dtype": args.dtype,
              "quantize": args.quantize, "our_settings": settings[0] if settings else None, "rows": rows,
              "aggregate_over_single": scaling}
    print(f"wrote {write_json('serve.json', result)}")


if __name__ == "__main__":
    main()
