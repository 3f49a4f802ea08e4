"""Where a request's time goes in the gateway's server process: py-spy samples it while
wrk drives one connection (run on demand; prints the functions that hold the time).

    pip install py-spy && python tests/benchmarks/profile_path.py [--stream] [--seconds 15]

The set-up of ``bench_litellm.py`` (its config imported with ``llm_bootstrap``, the
zero-latency fake upstream in its own process, Uvicorn with the demo's middleware), then
``py-spy record --format raw`` on the server while ``wrk -c1`` posts
``/v1/chat/completions``. Prints each function's share of the samples it appears in
(inclusive) and of those it is on top of (own time), and writes the collapsed stacks
(``--out``) for a flame graph.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_concurrency import free_port, server_command, start
from bench_litellm import CONFIG, bench_env, bootstrap, wait_http, wrk


def frame_name(frame: str) -> str:
    """``function (path/file.py:12)`` as ``function path/file.py``."""
    function, _, where = frame.partition(" (")
    return f"{function} {where.split(':')[0].rstrip(')')}"


def summarize(stacks: Path, top: int) -> None:
    inclusive: collections.Counter = collections.Counter()
    own: collections.Counter = collections.Counter()
    total = 0
    for line in stacks.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        if not frames or not count.isdigit():
            continue
        n = int(count)
        names = [
            f.split(" (")[0] + " " + f.split(" (")[-1].split(":")[0].rstrip(")")
            for f in frames.split(";")
        ]
        total += n
        for name in set(names):
            inclusive[name] += n
        own[names[-1]] += n
    print(f"{total} samples")
    print("inclusive (the function or what it called):")
    for name, n in inclusive.most_common(top):
        print(f"  {n / total * 100:5.1f} %  {name}")
    print("own (on top of the stack):")
    for name, n in own.most_common(top):
        print(f"  {n / total * 100:5.1f} %  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--top", type=int, default=45)
    parser.add_argument("--out", type=Path, default=Path("/tmp/gateway-stacks.txt"))
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp())
    env = bench_env(workdir)
    procs = []
    try:
        fake = start([sys.executable, "-m", "tests.fakes.fast_openai"], env, ready="READY")
        procs.append(fake)
        config = workdir / "config.yaml"
        config.write_text(CONFIG.format(upstream=fake.ready_line.split()[1]))
        token = bootstrap(env, config)
        port = free_port()
        server = start(server_command("uvicorn", port), env, log=workdir / "gateway.log")
        procs.append(server)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        wait_http(f"http://127.0.0.1:{port}/api/schema/")
        options = {"model": "bench", "key": token, "stream": args.stream, "workdir": workdir}
        wrk(url, seconds=3, clients=1, **options)  # warm
        spy = subprocess.Popen(
            [
                "py-spy",
                "record",
                "--pid",
                str(server.pid),
                "--duration",
                str(args.seconds),
                "--rate",
                "500",
                "--format",
                "raw",
                "--output",
                str(args.out),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        result: dict = {}
        load = threading.Thread(
            target=lambda: result.update(wrk(url, seconds=args.seconds, clients=1, **options))
        )
        load.start()
        load.join()
        spy.wait(60)
        print(
            f"{'streaming' if args.stream else 'plain'}, one connection: "
            f"{result['rps']:.1f} req/s, p50 {result['p50']:.2f} ms"
        )
        summarize(args.out, args.top)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(15)


if __name__ == "__main__":
    main()
