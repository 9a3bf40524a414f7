"""The embedding API (``from dataplane import Engine``) and the example under docs/ that shows it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dataplane
from dataplane.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_docs_example_runs_a_custom_numba_forwarding_function():
    r = subprocess.run([sys.executable, str(ROOT / "docs" / "embedding_example.py")], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    # 32 packets enter with TTL 64: each is forwarded 63 times (+ the tx_first send), then dropped
    assert "forwarded 2048 packets, 32 dropped when their TTL ran out" in r.stdout


def test_engine_from_toml_start_stats_stop(tmp_path):
    cfg = tmp_path / "loop.toml"
    cfg.write_text(
        '[eal]\nlcores = "0-1"\nno_huge = true\nmemory_mb = 128\nfile_prefix = "emb%d"\n'
        '[[port]]\nvdev = "net_ring0,size=256"\n[forward]\nmode = "macswap"\ntx_first = true\n' % os.getpid()
    )
    with dataplane.Engine.from_toml(cfg) as eng:
        assert [p.name for p in eng.ports] == ["net_ring0"]
        eng.start()
        deadline = time.monotonic() + 60
        while eng.stats()["forward"]["rx"] < 10_000 and time.monotonic() < deadline:
            time.sleep(0.05)
        live = eng.stats()
        assert eng.running and live["forward"]["rx"] >= 10_000 and live["ports"][0]["link"]
        final = eng.stop()
        assert not eng.running
        f = final["forward"]
        assert f["dropped"] == 0 and f["tx"] == f["rx"] + 32  # 32 sent first, all kept circulating
        assert final["ports"][0]["ipackets"] == f["rx"]
    assert not os.path.exists(f"/var/run/dataplane/emb{os.getpid()}")


def test_engine_config_errors_are_config_errors(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[forward]\nmode = "warp"\n')
    with pytest.raises(ConfigError, match=r"bad.toml:2: forward.mode: unknown forwarding mode 'warp'"):
        dataplane.Engine.from_toml(cfg)
