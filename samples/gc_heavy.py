"""GC-heavy workload for `make bench` (census on/off comparison): many
short-lived reference cycles, a slowly growing set of survivors, and a few
long-lived containers, so every generation is collected many times."""
import sys


class Node:
    __slots__ = ("other", "payload", "__weakref__")

    def __init__(self, other=None):
        self.other = other
        self.payload = None


def main(rounds):
    survivors = []
    for i in range(rounds):
        a = Node()
        b = Node(a)
        a.other = b                       # a cycle: only the collector frees it
        a.payload = [i, (i, i + 1), {"k": i}]
        if i % 50 == 0:
            survivors.append(a)           # promoted, some die later (tenured garbage)
        if len(survivors) > 2000:
            del survivors[:1000]
    return len(survivors)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300000)
