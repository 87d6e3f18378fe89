"""Allocation churn for `make bench`: builds and drops millions of small
dicts and lists (a few seconds untraced on python3.11)."""
import sys


def churn(rounds, width):
    keep = None
    for r in range(rounds):
        batch = []
        for i in range(width):
            d = {"i": i, "r": r}
            batch.append([d, i, (i, r)])
        keep = batch  # the previous batch is dropped here
    return len(keep)


if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    churn(rounds, 10000)
