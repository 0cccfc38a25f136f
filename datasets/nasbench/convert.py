#!/usr/bin/env python3
"""Converts the two NAS benchmarks shipped on PyPI into plain CSV files for blockdiff-dag.

Usage: convert.py ANALOG_WHEEL NBG_WHEEL OUT_DIR

* nb201_analog.csv — analog-nasbench (NAS-Bench-201 cell space, 15,625 cells, CIFAR-10).
  Columns: arch (six edge ops joined by '-'), baseline_accuracy, analog_accuracy,
  noisy_accuracy (percent). The tuple order and op codes are the package's own; the order
  (0→1, 0→2, 0→3, 1→2, 1→3, 2→3) and `1 = none` are inferred from the data and checked
  below (see README.md).
* nbg_<dataset>.csv — nas-bench-graph, one file per dataset. One row for *every* point of the
  generation space (each canonical link of the package × every op assignment but all-skip),
  with the benchmark's canonical hash (the package's own `valid_hash`, which folds isomorphic
  cells together) so the Rust side counts unique queries exactly like the benchmark.
  Columns: link (4 ints '-'), ops (4 names '-'), hash, valid_perf, perf, latency, params.

Pickles are read with a restricted unpickler (only the classes these files contain), so no
code from the wheels runs except nas-bench-graph's pure-Python `architecture` module.
"""
import csv
import io
import itertools
import os
import pickle
import sys
import zipfile


class _Record:
    """Stand-in for analognasbench.data.Architecture / DriftMeasurement (attributes only)."""

    def __setstate__(self, state):
        self.__dict__.update(state)


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module.startswith("analognasbench"):
            return _Record
        if module.startswith("numpy"):
            import numpy  # noqa: F401  (np.float64 scalars in nas-bench-graph)

            return super().find_class(module, name)
        if module == "builtins" and name in ("dict", "list", "tuple", "float", "int", "str"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected class {module}.{name}")


def _load(data: bytes):
    return _Unpickler(io.BytesIO(data)).load()


def _write(path, header, rows):
    tmp = path + ".part"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    os.replace(tmp, path)


def analog(wheel, out):
    with zipfile.ZipFile(wheel) as z:
        data = _load(z.read("analognasbench/data.anb"))
    rows = []
    for arch, rec in sorted(data.items()):
        assert tuple(rec.architecture) == tuple(arch) and len(arch) == 6
        assert all(0 <= o <= 4 for o in arch)
        rows.append(("-".join(map(str, arch)), rec.baseline_accuracy, rec.analog_accuracy,
                     rec.noisy_accuracy))
    assert len(rows) == 15625, len(rows)
    # Check the inferred encoding: op 1 ('none') on every edge of an input→output cut
    # disconnects the cell, which must give chance accuracy (10%) for every other choice.
    acc = {tuple(map(int, r[0].split("-"))): r[1] for r in rows}
    cuts = [(0, 1, 2), (2, 4, 5), (0, 2, 5)]  # out of node 0, into node 3, {0→1, 0→3, 2→3}
    for cut in cuts:
        worst = max(a for k, a in acc.items() if all(k[i] == 1 for i in cut))
        assert worst <= 10.0 + 1e-9, (cut, worst)
    best = max(rows, key=lambda r: r[1])
    print(f"nb201_analog: {len(rows)} cells, optimum {best[0]} = {best[1]}")
    _write(os.path.join(out, "nb201_analog.csv"),
           ["arch", "baseline_accuracy", "analog_accuracy", "noisy_accuracy"], rows)


def nas_bench_graph(wheel, out, tmp):
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp)
        names = sorted(n for n in z.namelist() if n.endswith(".bench"))
    sys.path.insert(0, tmp)
    from nas_bench_graph.architecture import Arch, gnn_list, gnn_list_proteins, link_list

    for name in names:
        ds = os.path.basename(name)[: -len(".bench")]
        with open(os.path.join(tmp, name), "rb") as f:
            bench = _load(f.read())
        ops = gnn_list_proteins if ds == "proteins" else gnn_list
        rows, seen = [], set()
        for link in link_list:
            for op in itertools.product(ops, repeat=4):
                if all(o == "skip" for o in op):
                    continue  # the benchmark excludes the all-skip cell
                h = Arch(list(link), list(op)).valid_hash()
                rec = bench[h]  # KeyError = the space and the benchmark disagree: fail loudly
                seen.add(h)
                rows.append(("-".join(map(str, link)), "-".join(op), h,
                             float(rec["valid_perf"]), float(rec["perf"]),
                             float(rec["latency"]), float(rec["para"])))
        assert seen == set(bench), f"{ds}: {len(set(bench) - seen)} benchmark cells unreachable"
        best = max(rows, key=lambda r: r[3])
        print(f"nbg_{ds}: {len(rows)} space points, {len(seen)} unique cells, "
              f"best valid {best[3]:.4f} ({best[0]} {best[1]})")
        _write(os.path.join(out, f"nbg_{ds}.csv"),
               ["link", "ops", "hash", "valid_perf", "perf", "latency", "params"], rows)


if __name__ == "__main__":
    analog_whl, nbg_whl, out_dir = sys.argv[1:4]
    os.makedirs(out_dir, exist_ok=True)
    import tempfile

    analog(analog_whl, out_dir)
    with tempfile.TemporaryDirectory() as t:
        nas_bench_graph(nbg_whl, out_dir, t)
