#!/usr/bin/env python3
"""summarize.py — turns one tools/gpu-check run into benchmarks/results/<date>-<gpu>/summary.json
and summary.md, and checks the pieces that run needs (tools/gpu-check --dry-run).

  summarize.py write --meta META.json --list LIST.txt --suite SUITE.txt [--torch TORCH.json]
               --goals goals.json --out DIR
      META: {"gpu", "driver", "cuda", "commit", "date", "host", "budget_s", "total_s",
             "steps": [{"name", "status", "seconds", "limit", "note"}],
             "tests": {"passed", "failed", "skipped"}, "memcheck": {"tests", "errors"},
             "python": {"passed", "failed", "skipped"}}   (unknown counts: null)
      LIST: flx_bench_suite --list; SUITE: its run's output (RESULT lines); TORCH:
      bench_torch.py --json. Every listed workload gets a row (a missing one with
      fluxion_us null and met false); ratio_to_copy uses the copy row of the same run.
      A row whose goal is a list ("all": the GPT-2 step) also gets speedup_vs_torch_eager,
      speedup_vs_torch_compiled and mfu.
  summarize.py check-goals --list LIST.txt --goals goals.json [--torch-list NAMES.txt]
      every listed workload has a goal, every goal a workload, and every PyTorch workload a
      suite row (a train step's base name stands for its three modes).
  summarize.py fake --list LIST.txt --out DIR
      writes a fake run (meta.json, suite.txt, torch.json) there, for the dry run.
  summarize.py validate FILE.json
      checks a summary.json has the fields and types the issue lists.
  summarize.py selftest
      the ratio and goal arithmetic against hand-computed values (the dry run runs it).
Standard library only (the GPU machine has no network).
"""
import argparse
import json
import math
import os
import re
import sys

STEP_MODES = (" eager", " plan", " plan+graph")
GOAL_KINDS = ("none", "reference", "min_copy_fraction", "max_us", "min_speedup", "min_mfu", "max_s_reached", "all")
PEERS = ("torch_us", "torch_graph_us", "torch_compile_us", "best_compiled")
ROW_KEYS = ("name", "shape", "dtype", "fluxion_us", "torch_us", "torch_graph_us", "ratio_to_copy",
            "goal", "met")


def read_list(path):
    rows = []
    with open(path) as f:
        for ln, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line:
                continue
            parts = line.split("\t")
            if len(parts) != 3 or not all(parts):
                raise ValueError(f"{path}:{ln}: expected name<TAB>shape<TAB>dtype, got {line!r}")
            rows.append(tuple(parts))
    names = [r[0] for r in rows]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate workload names")
    if not rows:
        raise ValueError(f"{path}: no workloads")
    return rows


def read_suite(path):
    """RESULT lines -> {name: (shape, dtype, us or None, bytes, note)}; also DONE counts."""
    res, done = {}, None
    if not path or not os.path.exists(path):
        return res, done
    with open(path, errors="replace") as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            if p[0] == "RESULT" and len(p) >= 7:
                try:
                    us = float(p[4])
                except ValueError:
                    us = float("nan")
                try:
                    nbytes = float(p[5])
                except ValueError:
                    nbytes = 0.0
                res[p[1]] = (p[2], p[3], None if math.isnan(us) else us, nbytes, p[6])
            elif p[0] == "DONE" and len(p) >= 4:
                done = {"listed": int(p[1]), "reported": int(p[2]), "failures": int(p[3])}
    return res, done


def torch_row(torch_rows, name):
    if name in torch_rows:
        return torch_rows[name]
    for m in STEP_MODES:
        if name.endswith(m) and name[: -len(m)] in torch_rows:
            return torch_rows[name[: -len(m)]]
    return {}


