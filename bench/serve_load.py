"""Bounded load test of the live service: recommend traffic before, during and after 5 item batches are added.

Starts ``genrecedit serve`` on loopback with a fresh state dir, sends ``/recommend`` from ``--threads`` client
threads (histories sampled from the run's test cases, empty ones included) for ``--before`` seconds, then while a
separate thread adds ``--batches`` batches of ``--batch-size`` new items one after another, then for ``--after``
seconds; stops by itself (``--max-seconds`` bounds everything). Writes ``serve_load.json`` and ``serve_load.md``
into ``--out``: p50/p99 client latency per phase, failed requests, edit time per batch, model config, catalog size,
thread counts.

``--replicas N`` (N > 1) serves on Ray Serve (``genrecedit serve --replicas N``: one Editor, N followers behind one
proxy). A sampler thread polls ``/health`` (which names the answering replica) every 20 ms, and each batch's row says
how far apart the first and the last replica began serving its ``model_version``.

New items are variants of catalog items (``"<title> (new edition N)"`` under a new id) unless ``--items`` gives a
JSONL file of ``{"item_id", "text"}``; variants have realistic text and neighbours, so their edits cost what a
shop's new items would.

    python bench/serve_load.py --model runs/game --threads 4 --before 20 --after 20
    python bench/serve_load.py --model runs/demo --replicas 2 --out runs/bench/serve_load_replicas
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from genrecedit.config import load_config
from genrecedit.runs.prepare import prepare
from genrecedit.serving.process import ServerProcess

PHASES = ("before", "during", "after")


def sample_histories(run_dir: Path, n: int, seed: int) -> tuple[list[list[str]], list[str], list[str]]:
    """n histories (item ids, oldest first) from the run's test cases, plus catalog ids and texts."""
    cfg = load_config(run_dir / "config.yaml")
    prepared = prepare(cfg, run_dir)
    split = prepared.split
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(split.test), min(n, len(split.test)), replace=False)
    ids = split.item_ids
    histories = [[ids[i] for i in split.test.histories[r] if i >= 0] for r in rows]
    texts = prepared.dataset.items.loc[ids, "text"].tolist()
    return histories, ids, texts


def new_items(ids: list[str], texts: list[str], n_batches: int, size: int, seed: int,
              items_file: Path | None) -> list[list[dict]]:
    if items_file is not None:
        rows = [json.loads(line) for line in Path(items_file).read_text().splitlines() if line.strip()]
    else:
        rng = np.random.default_rng(seed + 1)
        picks = rng.choice(len(ids), n_batches * size, replace=False)
        rows = [{"item_id": f"bench-new-{j}", "text": f"{texts[i]} (new edition {j})"} for j, i in enumerate(picks)]
    if len(rows) < n_batches * size:
        raise SystemExit(f"need {n_batches * size} new items, {items_file} has {len(rows)}")
    return [rows[b * size:(b + 1) * size] for b in range(n_batches)]


class Traffic:
    """Client threads sending /recommend until stopped; every request is tagged with the current phase."""

    def __init__(self, url: str, histories: list[list[str]], threads: int, seed: int) -> None:
        self.url, self.histories, self.seed = url, histories, seed
        self.phase = "before"
        self.records: list[tuple[str, float, bool, int]] = []  # phase, seconds, ok, model_version
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def _run(self, index: int) -> None:
        rng = np.random.default_rng(self.seed + 100 + index)
        with httpx.Client(base_url=self.url, timeout=60.0) as client:
            while not self._stop.is_set():
                history = self.histories[int(rng.integers(len(self.histories)))]
                phase, start = self.phase, time.perf_counter()
                try:
                    r = client.post("/recommend", json={"history": history})
                    ok, version = r.status_code == 200, (r.json().get("model_version", -1) if r.status_code == 200
                                                         else -1)
                    if not ok:
                        self._error(f"HTTP {r.status_code}: {r.text[:200]}")
                except httpx.HTTPError as err:
                    ok, version = False, -1
                    self._error(f"{type(err).__name__}: {err}")
                with self._lock:
                    self.records.append((phase, time.perf_counter() - start, ok, version))

    def _error(self, message: str) -> None:
        with self._lock:
            if len(self.errors) < 20:
                self.errors.append(message)

    def summary(self) -> dict:
        out = {}
        for phase in PHASES:
            rows = [r for r in self.records if r[0] == phase]
            lat = np.asarray([r[1] for r in rows if r[2]]) * 1e3
            out[phase] = {"requests": len(rows), "failed": sum(not r[2] for r in rows),
                          "p50_ms": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
                          "p99_ms": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
                          "model_versions": sorted({r[3] for r in rows if r[2]})}
        return out


