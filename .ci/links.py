#!/usr/bin/env python3
"""Checks the relative links of README.md, docs/*.md and the README.md of each top-level
directory (tuning/, fuzz/, flamegraphs/), or of the files given.

A link's file must exist (relative to the page, inside the repository), and a `#anchor`
must be a heading of the target page as GitHub names it (lowercased; punctuation but `-`
and `_` dropped; spaces become `-`; a repeated heading gets `-1`, `-2`, ...), or an
explicit `<a name=...>`/`id=...`. An anchor into a file that is not Markdown may only be
a GitHub line anchor (`#L10`, `#L10-L20`). External links (`http:`, `https:`, `mailto:`)
are not fetched: CI runs offline. Links inside code (fenced blocks, `code spans`) are
text, not links.

Prints each broken link as `file:line: target: why` and exits 1 if there is any.
No dependency beyond Python 3's standard library (lychee is not installed here).
"""
import glob
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
# [text](target) and ![alt](target); the text may hold one level of brackets
# (`[`[tls]`](...)` after code spans are blanked is `[      ](...)`).
INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(\S+)")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"|\sid=\"([^\"]+)\"")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
LINE_ANCHOR = re.compile(r"^L\d+(-L\d+)?$")


def lines_outside_code(text):
    """(line number, line) for each line outside fenced code, code spans blanked."""
    fenced = False
    for n, line in enumerate(text.split("\n"), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        yield n, CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line)


def heading_text(raw):
    """What GitHub renders of a heading's Markdown: code, links and emphasis as text."""
    s = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", raw)  # links and images: their text
    s = re.sub(r"`+([^`]*)`+", r"\1", s)  # code spans: their content
    s = re.sub(r"(\*\*|__|\*|\b_|_\b)", "", s)  # emphasis markers
    s = re.sub(r"<[^>]+>", "", s)  # inline HTML
    return s


def slug(text):
    s = heading_text(text).strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def anchors(path, cache={}):
    """Every anchor a Markdown page offers."""
    if path not in cache:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        seen = {}
        found = set()
        fenced = False
        for line in text.split("\n"):
            if FENCE.match(line):
                fenced = not fenced
                continue
            if fenced:
                continue
            for m in HTML_ANCHOR.finditer(line):
                found.add(m.group(1) or m.group(2))
            h = HEADING.match(line)
            if h:
                base = slug(h.group(2))
                n = seen.get(base, 0)
                seen[base] = n + 1
                found.add(base if n == 0 else "%s-%d" % (base, n))
        cache[path] = found
    return cache[path]


def links(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    for n, line in lines_outside_code(text):
        for m in INLINE.finditer(line):
            yield n, m.group(1).strip("<>")
        d = REF_DEF.match(line)
        if d:
            yield n, d.group(1).strip("<>")


def check(page):
    """The broken links of one page, as (line, target, why)."""
    here = os.path.dirname(page)
    for n, target in links(page):
        if EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = page if file_part == "" else os.path.normpath(os.path.join(here, file_part))
        if os.path.relpath(dest, ROOT).startswith(".."):
            yield n, target, "points outside the repository"
            continue
        if not os.path.exists(dest):
            yield n, target, "no such file"
            continue
        if not anchor:
            continue
        if dest.endswith(".md") and os.path.isfile(dest):
            if anchor not in anchors(dest):
                yield n, target, "no heading or anchor #%s in %s" % (
                    anchor, os.path.relpath(dest, ROOT))
        elif not LINE_ANCHOR.match(anchor):
            yield n, target, "an anchor into a file that is not Markdown"


def main(args):
    pages = args or [os.path.join(ROOT, "README.md")] + sorted(
        glob.glob(os.path.join(ROOT, "docs", "*.md"))) + sorted(
        glob.glob(os.path.join(ROOT, "*", "README.md")))
    broken = 0
    checked = 0
    for page in pages:
        page = os.path.abspath(page)
        checked += sum(1 for _ in links(page))
        for n, target, why in check(page):
            print("%s:%d: %s: %s" % (os.path.relpath(page, ROOT), n, target, why))
            broken += 1
    if broken:
        print("links: %d broken (of %d in %d pages)" % (broken, checked, len(pages)))
        return 1
    print("links: ok (%d in %d pages)" % (checked, len(pages)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
