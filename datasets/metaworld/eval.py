#!/usr/bin/env python3
"""Evaluates a policy server on MetaWorld through the openpi websocket client (openpi-client 0.1.2).

    python eval.py --host 127.0.0.1 --port 8000 --tasks MT10 --episodes 10 --seed 0 \
        --max-steps 500 --replan 5 --out results.json
    python eval.py --random-policy ...   # uniform random actions, no server
    python eval.py --expert ...          # MetaWorld's scripted expert, no server

Reset seed of task index t, episode e: 1_000_000_000 + seed * 1_000_000 + t * 10_000 + e
(disjoint from record.py's seeds). Each query sends {"state": float32[39], "prompt": task name}
(float32[k, 39] when the server metadata says history k > 1); the reply must hold
"actions": [H, D] (D = 4) and may hold "server_timing": {name: ms}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

from record import ACT_DIM, TaskEnv, atomic_target, check_max_steps, publish, episode_seed, expert, parse_tasks


def wilson(k: int, n: int, z: float = 1.959963984540054) -> list[float]:
    if n == 0:
        return [0.0, 1.0]
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return [0.0 if k == 0 else max(0.0, mid - half), 1.0 if k == n else min(1.0, mid + half)]


def summary(xs) -> dict | None:
    if not xs:
        return None
    a = np.asarray(xs, dtype=np.float64)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean()), "n": int(a.size)}


def jsonable(x):
    if isinstance(x, dict):
        return {str(k.decode() if isinstance(k, bytes) else k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, bytes):
        return x.decode("utf-8", "replace")
    return x


def connect(host: str, port: int, timeout: float):
    """openpi-client 0.1.2 connects once and raises when the server is not up yet: retry."""
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            return WebsocketClientPolicy(host=host, port=port)
        except (OSError, EOFError, TimeoutError) as e:  # refused, reset, closed during handshake
            last = e
        except Exception as e:  # websockets.exceptions.InvalidHandshake / ConnectionClosed etc.
            if type(e).__module__.split(".")[0] != "websockets":
                raise
            last = e
        if time.monotonic() >= deadline:
            raise SystemExit(f"could not connect to ws://{host}:{port} within {timeout:g} s: {last!r}")
        time.sleep(0.5)


class ServerPolicy:
    def __init__(self, client, horizon: int, act_dim: int, history: int = 1):
        self.client, self.h, self.d, self.history = client, horizon, act_dim, history
        self.latency_ms: list[float] = []
        self.server_timing: dict[str, list[float]] = {}

    def chunk(self, past: list[np.ndarray], task: str, where: str) -> np.ndarray:
        """`past`: this episode's observations so far. Sends the last one as float32[39], or with
        metadata history k > 1 the last k as float32[k, 39], oldest first, the first observation
        repeated before the episode start."""
        import websockets

        if self.history == 1:
            state = past[-1]
        else:
            state = np.stack([past[max(0, len(past) - 1 - j)] for j in reversed(range(self.history))])
        req = {"state": np.asarray(state, dtype=np.float32), "prompt": task}
        t0 = time.perf_counter()
        try:
            resp = self.client.infer(req)
        except RuntimeError as e:  # the server answered with a text frame
            raise RuntimeError(f"policy server reported an error ({where}): {e}") from e
        except websockets.exceptions.ConnectionClosed as e:
            raise RuntimeError(f"policy server closed the connection ({where}): {e!r}") from e
        self.latency_ms.append((time.perf_counter() - t0) * 1e3)
        if not isinstance(resp, dict) or "actions" not in resp:
            keys = list(resp) if isinstance(resp, dict) else type(resp).__name__
            raise ValueError(f"reply without 'actions' ({where}): {keys}")
        acts = resp["actions"]
        if not isinstance(acts, np.ndarray):
            raise ValueError(
                f"'actions' did not decode to a numpy array ({where}) but to {type(acts).__name__}: arrays must be "
                "msgpack maps with BIN keys b'__ndarray__', b'data', b'dtype', b'shape' (openpi msgpack_numpy)")
        if acts.shape != (self.h, self.d):
            raise ValueError(f"'actions' has shape {acts.shape}, metadata says [{self.h}, {self.d}] ({where})")
        acts = acts.astype(np.float64)
        if not np.all(np.isfinite(acts)):
            raise ValueError(f"non-finite actions ({where})")
        for k, v in (resp.get("server_timing") or {}).items():
            if isinstance(v, (int, float, np.number)) and not isinstance(v, bool):
                self.server_timing.setdefault(str(k), []).append(float(v))
        return acts[:, :ACT_DIM]


def run_episode(env: TaskEnv, args, task: str, reset_seed: int, policy) -> tuple[bool, int]:
    """Returns (success, steps). `policy` is a ServerPolicy, "expert" or "random"."""
    obs = env.reset(reset_seed)
    if policy == "expert":
        pol = expert(task)
    elif policy == "random":
        rng = np.random.default_rng(reset_seed)
    queue: list[np.ndarray] = []  # replanning: remaining actions of the current chunk
    chunks: list[tuple[int, np.ndarray]] = []  # ensembling: (start step, chunk), oldest first
    past = [obs]
    for step in range(args.max_steps):
        where = f"task {task}, seed {reset_seed}, step {step}"
        if policy == "expert":
            a = np.asarray(pol.get_action(obs), dtype=np.float64)
        elif policy == "random":
            a = rng.uniform(-1.0, 1.0, size=ACT_DIM)
        elif args.ensemble > 0:
            chunks.append((step, policy.chunk(past, task, where)))
            chunks = [(s, c) for s, c in chunks if step - s < len(c)]
            preds = np.stack([c[step - s] for s, c in chunks])  # oldest first
            w = np.exp(-args.ensemble * np.arange(len(preds)))  # ACT: oldest gets weight exp(0)
            a = (w[:, None] * preds).sum(0) / w.sum()
        else:
            if not queue:
                queue = list(policy.chunk(past, task, where)[: args.replan])
            a = queue.pop(0)
        obs, success, terminated, truncated = env.step(np.clip(a, -1.0, 1.0).astype(np.float32))
        past.append(obs)
        if success:
            return True, step + 1
        if terminated or truncated:
            break
    return False, step + 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--tasks", default="MT10", help="MT10, MT50 or a comma list of task names")
    ap.add_argument("--episodes", type=int, default=10, help="episodes per task")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-steps", type=int, default=500)
    ap.add_argument("--replan", type=int, default=5, help="execute this many actions of each chunk (1..H)")
    ap.add_argument("--ensemble", type=float, default=0.0,
                    help="m > 0: ACT temporal ensembling, query every step, weights exp(-m*i), i=0 oldest")
    ap.add_argument("--goals", choices=["mt1", "fresh"], default="mt1",
                    help="mt1: the 50 fixed MT1 variations (default); fresh: new seeded goals")
    ap.add_argument("--out", default="results.json")
    ap.add_argument("--connect-timeout", type=float, default=60.0)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--random-policy", action="store_true", help="uniform random actions, no server")
    g.add_argument("--expert", action="store_true", help="scripted expert, no server")
    args = ap.parse_args(argv)

    tasks = parse_tasks(args.tasks)
    check_max_steps(args.max_steps)
    if args.episodes < 1 or args.ensemble < 0:
        raise SystemExit("--episodes must be >= 1 and --ensemble >= 0")
    episode_seed(args.seed, len(tasks) - 1, args.episodes - 1, eval_range=True)  # validates the ranges

    metadata, client = None, None
    try:
        if args.random_policy:
            policy = "random"
        elif args.expert:
            policy = "expert"
        else:
            client = connect(args.host, args.port, args.connect_timeout)
            metadata = jsonable(client.get_server_metadata())
            policy = server_policy(client, metadata, args, tasks)
        results = evaluate(args, tasks, policy, metadata)
    finally:
        ws = getattr(client, "_ws", None)  # close politely (openpi-client 0.1.2 has no close())
        if ws is not None:
            ws.close()

    tmp = atomic_target(args.out)
    try:
        with open(tmp, "w") as f:
            json.dump(results, f, indent=1)
            f.write("\n")
        publish(tmp, args.out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    print(json.dumps({"out": args.out, "success": results["success"], "success_ci95": results["success_ci95"]}))


def server_policy(client, metadata, args, tasks: list[str]) -> ServerPolicy:
    print("server metadata:", json.dumps(metadata), file=sys.stderr, flush=True)
    if not isinstance(metadata, dict):
        raise SystemExit(f"server metadata is not a map: {metadata!r}")
    try:
        h, d = int(metadata["action_horizon"]), int(metadata["action_dim"])
    except (KeyError, TypeError, ValueError) as e:
        raise SystemExit(f"server metadata lacks integer action_horizon/action_dim: {e!r}")
    if d != ACT_DIM:
        raise SystemExit(f"server action_dim {d}, MetaWorld needs {ACT_DIM}")
    if args.ensemble == 0 and not 1 <= args.replan <= h:
        raise SystemExit(f"--replan must be in 1..{h} (the server's action_horizon)")
    history = metadata.get("history", 1)
    if not isinstance(history, int) or history < 1:
        raise SystemExit(f"server metadata history {history!r} is not a positive integer")
    known = metadata.get("tasks")
    if isinstance(known, list):
        unknown = [t for t in tasks if t not in known]
        if unknown:
            print(f"warning: the server does not list tasks {unknown}", file=sys.stderr)
    return ServerPolicy(client, h, d, history)


def evaluate(args, tasks: list[str], policy, metadata) -> dict:
    t0 = time.perf_counter()
    per_task, pooled_k, pooled_n = {}, 0, 0
    for t, name in enumerate(tasks):
        env = TaskEnv(name, args.goals)
        eps = []
        for e in range(args.episodes):
            s = episode_seed(args.seed, t, e, eval_range=True)
            ok, steps = run_episode(env, args, name, s, policy)
            eps.append({"seed": s, "success": ok, "steps": steps})
        env.close()
        k = sum(x["success"] for x in eps)
        per_task[name] = {"success": k / len(eps), "ci95": wilson(k, len(eps)), "episodes": len(eps),
                          "successes": k, "per_episode": eps}
        pooled_k += k
        pooled_n += len(eps)
        r = per_task[name]
        print(f"{name:26s} {k:4d}/{len(eps):<4d} {r['success']:6.1%}  ci95 [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]",
              file=sys.stderr, flush=True)

    mean = float(np.mean([r["success"] for r in per_task.values()]))
    server = isinstance(policy, ServerPolicy)
    results = {
        "tasks": per_task,
        "success": mean,
        "success_ci95": wilson(pooled_k, pooled_n),
        "success_ci95_method": "Wilson score interval over all episodes pooled",
        "latency_ms": summary(policy.latency_ms) if server else None,
        "server_timing_ms": {k: summary(v) for k, v in policy.server_timing.items()} if server else None,
        "config": {**vars(args), "tasks": tasks,
                   "policy": "server" if server else policy,
                   "seed_scheme": "1_000_000_000 + seed*1_000_000 + task_index*10_000 + episode"},
        "server_metadata": metadata,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    print(f"{'mean over tasks':26s} {pooled_k:4d}/{pooled_n:<4d} {mean:6.1%}  ci95 (pooled) "
          f"[{results['success_ci95'][0]:.3f}, {results['success_ci95'][1]:.3f}]", file=sys.stderr)
    if server and results["latency_ms"]:
        lat = results["latency_ms"]
        print(f"round trip ms: p50 {lat['p50']:.2f}  p95 {lat['p95']:.2f}  p99 {lat['p99']:.2f}  "
              f"({lat['n']} queries)", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