class VersionSampler:
    """Polls /health until stopped: (monotonic time, replica, model_version) per answer."""

    def __init__(self, url: str, interval: float = 0.02) -> None:
        self.url, self.interval = url, interval
        self.samples: list[tuple[float, str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10.0) as client:
            while not self._stop.wait(self.interval):
                try:
                    h = client.get("/health").json()
                    self.samples.append((time.monotonic(), h.get("replica", "?"), int(h["model_version"])))
                except (httpx.HTTPError, ValueError, KeyError):
                    continue

    def replicas(self) -> list[str]:
        return sorted({r for _, r, _ in self.samples})

    def spread(self, version: int) -> float | None:
        """Seconds between the first and the last replica answering ``version`` (or later): how far apart the
        replicas swap (None: one never did; resolution: the polling interval)."""
        first = []
        for replica in self.replicas():
            at = [t for t, r, v in self.samples if r == replica and v >= version]
            if not at:
                return None
            first.append(min(at))
        return round(max(first) - min(first), 3)


def run(args: argparse.Namespace) -> dict:
    deadline = time.monotonic() + args.max_seconds
    histories, ids, texts = sample_histories(args.model, args.histories, args.seed)
    batches = new_items(ids, texts, args.batches, args.batch_size, args.seed, args.items)
    state = Path(args.state_dir or tempfile.mkdtemp(prefix="serve-load-"))
    overrides = [f"threads={args.server_threads}"] if args.server_threads else []
    edits: list[dict] = []
    extra = ["--replicas", str(args.replicas)] if args.replicas > 1 else []
    with ServerProcess(args.model, state, overrides + list(args.set or []), log=args.out / "server.log",
                       startup_timeout=300.0, extra_args=extra) as server:
        health = server.client.get("/health").json()
        traffic = Traffic(server.url, histories, args.threads, args.seed)
        sampler = VersionSampler(server.url)
        started = time.monotonic()
        traffic.start()
        sampler.start()
        try:
            _sleep_until(min(started + args.before, deadline))
            traffic.phase = "during"
            for batch in batches:
                if time.monotonic() > deadline:
                    break
                t0 = time.perf_counter()
                r = server.client.post("/items?wait=true", json={"items": batch},
                                       timeout=max(1.0, deadline - time.monotonic()))
                body = r.json()
                edits.append({"status": r.status_code, "batch_id": body.get("batch_id"), "n_items": len(batch),
                              "model_version": body.get("model_version"),
                              "wall_s": round(time.perf_counter() - t0, 3), "timings_s": body.get("timings_s"),
                              "recommendable": sum(x["rank"] is not None for x in body.get("items", [])),
                              "error": None if r.status_code == 200 else body.get("detail")})
            traffic.phase = "after"
            _sleep_until(min(time.monotonic() + args.after, deadline))
        finally:
            traffic.stop()
            sampler.stop()
        for e in edits:
            e["replicas_in_sync_s"] = sampler.spread(e["model_version"]) if e["model_version"] is not None else None
        final_health = server.client.get("/health").json()
        server_metrics = server.client.get("/metrics").json()
    cfg = load_config(args.model / "config.yaml", overrides + list(args.set or []))  # what the server ran
    return {"run": str(args.model), "device": cfg.device, "model": cfg.to_dict()["model"],
            "decode": cfg.to_dict()["decode"], "edit_lam": cfg.edit.lam, "overrides": overrides + list(args.set or []),
            "catalog_size": {"start": health["catalog_size"], "end": final_health["catalog_size"]},
            "threads": {"client": args.threads, "server_torch": args.server_threads or cfg.threads,
                        "cpus": _cpu_count()},
            "platform": platform.platform(), "replicas": {"requested": args.replicas, "seen": sampler.replicas()},
            "phases": traffic.summary(), "edits": edits,
            "errors": traffic.errors, "micro_batches": server_metrics["micro_batches"],
            "server_latency": server_metrics["requests"].get("POST /recommend"),
            "seconds": round(time.monotonic() - started, 1)}


def markdown(result: dict) -> str:
    m = result["model"]
    lines = [f"# Live service load test — {result['run']}", "",
             f"Model: d_model {m['d_model']}, {m['encoder_layers']}+{m['decoder_layers']} layers, d_ff {m['d_ff']}, "
             f"decoder d_ff {m['decoder_d_ff']}; beam {result['decode']['beam']}, k {result['decode']['k']}; "
             f"λ {result['edit_lam']}; device {result['device']}.",
             f"Catalog {result['catalog_size']['start']} → {result['catalog_size']['end']} items. Threads: "
             f"{result['threads']['client']} client, torch {result['threads']['server_torch']} "
             f"({result['threads']['cpus']} CPUs, client and server on one machine). {result['seconds']} s in all.",
             f"Replicas: {result['replicas']['requested']} requested, {len(result['replicas']['seen'])} answered "
             f"/health ({', '.join(result['replicas']['seen'])}).",
             "", "| phase | requests | failed | p50 ms | p99 ms | model versions |", "|---|---|---|---|---|---|"]
    for phase, s in result["phases"].items():
        lines.append(f"| {phase} | {s['requests']} | {s['failed']} | {s['p50_ms']} | {s['p99_ms']} | "
                     f"{s['model_versions']} |")
    lines += ["", "| batch | items | HTTP | edit s (solve path) | total s (server) | wall s (client) | "
                  "recommendable | replicas' swaps apart (s) |", "|---|---|---|---|---|---|---|---|"]
    for e in result["edits"]:
        t = e["timings_s"] or {}
        lines.append(f"| {e['batch_id']} | {e['n_items']} | {e['status']} | {t.get('edit')} | {t.get('total')} | "
                     f"{e['wall_s']} | {e['recommendable']}/{e['n_items']} | {e['replicas_in_sync_s']} |")
    mb = result["micro_batches"]
    lines += ["", f"Micro-batches: {mb['count']} for {mb['requests']} requests (mean {mb['mean_size']}, max "
                  f"{mb['max_size']}).", ""]
    if result["errors"]:
        lines += ["Errors (first 20):", *[f"- {e}" for e in result["errors"]], ""]
    return "\n".join(lines)


def _sleep_until(t: float) -> None:
    while time.monotonic() < t:
        time.sleep(min(0.1, t - time.monotonic()) if t > time.monotonic() else 0)


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="trained run directory")
    p.add_argument("--out", type=Path, default=Path("runs/serve_load"))
    p.add_argument("--state-dir", type=Path, default=None, help="default: a fresh temporary directory")
    p.add_argument("--threads", type=int, default=4, help="client threads sending /recommend")
    p.add_argument("--server-threads", type=int, default=None, help="torch threads of the server (run config)")
    p.add_argument("--before", type=float, default=15.0, help="seconds of traffic before the first batch")
    p.add_argument("--after", type=float, default=15.0, help="seconds of traffic after the last batch")
    p.add_argument("--batches", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--items", type=Path, default=None, help="JSONL of {item_id, text} to add (default: variants)")
    p.add_argument("--histories", type=int, default=2000, help="test histories to sample requests from")
    p.add_argument("--max-seconds", type=float, default=900.0, help="hard bound on the whole test")
    p.add_argument("--replicas", type=int, default=1, help="> 1: serve on Ray Serve with this many replicas")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", "-o", action="append", help="server config override, e.g. -o edit.lam=100")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result = run(args)
    (args.out / "serve_load.json").write_text(json.dumps(result, indent=2))
    (args.out / "serve_load.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
