#!/usr/bin/env python3
"""Traces a policy server's rollouts on one MetaWorld task next to the scripted expert.

    python trace.py --port 8000 --task reach-v3 --episodes 2 --every 10

Runs evaluation episodes (the same reset seeds as eval.py) through openpi-client, executing the
policy's first action of each chunk, and every `--every` steps prints the hand, gripper and first
object position, the goal offset, the policy's action and the action the scripted expert would
take in the same state. This is how a cloned policy's failure is read: does it act on the goal,
where does it stall, where do the two disagree.
"""

from __future__ import annotations

import argparse

import numpy as np

from eval import connect, jsonable, server_policy
from record import MT10, TaskEnv, episode_seed, expert


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--task", default="reach-v3", help="an MT10 task name")
    ap.add_argument("--episodes", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-steps", type=int, default=300)
    ap.add_argument("--every", type=int, default=10, help="print every this many steps")
    # server_policy checks these against the server's horizon: one action per chunk, no ensembling.
    ap.set_defaults(replan=1, ensemble=0.0)
    args = ap.parse_args(argv)
    if args.task not in MT10:
        raise SystemExit(f"--task must be one of {MT10}")
    if args.episodes < 1 or args.every < 1 or not 1 <= args.max_steps <= 500:
        raise SystemExit("--episodes and --every must be >= 1, --max-steps in 1..500")
    t = MT10.index(args.task)
    client = connect(args.host, args.port, 10.0)
    pol = server_policy(client, jsonable(client.get_server_metadata()), args, [args.task])
    env, ex = TaskEnv(args.task, "mt1"), expert(args.task)
    np.set_printoptions(precision=3, suppress=True)
    for e in range(args.episodes):
        obs = env.reset(episode_seed(args.seed, t, e, eval_range=True))
        past = [obs]
        print(f"episode {e} (MT1 variation {env.variation}): goal {obs[36:39]}, hand {obs[:3]}, object {obs[4:7]}")
        for step in range(args.max_steps):
            a = pol.chunk(past, args.task, f"step {step}")[0]
            if step % args.every == 0:
                want = np.clip(ex.get_action(obs), -1.0, 1.0)
                print(f"  step {step:3d} hand {obs[:3]} grip {obs[3]:.2f} object {obs[4:7]} "
                      f"goal-hand {obs[36:39] - obs[:3]} policy {a} expert {want}")
            obs, success, terminated, truncated = env.step(np.clip(a, -1.0, 1.0).astype(np.float32))
            past.append(obs)
            if success:
                print(f"  success at step {step}")
                break
            if terminated or truncated:
                break
        else:
            print(f"  no success in {args.max_steps} steps")
    env.close()


if __name__ == "__main__":
    main()
