"""The server's cost over the library: time to first token through HTTP against the engine's own
(the same prompt, a fresh conversation each time), and decode throughput with 1 and 4
concurrent clients. Standard library only.

    python3 benches/serve.py target/release/llmcad models/cache/SmolLM2-135M-Instruct.Q4_1.gguf
"""

import http.client
import json
import statistics
import subprocess
import sys
import threading
import time

llmcad, model = sys.argv[1], sys.argv[2]
extra = sys.argv[3:]  # e.g. -t 2
PROMPT = "The history of the printing press begins"
RUNS = 8

server = subprocess.Popen(
    [llmcad, "serve", "-m", model, "--device", "cpu", "--port", "0", *extra],
    stdout=subprocess.PIPE,
    text=True,
)
try:
    host, port = server.stdout.readline().split("http://")[1].strip().split(":")

    def post(body, on_line=None):
        """POSTs a completion; calls on_line(line) per SSE line; returns the parsed body."""
        c = http.client.HTTPConnection(host, int(port), timeout=300)
        c.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        r = c.getresponse()
        if on_line is None:
            return json.loads(r.read())
        for line in r:
            on_line(line)
        c.close()

    def ttft_http():
        """Seconds from sending the request to the first text chunk, and the engine's own."""
        start = time.perf_counter()
        first = []
        last = {}

        def on_line(line):
            if line.startswith(b"data: {"):
                chunk = json.loads(line[6:])
                if not first and chunk["choices"][0]["text"]:
                    first.append(time.perf_counter() - start)
                if "llmcad" in chunk:
                    last.update(chunk["llmcad"])

        post({"prompt": PROMPT, "max_tokens": 4, "stream": True, "ignore_eos": True}, on_line)
        return first[0], last["prompt_ms"] / 1e3

    post({"prompt": PROMPT, "max_tokens": 4})  # warm-up
    http_s, engine_s = zip(*(ttft_http() for _ in range(RUNS)))

    # the library directly: `generate` reports the engine's time to its first token
    direct = []
    for _ in range(RUNS // 2):
        out = subprocess.run(
            [llmcad, "generate", "-m", model, "--device", "cpu", "-p", PROMPT, "-n", "4",
             "--ignore-eos", "--json", *extra],
            capture_output=True, text=True, check=True,
        )
        direct.append(json.loads(out.stdout)["stats"]["prompt_ms"] / 1e3)

    ms = lambda xs: f"{statistics.median(xs) * 1e3:.1f} ms"
    print(f"time to first token, median of {RUNS}: HTTP stream {ms(http_s)}, "
          f"engine inside the server {ms(engine_s)}, `generate` {ms(direct)}; "
          f"added by HTTP: {statistics.median([h - e for h, e in zip(http_s, engine_s)]) * 1e3:.1f} ms")

    for clients in (1, 4):
        per_client, tokens = 4, 64
        done = []

        def client():
            for _ in range(per_client):
                r = post({"prompt": PROMPT, "max_tokens": tokens, "ignore_eos": True})
                done.append(r["usage"]["completion_tokens"])

        start = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        print(f"{clients} client(s): {len(done)} requests of {tokens} tokens in {wall:.2f} s: "
              f"{sum(done) / wall:.1f} tokens/s, {len(done) / wall:.2f} requests/s")
finally:
    server.kill()