def peer_us(trow, peer):
    """The peer's time: a column of the PyTorch row, or best_compiled (the faster of its whole-step
    CUDA graph and torch.compile); None when PyTorch did not measure it."""
    if peer == "best_compiled":
        ts = [trow[k] for k in ("torch_graph_us", "torch_compile_us") if trow.get(k) is not None]
        return min(ts) if ts else None
    return trow.get(peer)


def note_mfu(note):
    """The model flops utilisation the suite wrote into a row's note ("MFU 0.473"), or None."""
    m = re.search(r"\bMFU ([0-9]*\.?[0-9]+)", note or "")
    return float(m.group(1)) if m else None


def judge(goal, us, ratio, trow, note):
    """met: True/False, or None when the row has no goal (or a speedup's peer was not measured)."""
    kind = goal.get("kind", "none")
    if kind in ("none", "reference"):
        return None
    if kind == "all":
        mets = [judge(g, us, ratio, trow, note) for g in goal["goals"]]
        return False if False in mets else (None if None in mets else True)
    if us is None:
        return False
    v = goal["value"]
    if kind == "min_copy_fraction":
        return ratio is not None and ratio >= v
    if kind == "max_us":
        return us <= v
    if kind == "min_speedup":
        peer = peer_us(trow, goal.get("peer", "torch_us"))
        return None if peer is None else peer / us >= v
    if kind == "min_mfu":
        mfu = note_mfu(note)
        return mfu is not None and mfu >= v
    if kind == "max_s_reached":
        return note.startswith("reached") and us / 1e6 <= v
    raise ValueError(f"unknown goal kind {kind!r}")


def r3(x):
    return None if x is None else round(x, 3)


def build(meta, listed, suite, torch_doc, goals):
    trows = (torch_doc or {}).get("rows", {})
    copy = next((suite[n] for n, _, _ in listed if goals.get(n, {}).get("kind") == "reference" and n in suite), None)
    copy_bw = copy[3] / copy[2] if copy and copy[2] and copy[3] > 0 else None  # bytes per us
    bench, missing = [], []
    for name, shape, dtype in listed:
        g = goals.get(name, {"kind": "none", "text": "no goal entry"})
        s = suite.get(name)
        us = s[2] if s else None
        nbytes = s[3] if s else 0.0
        note = s[4] if s else "not reported by the suite"
        if not s or us is None:
            missing.append(name)
        ratio = None
        if us and nbytes > 0 and copy_bw:
            ratio = (nbytes / us) / copy_bw
        tr = torch_row(trows, name)
        row = {"name": name, "shape": s[0] if s else shape, "dtype": s[1] if s else dtype,
               "fluxion_us": r3(us), "torch_us": r3(tr.get("torch_us")),
               "torch_graph_us": r3(tr.get("torch_graph_us")), "ratio_to_copy": r3(ratio),
               "goal": g.get("text", ""), "met": judge(g, us, ratio, tr, note), "note": note}
        if tr.get("torch_compile_us") is not None:
            row["torch_compile_us"] = r3(tr["torch_compile_us"])
        if g.get("kind") == "all" and us:  # the flagship's figures, beside its verdict
            eager, best = peer_us(tr, "torch_us"), peer_us(tr, "best_compiled")
            row["speedup_vs_torch_eager"] = r3(eager / us) if eager else None
            row["speedup_vs_torch_compiled"] = r3(best / us) if best else None
            row["mfu"] = note_mfu(note)
        if tr.get("note"):
            row["torch_note"] = tr["note"]
        bench.append(row)
    steps = meta.get("steps", [])
    not_run = [s["name"] for s in steps if s.get("status") == "not run"]
    failed = [s["name"] for s in steps if s.get("status") not in ("passed", "not run")]
    out = {k: meta.get(k) for k in ("gpu", "driver", "cuda", "commit", "date", "host", "budget_s", "total_s")}
    out.update({
        "ok": not not_run and not failed,
        "failed_steps": failed,
        "not_run": not_run,
        "steps": steps,
        "tests": meta.get("tests", {"passed": None, "failed": None, "skipped": None}),
        "memcheck": meta.get("memcheck", {"tests": None, "errors": None}),
        "python": meta.get("python", {"passed": None, "failed": None, "skipped": None}),
        "torch": (torch_doc or {}).get("torch"),
        "torch_partial": (torch_doc or {}).get("partial"),
        "copy_gb_per_s": r3(copy_bw / 1e3) if copy_bw else None,
        "goals": {"met": sum(r["met"] is True for r in bench), "missed": sum(r["met"] is False for r in bench),
                  "no_goal": sum(r["met"] is None for r in bench)},
        "bench_missing": missing,
        "bench": bench,
    })
    return out


