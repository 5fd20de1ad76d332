#!/usr/bin/env python3
"""Import cycles in src/: between top-level modules, and between the files of one module.

Reads the `crate::` and `super::` paths of every file (tests modules excluded) and maps each
to the file it names. A module's mod.rs declaring its children, and a child reaching its
parent through `super::`, are not counted. Prints one line per cycle; `--deps` also prints
which top-level modules each one imports. Exit code 1 when there is a cycle.

    python3 scripts/import-cycles.py [--deps] [SRC_DIR]
"""
import os
import re
import sys


def modules(root):
    files = {}
    for d, _, names in os.walk(root):
        for f in names:
            if not f.endswith(".rs"):
                continue
            parts = os.path.relpath(os.path.join(d, f), root)[:-3].split("/")
            if parts[-1] == "mod":
                parts = parts[:-1]
            if parts in (["lib"], ["main"]):
                parts = []
            files[tuple(parts)] = os.path.join(d, f)
    return files


def imports(files):
    def resolve(path):
        for n in range(len(path), -1, -1):
            if tuple(path[:n]) in files:
                return tuple(path[:n])
        return None

    edges = {}
    for mod, path in files.items():
        src = open(path, encoding="utf-8").read()
        cut = src.find("#[cfg(test)]\nmod tests")
        src = re.sub(r"//.*", "", src if cut < 0 else src[:cut])
        targets = set()
        for m in re.finditer(r"\b(crate|super)((?:::\w+)+)", src):
            segs = m.group(2).strip(":").split("::")
            base = [] if m.group(1) == "crate" else list(mod[:-1])
            while segs and segs[0] == "super":
                base, segs = base[:-1], segs[1:]
            targets.add(resolve(base + segs))
        for m in re.finditer(r"use (crate|super)((?:::\w+)*)::\{([^}]*)\}", src):
            base = [] if m.group(1) == "crate" else list(mod[:-1])
            base += [s for s in m.group(2).split("::") if s]
            for name in re.findall(r"(?:^|,)\s*(\w+)", m.group(3)):
                targets.add(resolve(base + [name]))
        edges[mod] = {t for t in targets if t is not None and t != mod}
    return edges


def cycles(nodes, edges):
    """Strongly connected components of more than one node (Tarjan)."""
    sys.setrecursionlimit(10000)
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def main():
    args = [a for a in sys.argv[1:] if a != "--deps"]
    files = modules(args[0] if args else "src")
    edges = imports(files)
    name = lambda m: "::".join(m) or "crate"
    found = False
    top = {}
    for a, bs in edges.items():
        for b in bs:
            if a and b and a[0] != b[0]:
                top.setdefault(a[0], set()).add(b[0])
    for comp in cycles(set(top) | {b for bs in top.values() for b in bs}, top):
        found = True
        print("cycle between modules:", " ".join(sorted(comp)))
    related = lambda a, b: a[: len(b)] == b or b[: len(a)] == a
    files_only = {a: {b for b in bs if not related(a, b)} for a, bs in edges.items()}
    for comp in cycles(files, files_only):
        found = True
        print("cycle between files:", " ".join(sorted(name(m) for m in comp)))
    if "--deps" in sys.argv:
        for a in sorted(top):
            print(a, "->", " ".join(sorted(top[a])))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
