"""A small, realistic program for `make demo`: a few allocation sites, an
LRU-style cache that keeps growing, a reference cycle, and worker threads."""
import threading


class Node:
    def __init__(self, name):
        self.name = name
        self.peer = None


def make_cycle(n):
    """Pairs of nodes that point at each other: only the cyclic GC frees them."""
    for i in range(n):
        a, b = Node("a%d" % i), Node("b%d" % i)
        a.peer, b.peer = b, a


class Cache:
    def __init__(self, limit):
        self.limit = limit
        self.data = {}
        self.lock = threading.Lock()

    def get(self, key):
        with self.lock:
            value = self.data.get(key)
            if value is None:
                value = self.data[key] = bytearray(256 + key % 512)
                if len(self.data) > self.limit:
                    self.data.pop(next(iter(self.data)))
            return value


_audit_log = []  # module-level: every request appends, nothing ever removes


def handle_request(i):
    """A request handler with the classic leak: it keeps a record of every call."""
    payload = {"id": i, "body": "x" * 200}
    _audit_log.append(payload)
    return len(payload["body"])


def parse_records(count):
    rows = []
    for i in range(count):
        line = "%d,name%d,%f" % (i, i, i * 0.5)
        rows.append(tuple(line.split(",")))
    return rows


def worker(cache, start, results):
    total = 0
    for k in range(start, start + 20000):
        total += len(cache.get(k % 3000))
    results.append(total)


def main():
    cache = Cache(limit=2000)
    rows = parse_records(50000)
    make_cycle(5000)
    results = []
    threads = [threading.Thread(target=worker, args=(cache, i * 1000, results)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    served = sum(handle_request(i) for i in range(3000))
    blob = [bytes(1000) for _ in range(2000)]  # large-ish blocks, live at the end
    print("demo: %d rows, %d cached, %d blobs, %d results, %d bytes served"
          % (len(rows), len(cache.data), len(blob), len(results), served))


if __name__ == "__main__":
    main()
