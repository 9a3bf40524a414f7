"""Embedding dataplane: a loopback port, a custom numba forwarding function, live statistics.

Run:  python3 docs/embedding_example.py
"""

import time

import numba
import numpy as np

from dataplane import Engine
from dataplane.memory.mempool import pktmbuf_free, seg_addr
from dataplane.rings.mem import ld8, st8

CONFIG = """
[eal]
lcores = "0-1"
no_huge = true
memory_mb = 128
file_prefix = "embed_example"

[[port]]
vdev = "net_ring0"      # alone: what it sends, it receives

[forward]
txpkts = [64]
"""


@numba.njit
def age_ttl(mp, lcore, pkts, n, params):
    """Decrement the IPv4 TTL of every packet; drop (free) those that reach 0.  Returns how many go on."""
    k = 0
    for i in range(n):
        m = pkts[i]
        a = seg_addr(mp, m)
        ttl = ld8(a + np.uint64(22))  # Ethernet 14 + IPv4 TTL at offset 8
        if ttl <= 1:
            pktmbuf_free(mp, lcore, m)
            continue
        st8(a + np.uint64(22), ttl - 1)  # (a real router would also fix the header checksum)
        pkts[k] = m
        k += 1
    return k


def main() -> dict:
    with Engine(CONFIG, fwd_fn=age_ttl) as eng:
        eng.start(tx_first=1)  # one burst of 32 txonly packets (TTL 64) enters the loop
        deadline = time.monotonic() + 60
        while eng.stats()["forward"]["dropped"] < 32 and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = eng.stop()
    f = stats["forward"]
    print(f"forwarded {f['tx']} packets, {f['dropped']} dropped when their TTL ran out")
    return stats


if __name__ == "__main__":
    main()
