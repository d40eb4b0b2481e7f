"""Tallies an Autobahn fuzzingclient report: agent 'direct' and every agent through wslb
('wslb', 'wslb-wss').

Exit 1 if the echo backend fails a case on its own, or if any case fails through wslb
(over ws or wss) that does not fail directly.
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
    agents = ["direct"] + sorted(a for a in index if a != "direct")
    for agent in agents:
        results = index[agent]
        tallies[agent] = collections.Counter(r["behavior"] for r in results.values())
        print("%-8s %d cases: %s" % (agent, len(results), ", ".join(
            "%s %d" % kv for kv in sorted(tallies[agent].items()))))
    bad = False
    direct = index["direct"]
    for case in sorted(direct, key=key):
        if direct[case]["behavior"] == "FAILED":
            print("echo backend fails %s on its own" % case)
            bad = True
    for agent in agents[1:]:
        proxied = index[agent]
        for case in sorted(proxied, key=key):
            b = proxied[case]["behavior"]
            d = direct.get(case, {}).get("behavior")
            if b == "FAILED" and d != "FAILED":
                print("case %s FAILED through %s (direct: %s)" % (case, agent, d))
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