def fmt(x, nd=1):
    return "-" if x is None else f"{x:.{nd}f}"


def markdown(s):
    L = [f"# gpu-check on {s['gpu']}", "",
         f"- result: **{'PASS' if s['ok'] else 'FAIL'}**"
         + (f" (failed: {', '.join(s['failed_steps'])})" if s["failed_steps"] else "")
         + (f" (not run: {', '.join(s['not_run'])})" if s["not_run"] else ""),
         f"- date {s['date']}, commit {s['commit']}, driver {s['driver']}, CUDA {s['cuda']}, host {s['host']}",
         f"- wall time {s['total_s']} s of a {s['budget_s']} s budget",
         f"- tests: {s['tests'].get('passed')} passed, {s['tests'].get('failed')} failed, "
         f"{s['tests'].get('skipped')} skipped (ctest, FLX_REQUIRE_GPU=1)",
         f"- python: {s['python'].get('passed')} passed, {s['python'].get('failed')} failed, "
         f"{s['python'].get('skipped')} skipped",
         f"- memcheck: {s['memcheck'].get('tests')} tests, {s['memcheck'].get('errors')} errors",
         f"- copy bandwidth {fmt(s['copy_gb_per_s'])} GB/s (every ratio_to_copy uses it); PyTorch "
         f"{s['torch']}{' (PARTIAL: ' + s['torch_partial'] + ')' if s['torch_partial'] else ''}",
         f"- goals: {s['goals']['met']} met, {s['goals']['missed']} missed, {s['goals']['no_goal']} without a goal",
         "", "| step | status | seconds | limit | note |", "|---|---|---|---|---|"]
    for st in s["steps"]:
        L.append(f"| {st['name']} | {st['status']} | {st.get('seconds')} | {st.get('limit')} | {st.get('note', '')} |")
    L += ["", "| workload | shape | dtype | fluxion us | torch us | torch graph us | of copy | goal | met |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in s["bench"]:
        met = {True: "yes", False: "**no**", None: "-"}[r["met"]]
        L.append(f"| {r['name']} | {r['shape']} | {r['dtype']} | {fmt(r['fluxion_us'])} | {fmt(r['torch_us'])} | "
                 f"{fmt(r['torch_graph_us'])} | {fmt(r['ratio_to_copy'], 3)} | {r['goal']} | {met} |")
    for r in s["bench"]:
        if "mfu" in r:
            L.append(f"\n{r['name']}: {fmt(r['speedup_vs_torch_eager'], 2)}x PyTorch eager, "
                     f"{fmt(r['speedup_vs_torch_compiled'], 2)}x its best compiled step, MFU {fmt(r['mfu'], 3)}")
    notes = [r for r in s["bench"] if r["note"]]
    if notes:
        L += ["", "Notes:", ""] + [f"- {r['name']}: {r['note']}" for r in notes]
    return "\n".join(L) + "\n"


def validate(doc):
    errs = []
    for k in ("gpu", "driver", "cuda", "commit", "tests", "memcheck", "bench", "ok", "not_run", "steps"):
        if k not in doc:
            errs.append(f"missing field {k}")
    for k in ("passed", "failed", "skipped"):
        if k not in doc.get("tests", {}):
            errs.append(f"tests.{k} missing")
    for k in ("tests", "errors"):
        if k not in doc.get("memcheck", {}):
            errs.append(f"memcheck.{k} missing")
    for i, r in enumerate(doc.get("bench", [])):
        for k in ROW_KEYS:
            if k not in r:
                errs.append(f"bench[{i}] ({r.get('name')}) lacks {k}")
        if r.get("met") not in (True, False, None):
            errs.append(f"bench[{i}].met is not a boolean or null")
    if not doc.get("bench"):
        errs.append("no bench rows")
    return errs


def cmd_write(a):
    listed = read_list(a.list)
    goals = json.load(open(a.goals))["goals"]
    suite, _ = read_suite(a.suite)
    torch_doc = None
    if a.torch and os.path.exists(a.torch):
        try:
            torch_doc = json.load(open(a.torch))
        except ValueError as e:
            print(f"summarize: {a.torch} unreadable ({e}); PyTorch columns left empty", file=sys.stderr)
    meta = json.load(open(a.meta))
    s = build(meta, listed, suite, torch_doc, goals)
    errs = validate(s)
    if errs:
        print("summarize: invalid summary: " + "; ".join(errs), file=sys.stderr)
        return 1
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(s, f, indent=1)
        f.write("\n")
    with open(os.path.join(a.out, "summary.md"), "w") as f:
        f.write(markdown(s))
    print(f"summarize: {len(s['bench'])} rows ({len(s['bench_missing'])} missing), goals {s['goals']}, "
          f"wrote {a.out}/summary.json and summary.md")
    return 0


def report(cmd, errs, summary=None):
    """Prints each problem to stderr and the summary line (with the problem count); the exit code."""
    for e in errs:
        print(f"{cmd}: {e}", file=sys.stderr)
    if summary is not None:
        print(f"{cmd}: {summary}, {len(errs)} problems")
    return 1 if errs else 0


def cmd_check_goals(a):
    names = [r[0] for r in read_list(a.list)]
    goals = json.load(open(a.goals))["goals"]
    errs = [f"workload without a goal: {n}" for n in names if n not in goals]
    errs += [f"goal without a workload: {n}" for n in goals if n not in names]
    def goal_errors(n, g, nested):
        kind = g.get("kind")
        if kind not in GOAL_KINDS or (nested and kind in ("all", "none", "reference")):
            return [f"{n}: unknown goal kind {kind!r}" + (" inside 'all'" if nested else "")]
        if kind == "all":
            subs = g.get("goals")
            if not isinstance(subs, list) or not subs:
                return [f"{n}: 'all' without a list of goals"]
            return [e for sub in subs for e in goal_errors(n, sub, True)]
        if kind not in ("none", "reference") and not isinstance(g.get("value"), (int, float)):
            return [f"{n}: goal without a numeric value"]
        if kind == "min_speedup" and g.get("peer", "torch_us") not in PEERS:
            return [f"{n}: unknown peer {g.get('peer')!r}"]
        return []
    for n, g in goals.items():
        errs += goal_errors(n, g, False)
    if sum(g.get("kind") == "reference" for g in goals.values()) != 1:
        errs.append("exactly one reference (copy) row expected")
    if a.torch_list:
        bases = set(names) | {n[: -len(m)] for n in names for m in STEP_MODES if n.endswith(m)}
        for t in open(a.torch_list).read().split("\n"):
            if t and t not in bases:
                errs.append(f"bench_torch.py workload not in the suite: {t}")
    return report("check-goals", errs, f"{len(names)} workloads, {len(goals)} goals")


def cmd_fake(a):
    listed = read_list(a.list)
    goals = json.load(open(a.goals))["goals"] if a.goals else {}
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "suite.txt"), "w") as f:
        for i, (n, shape, dt) in enumerate(listed):
            kind = goals.get(n, {}).get("kind")
            nbytes = 3 << 30 if kind in ("reference", "min_copy_fraction") else 0
            us = "nan" if i == len(listed) - 1 else f"{100.0 + i:.3f}"  # one failed row
            note = "reached 0.9 after 3 epochs" if kind == "max_s_reached" else "fake"
            f.write(f"RESULT\t{n}\t{shape}\t{dt}\t{us}\t{nbytes}\t{note}\n")
        f.write(f"DONE\t{len(listed)}\t{len(listed)}\t1\n")
    rows = {n: {"torch_us": 150.0, "torch_graph_us": None, "note": "fake"} for n, _, _ in listed[:5]}
    json.dump({"torch": "0.0-fake", "gpu": "Fake GPU", "partial": None, "rows": rows},
              open(os.path.join(a.out, "torch.json"), "w"))
    meta = {"gpu": "Fake GPU", "driver": "0", "cuda": "0", "commit": "0000000", "date": "1970-01-01",
            "host": "dry run", "budget_s": 360, "total_s": 1,
            "steps": [{"name": "build", "status": "passed", "seconds": 1, "limit": 120, "note": ""},
                      {"name": "memcheck", "status": "not run", "seconds": 0, "limit": 60,
                       "note": "compute-sanitizer not found"}],
            "tests": {"passed": 1, "failed": 0, "skipped": 0}, "memcheck": {"tests": None, "errors": None},
            "python": {"passed": 1, "failed": 0, "skipped": 0}}
    json.dump(meta, open(os.path.join(a.out, "meta.json"), "w"))
    return 0


