#!/usr/bin/env python3
"""Fails when src/'s top-level modules import each other in a cycle.

A module is a file `src/x.rs` or a directory `src/x/`; an edge x -> y is any `crate::y`
path in x's files (a `use`, a `crate::{y, ..}` group or a path in an expression; comments
are ignored). Within one module, parents and children may refer to each other: the layers
of lib.rs's map are drawn between top-level modules. Prints every cycle with the files that
close it, and exits 1 if there is one. Run with --graph to print every edge.

A small script rather than a tool: cargo-modules and cargo-depgraph draw graphs of crates or
need a nightly toolchain to resolve paths; `crate::` paths are all this check needs.
"""
import os
import re
import sys

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
ROOTS = ("lib", "main")


def modules(src):
    mods = {}
    for root, _, files in os.walk(src):
        for f in files:
            if f.endswith(".rs"):
                path = os.path.join(root, f)
                top = os.path.relpath(path, src).split(os.sep)[0]
                top = top[:-3] if top.endswith(".rs") else top
                if top not in ROOTS:
                    mods.setdefault(top, []).append(path)
    return mods


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def group_heads(text, start):
    """Names at the top level of the `{...}` group opening at text[start]."""
    depth, names, expect = 0, [], True
    for m in re.finditer(r"[{},]|\w+", text[start:]):
        tok = m.group()
        if tok == "{":
            depth += 1
            expect = depth == 1
        elif tok == "}":
            depth -= 1
            if depth == 0:
                break
        elif tok == ",":
            expect = depth == 1
        elif expect and depth == 1:
            names.append(tok)
            expect = False
    return names


def edges(mods):
    out = {}
    for m, files in mods.items():
        for path in files:
            text = strip_comments(open(path).read())
            targets = re.findall(r"\bcrate::(\w+)", text)
            for g in re.finditer(r"\bcrate::\{", text):
                targets += group_heads(text, g.end() - 1)
            for t in targets:
                if t in mods and t != m:
                    out.setdefault(m, {}).setdefault(t, set()).add(os.path.relpath(path, os.path.join(SRC, "..")))
    return out


def cycles(mods, graph):
    index, low, stack, on, found, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, {})):
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
                found.append(sorted(comp))

    for v in sorted(mods):
        if v not in index:
            visit(v)
    return found


def main():
    src = os.path.normpath(SRC)
    mods = modules(src)
    graph = edges(mods)
    if "--graph" in sys.argv:
        for a in sorted(graph):
            print(f"{a} -> {', '.join(sorted(graph[a]))}")
    found = cycles(mods, graph)
    for comp in found:
        print("import cycle among: " + " ".join(comp))
        for a in comp:
            for b in sorted(graph.get(a, {})):
                if b in comp:
                    print(f"  {a} -> {b}: {', '.join(sorted(graph[a][b]))}")
    if found:
        print("A back-edge is a design question: pass a value or a trait down instead (CONVENTIONS.md).")
        return 1
    print(f"no import cycle among {len(mods)} modules of src/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
