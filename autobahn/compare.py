"""Tallies an Autobahn fuzzingclient report: each backend directly ('direct': wslb's echo;
'direct-deflate': a compressing Python websockets echo) and every agent through wslb in
front of it ('wslb', 'wslb-wss'; 'wslb-deflate'). An agent named '...-deflate' is compared
with 'direct-deflate', the others with 'direct'.

Exit 1 if a backend fails a case on its own, or if any case fails (or is UNIMPLEMENTED:
an extension lost on the way) through wslb that passes directly.
"""
import collections
import json
import sys


def key(case):
    return tuple(int(p) for p in case.split("."))


def main(path):
    with open(path) as f:
        index = json.load(f)
    tallies = {}
    bases = [a for a in ("direct", "direct-deflate") if a in index]
    agents = bases + sorted(a for a in index if a not in bases)
    for agent in agents:
        results = index.get(agent, {})
        tallies[agent] = collections.Counter(r["behavior"] for r in results.values())
        print("%-14s %d cases: %s" % (agent, len(results), ", ".join(
            "%s %d" % kv for kv in sorted(tallies[agent].items()))))
    bad = False
    for base in bases:
        for case in sorted(index[base], key=key):
            if index[base][case]["behavior"] == "FAILED":
                print("%s: the backend fails %s on its own" % (base, case))
                bad = True
    for agent in agents[len(bases):]:
        proxied = index[agent]
        direct = index["direct-deflate" if agent.endswith("-deflate") else "direct"]
        for case in sorted(proxied, key=key):
            b = proxied[case]["behavior"]
            d = direct.get(case, {}).get("behavior")
            if b in ("FAILED", "UNIMPLEMENTED") and d not in ("FAILED", "UNIMPLEMENTED"):
                print("case %s %s through %s (direct: %s)" % (case, b, agent, d))
                bad = True
            elif b != d:
                print("case %s: %s through %s, %s direct" % (case, b, agent, d))
        missing = set(direct) - set(proxied)
        if missing:
            print("cases missing through %s: %s" % (agent, ", ".join(sorted(missing, key=key))))
            bad = True
    print("autobahn: %s" % ("FAIL" if bad else "ok"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
