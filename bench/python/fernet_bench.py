"""Fernet core benchmark for Python's cryptography: the same sizes and operations as bench/fernet.ts.

Reads {"sizes": [...], "seconds": s} on stdin; prints JSON {"version", "results": [{size, op, ops}]}.
"""
import json
import os
import sys
import time

import cryptography
from cryptography.fernet import Fernet


def rate(fn, seconds):
    fn()  # warm up
    n, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        fn()
        n += 1
        if n % 16 == 0 and time.perf_counter() >= deadline:
            break
    return n / (time.perf_counter() - start)


def main():
    cfg = json.load(sys.stdin)
    f = Fernet(Fernet.generate_key())
    results = []
    for size in cfg["sizes"]:
        msg = os.urandom(size)
        token = f.encrypt(msg)
        results.append({"size": size, "op": "encrypt", "ops": rate(lambda: f.encrypt(msg), cfg["seconds"])})
        results.append({"size": size, "op": "decrypt", "ops": rate(lambda: f.decrypt(token), cfg["seconds"])})
        results.append({"size": size, "op": "roundtrip", "ops": rate(lambda: f.decrypt(f.encrypt(msg)), cfg["seconds"])})
    print(json.dumps({"version": cryptography.__version__, "python": sys.version.split()[0], "results": results}))


main()