def cmd_selftest(a):
    """Hand-computed expectations for every goal kind and the copy ratio."""
    del a
    listed = [("copy", "n", "f32"), ("add", "n", "f32"), ("sm", "n", "f32"), ("lu", "n", "f64"),
              ("step eager", "b", "f32"), ("step plan+graph", "b", "f32"), ("fm", "n", "f32"),
              ("fm2", "n", "f32"), ("gone", "n", "f32"), ("gpt plan+graph", "t", "bf16"),
              ("gpt2 plan+graph", "t", "bf16"), ("gpt3 plan+graph", "t", "bf16")]
    flagship = {"kind": "all", "goals": [{"kind": "min_speedup", "peer": "torch_us", "value": 1.2},
                                         {"kind": "min_speedup", "peer": "best_compiled", "value": 1.0},
                                         {"kind": "min_mfu", "value": 0.45}]}
    goals = {"copy": {"kind": "reference"}, "add": {"kind": "min_copy_fraction", "value": 0.97},
             "sm": {"kind": "min_copy_fraction", "value": 0.9},
             "lu": {"kind": "min_speedup", "peer": "torch_us", "value": 1.0},
             "step eager": {"kind": "none"}, "step plan+graph": {"kind": "max_us", "value": 100},
             "fm": {"kind": "max_s_reached", "value": 1.0}, "fm2": {"kind": "max_s_reached", "value": 1.0},
             "gone": {"kind": "max_us", "value": 1}, "gpt plan+graph": flagship, "gpt2 plan+graph": flagship,
             "gpt3 plan+graph": flagship}
    # copy: 2 GB in 1000 us = 2 GB/ms; add: 3 GB in 1530 us -> 0.980 of copy; sm: 2 GB in 2500 us -> 0.4
    suite = {"copy": ("n", "f32", 1000.0, 2e9, ""), "add": ("n", "f32", 1530.0, 3e9, ""),
             "sm": ("n", "f32", 2500.0, 2e9, ""), "lu": ("n", "f64", 50.0, 0.0, ""),
             "step eager": ("b", "f32", 900.0, 0.0, ""), "step plan+graph": ("b", "f32", 120.0, 0.0, ""),
             "fm": ("n", "f32", 0.8e6, 0.0, "reached 0.881 after 3 epochs"),
             "fm2": ("n", "f32", 0.5e6, 0.0, "not reached: best 0.87"),
             # 1.25x eager, 1.05x the faster compiled form (compile 21 < graph 22), MFU 0.46: met
             "gpt plan+graph": ("t", "bf16", 20.0, 0.0, "409600 tokens/s; MFU 0.460 of 989.4 TFLOP/s"),
             # MFU 0.44 < 0.45: missed though both speedups hold
             "gpt2 plan+graph": ("t", "bf16", 20.0, 0.0, "409600 tokens/s; MFU 0.440 of 989.4 TFLOP/s"),
             # slower than the graph peer (19 < 20): missed
             "gpt3 plan+graph": ("t", "bf16", 20.0, 0.0, "MFU 0.5")}
    torch_doc = {"rows": {"lu": {"torch_us": 40.0}, "step": {"torch_us": 1100.0, "torch_graph_us": 160.0},
                          "gpt": {"torch_us": 25.0, "torch_graph_us": 22.0, "torch_compile_us": 21.0},
                          "gpt2": {"torch_us": 25.0, "torch_graph_us": 22.0},
                          "gpt3": {"torch_us": 25.0, "torch_graph_us": 19.0}}}
    meta = {"steps": [{"name": "bench", "status": "passed", "seconds": 1, "limit": 2, "note": ""}]}
    out = build(meta, listed, suite, torch_doc, goals)
    rows = {r["name"]: r for r in out["bench"]}
    expect = {"copy": (1.0, None), "add": (round(1.5 / 1.53 / 1.0 * 1.0, 3), True), "sm": (0.4, False),
              "lu": (None, False), "step eager": (None, None), "step plan+graph": (None, False),
              "fm": (None, True), "fm2": (None, False), "gone": (None, False), "gpt plan+graph": (None, True),
              "gpt2 plan+graph": (None, False), "gpt3 plan+graph": (None, False)}
    errs = []
    for n, (ratio, met) in expect.items():
        if rows[n]["ratio_to_copy"] != ratio or rows[n]["met"] is not met:
            errs.append(f"{n}: ratio {rows[n]['ratio_to_copy']} met {rows[n]['met']}, expected {ratio} {met}")
    g = rows["gpt plan+graph"]
    if (g.get("speedup_vs_torch_eager"), g.get("speedup_vs_torch_compiled"), g.get("mfu")) != (1.25, 1.05, 0.46):
        errs.append(f"flagship figures {g.get('speedup_vs_torch_eager')} {g.get('speedup_vs_torch_compiled')} "
                    f"{g.get('mfu')}, expected 1.25 1.05 0.46")
    if rows["step plan+graph"]["torch_graph_us"] != 160.0 or rows["step eager"]["torch_us"] != 1100.0:
        errs.append("train-step rows do not carry their base row's PyTorch times")
    if out["bench_missing"] != ["gone"] or not out["ok"] or out["copy_gb_per_s"] != 2000.0:
        errs.append(f"missing {out['bench_missing']}, ok {out['ok']}, copy {out['copy_gb_per_s']}")
    return report("selftest", errs, f"{len(expect)} rows checked")


def cmd_validate(a):
    doc = json.load(open(a.file))
    errs = validate(doc)
    return report("validate", errs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    for k in ("meta", "list", "suite", "goals", "out"):
        w.add_argument("--" + k, required=True)
    w.add_argument("--torch")
    c = sub.add_parser("check-goals")
    c.add_argument("--list", required=True)
    c.add_argument("--goals", required=True)
    c.add_argument("--torch-list")
    f = sub.add_parser("fake")
    f.add_argument("--list", required=True)
    f.add_argument("--goals")
    f.add_argument("--out", required=True)
    sub.add_parser("selftest")
    v = sub.add_parser("validate")
    v.add_argument("file")
    a = ap.parse_args()
    try:
        return {"write": cmd_write, "check-goals": cmd_check_goals, "fake": cmd_fake,
                "validate": cmd_validate, "selftest": cmd_selftest}[a.cmd](a)
    except (OSError, ValueError, KeyError) as e:
        print(f"summarize {a.cmd}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
