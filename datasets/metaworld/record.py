#!/usr/bin/env python3
"""Records seeded MetaWorld (v3) expert demonstrations into one safetensors file.

    python record.py --tasks MT10 --episodes 50 --seed 0 --max-steps 500 --out demos.safetensors

Reset seed of task index t (position in --tasks) and episode e:
    seed * 1_000_000 + t * 10_000 + e          (eval.py adds 1_000_000_000)
The reset seed alone fixes the episode: see `TaskEnv.reset`. See README.md for the file format.

This module also holds the environment helpers that eval.py imports.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings

# Gymnasium's passive env checker and MetaWorld emit UserWarnings on every make/reset.
warnings.filterwarnings("ignore", category=UserWarning, module=r"(gymnasium|metaworld)(\..*)?$")
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(gymnasium|metaworld)(\..*)?$")

import numpy as np  # noqa: E402

FORMAT = "blockdiff-robot-demos/1"
SOURCE = "metaworld==3.1.1 scripted expert policies"
OBS_DIM = 39
ACT_DIM = 4
MT10 = [
    "reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3",
    "drawer-close-v3", "button-press-topdown-v3", "peg-insert-side-v3",
    "window-open-v3", "window-close-v3",
]
# Seed layout: seed * SEED_STRIDE + t * TASK_STRIDE + e (+ EVAL_OFFSET for evaluation).
SEED_STRIDE = 1_000_000
TASK_STRIDE = 10_000
EVAL_OFFSET = 1_000_000_000
# metaworld.MT1(name, seed=VARIATION_SEED) fixes the 50 goal/object variations of each task.
VARIATION_SEED = 0
HORIZON = 500  # MetaWorld's max_path_length; the env truncates there.


def parse_tasks(spec: str) -> list[str]:
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS, MT50_V3

    if spec == "MT10":
        return list(MT10)
    if spec == "MT50":
        return list(MT50_V3)
    tasks = [t.strip() for t in spec.split(",") if t.strip()]
    for t in tasks:
        if t not in ALL_V3_ENVIRONMENTS:
            raise SystemExit(f"unknown MetaWorld task {t!r} (expected MT10, MT50 or names like reach-v3)")
    if len(set(tasks)) != len(tasks):
        raise SystemExit("duplicate task in --tasks")
    if not tasks:
        raise SystemExit("--tasks is empty")
    return tasks


def episode_seed(seed: int, task_index: int, episode: int, eval_range: bool = False) -> int:
    if seed < 0 or not 0 <= task_index < SEED_STRIDE // TASK_STRIDE or not 0 <= episode < TASK_STRIDE:
        raise SystemExit(f"seed scheme needs seed >= 0, < 100 tasks and < {TASK_STRIDE} episodes")
    s = seed * SEED_STRIDE + task_index * TASK_STRIDE + episode
    return s + EVAL_OFFSET if eval_range else s


class TaskEnv:
    """One MetaWorld MT1 task (goal observable, 39-d obs, 4-d action) with seed-determined resets.

    metaworld 3.1.1 ignores `env.reset(seed=...)`: the variation drawn at reset depends on the
    construction seed and on how many resets came before. So the variation is chosen here:
    - goals="mt1": one of the 50 fixed MT1 variations of `MT1(name, seed=0)` (the standard
      multi-task set), index `np.random.default_rng(reset_seed).integers(50)`;
    - goals="mt1-cycle": the same 50 variations, index = episode number mod 50, so 50 episodes
      cover every variation once (a random draw covers only about 32 of them);
    - goals="fresh": a new variation drawn from the task's own random reset space with
      `np.random.default_rng(reset_seed)` (MetaWorld's `seeded_rand_vec` path), i.e. goals
      not in the 50-variation set.
    The env's np_random is reseeded with the reset seed too; MuJoCo itself is deterministic.
    """

    def __init__(self, name: str, goals: str = "mt1"):
        import gymnasium as gym
        import metaworld  # noqa: F401  (registers Meta-World/*)

        if goals not in ("mt1", "mt1-cycle", "fresh"):
            raise ValueError(goals)
        self.name = name
        self.goals = goals
        self.env = gym.make("Meta-World/MT1", env_name=name, seed=VARIATION_SEED, disable_env_checker=True)
        self.inner = self.env.unwrapped
        self.tasks = list(self.env.get_wrapper_attr("tasks"))
        self.env.get_wrapper_attr("toggle_sample_tasks_on_reset")(False)
        self.variation: int = -1

    def reset(self, reset_seed: int, episode: int = 0) -> np.ndarray:
        rng = np.random.default_rng(reset_seed)
        if self.goals in ("mt1", "mt1-cycle"):
            if self.goals == "mt1":
                self.variation = int(rng.integers(len(self.tasks)))
            else:
                self.variation = episode % len(self.tasks)
            self.inner.set_task(self.tasks[self.variation])
        else:
            self.variation = -1
            self.inner.set_task(self.tasks[0])  # observability and task constants
            self.inner._freeze_rand_vec = False
            self.inner.seeded_rand_vec = True
        self.inner.np_random = np.random.default_rng(reset_seed)
        obs, _ = self.env.reset()
        obs = np.asarray(obs, dtype=np.float64)
        assert obs.shape == (OBS_DIM,), obs.shape
        return obs

    def step(self, action: np.ndarray):
        obs, _r, terminated, truncated, info = self.env.step(action)
        return np.asarray(obs, dtype=np.float64), bool(info["success"]), bool(terminated), bool(truncated)

    def close(self):
        self.env.close()


def expert(name: str):
    from metaworld.policies import ENV_POLICY_MAP

    return ENV_POLICY_MAP[name]()


def check_max_steps(max_steps: int):
    if not 1 <= max_steps <= HORIZON:
        raise SystemExit(f"--max-steps must be in 1..{HORIZON} (MetaWorld truncates episodes at {HORIZON})")


def atomic_target(out: str) -> str:
    d = os.path.dirname(os.path.abspath(out))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(out) + ".", suffix=".tmp", dir=d)
    os.close(fd)
    return tmp


def publish(tmp: str, out: str):
    """Gives `tmp` the usual umask permissions (mkstemp and safetensors make 0600) and renames it."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, out)


# Noise injection (DART, Laskey et al. 2017): the executed arm motion is the expert's plus
# temporally correlated Gaussian noise, while the recorded label stays the expert's own action
# at the state actually visited. Clean demonstrations only visit states on the expert's path,
# so a policy that drifts off it (overshoots the goal, stalls beside it) meets states it never
# saw; with noise the data shows the expert correcting from such states. The gripper command
# is never perturbed (a dropped object ends the demonstration, not the lesson).
NOISE_RHO = 0.9  # AR(1) correlation of the noise from step to step (~10-step excursions)
# Noise near the object is what breaks the contact phases: push's expert goes back up above the
# puck whenever the hand is more than 2 cm off it in xy, so noisy pushing and lowering teach the
# policy to alternate "down" and "up". `noise_clear` > 0 keeps the executed motion clean while the
# hand is within that xy distance (m) of the first object (obs[4:6]): the free approach (and all
# of reach, whose puck is only a distractor) is perturbed, grasping and pushing are not.


def record_episode(env: TaskEnv, policy, reset_seed: int, episode: int, max_steps: int, extra_steps: int,
                   noise: float = 0.0, attempt: int = 0, noise_clear: float = 0.0):
    """One demonstration; `attempt` k > 0 re-records the same reset with the k-th noise draw."""
    obs = env.reset(reset_seed, episode)
    obs_l, act_l = [], []
    success_at = None
    rng = np.random.default_rng([reset_seed, 1 + attempt])
    n = np.zeros(ACT_DIM)
    for step in range(max_steps):
        a = np.clip(np.asarray(policy.get_action(obs), dtype=np.float64), -1.0, 1.0).astype(np.float32)
        obs_l.append(obs.astype(np.float32))
        act_l.append(a)
        if noise > 0:
            n[:3] = NOISE_RHO * n[:3] + np.sqrt(1 - NOISE_RHO**2) * noise * rng.standard_normal(3)
            if noise_clear <= 0 or np.linalg.norm(obs[:2] - obs[4:6]) > noise_clear:
                a = np.clip(a + n, -1.0, 1.0).astype(np.float32)
        obs, success, terminated, truncated = env.step(a)
        if success and success_at is None:
            success_at = step
        if success_at is not None and step - success_at >= extra_steps:
            break
        if terminated or truncated:
            break
    return np.stack(obs_l), np.stack(act_l), success_at is not None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="MT10", help="MT10, MT50 or a comma list of task names")
    ap.add_argument("--episodes", type=int, default=50, help="episodes per task")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-steps", type=int, default=500)
    ap.add_argument("--extra-steps", type=int, default=10, help="steps kept after the first success")
    ap.add_argument("--keep-failed", action="store_true", help="keep episodes where the expert failed")
    ap.add_argument("--goals", choices=["mt1-cycle", "mt1", "fresh"], default="mt1-cycle",
                    help="mt1-cycle: episode e on MT1 variation e mod 50, so 50 episodes cover all 50 "
                         "(default); mt1: a seeded random variation per episode; fresh: new seeded goals")
    ap.add_argument("--noise", type=float, default=0.0,
                    help="std of the correlated noise added to the executed arm motion (DART); the recorded "
                         "actions stay the expert's (0 = clean demonstrations)")
    ap.add_argument("--noise-clear", type=float, default=0.0,
                    help="with --noise: no noise while the hand is within this xy distance (m) of the first "
                         "object, so contact phases stay clean (0 = noise everywhere)")
    ap.add_argument("--noise-retries", type=int, default=5,
                    help="with --noise: re-record a failed episode (same reset, next noise draw) up to this many "
                         "times, so noise does not cost the hard tasks their demonstrations")
    ap.add_argument("--out", default="demos.safetensors")
    args = ap.parse_args(argv)

    from safetensors.numpy import save_file

    tasks = parse_tasks(args.tasks)
    check_max_steps(args.max_steps)
    if args.episodes < 1 or args.extra_steps < 0:
        raise SystemExit("--episodes must be >= 1 and --extra-steps >= 0")
    if args.noise_clear < 0:
        raise SystemExit("--noise-clear must be >= 0")
    if not (0.0 <= args.noise <= 2.0):
        raise SystemExit("--noise must be in [0, 2]")
    if args.noise_retries < 0:
        raise SystemExit("--noise-retries must be >= 0")
    episode_seed(args.seed, len(tasks) - 1, args.episodes - 1)  # validates the ranges

    t0 = time.perf_counter()
    obs_all, act_all, offsets = [], [], [0]
    ep_task, ep_seed, ep_success = [], [], []
    summary = {}
    for t, name in enumerate(tasks):
        env, policy = TaskEnv(name, args.goals), expert(name)
        ok = kept = steps = retried = 0
        for e in range(args.episodes):
            s = episode_seed(args.seed, t, e)
            o, a, success = record_episode(env, policy, s, e, args.max_steps, args.extra_steps, args.noise,
                                            noise_clear=args.noise_clear)
            ok += success
            attempt = 0
            while not success and args.noise > 0 and attempt < args.noise_retries:
                attempt += 1
                retried += 1
                o, a, success = record_episode(env, policy, s, e, args.max_steps, args.extra_steps, args.noise,
                                               attempt, noise_clear=args.noise_clear)
            if success or args.keep_failed:
                obs_all.append(o)
                act_all.append(a)
                offsets.append(offsets[-1] + len(o))
                ep_task.append(t)
                ep_seed.append(s)
                ep_success.append(int(success))
                kept += 1
                steps += len(o)
        env.close()
        summary[name] = {"kept": kept, "episodes": args.episodes, "expert_success": ok / args.episodes,
                         "steps": steps, "noise_retries": retried}
        print(f"{name:26s} expert success {ok:4d}/{args.episodes:<4d} kept {kept:4d} episodes, {steps:7d} steps, "
              f"{retried} noise retries",
              file=sys.stderr, flush=True)

    if not obs_all:
        raise SystemExit("no episode kept (all failed; use --keep-failed)")
    tensors = {
        "obs": np.ascontiguousarray(np.concatenate(obs_all), dtype=np.float32),
        "actions": np.ascontiguousarray(np.concatenate(act_all), dtype=np.float32),
        "episode_offsets": np.asarray(offsets, dtype=np.int64),
        "episode_task": np.asarray(ep_task, dtype=np.int64),
        "episode_seed": np.asarray(ep_seed, dtype=np.int64),
        "episode_success": np.asarray(ep_success, dtype=np.int64),
    }
    metadata = {
        "format": FORMAT,
        "tasks": json.dumps(tasks),
        "obs_dim": str(OBS_DIM),
        "act_dim": str(ACT_DIM),
        "source": SOURCE,
        "seed": str(args.seed),
        "max_steps": str(args.max_steps),
        "extra_steps": str(args.extra_steps),
        "goals": args.goals,
        "keep_failed": str(int(args.keep_failed)),
        "noise": str(args.noise),
        "noise_retries": str(args.noise_retries),
        "noise_clear": str(args.noise_clear),
    }
    tmp = atomic_target(args.out)
    try:
        save_file(tensors, tmp, metadata=metadata)
        publish(tmp, args.out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    n = int(tensors["obs"].shape[0])
    print(json.dumps({"out": args.out, "tasks": summary, "episodes_kept": len(ep_task), "total_steps": n,
                      "seconds": round(time.perf_counter() - t0, 2)}))


if __name__ == "__main__":
    main()
