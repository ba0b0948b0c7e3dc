"""s3:// paths from Python: a token file uploaded to an S3 server (moto's, on loopback) reads as the local
file does. The library reads its environment when it loads, so the check runs in a fresh interpreter that
sets the endpoint and credentials before it imports ferry."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("moto.server")
pytest.importorskip("boto3")
np = pytest.importorskip("numpy")

SCRIPT = textwrap.dedent("""
    import os, socket, sys
    import numpy as np
    from moto.server import ThreadedMotoServer

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(FERRY_S3_ENDPOINT=endpoint, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
                      AWS_REGION="us-east-1", FERRY_CACHE_DIR=sys.argv[1])
    import boto3
    tokens = np.random.default_rng(0).integers(0, 50000, size=20001, dtype=np.uint16)
    local = os.path.join(sys.argv[1], "..", "tokens.bin")
    tokens.tofile(local)
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="corpora")
    s3.put_object(Bucket="corpora", Key="toy/tokens.bin", Body=tokens.tobytes())

    import ferry  # loads the library, which reads the environment set above
    with ferry.Engine(ferry.CPU, sample_interval_ms=0) as eng:
        got = []
        for path in (local, "s3://corpora/toy/tokens.bin"):
            src = ferry.TokenSource(path, seq_len=100)
            with ferry.Iterator(eng, src, 50) as it:
                b = it.next()
                got.append(np.from_dlpack(b.field("x")).copy())
                b.release()
            src.close()
        assert (got[0] == got[1]).all() and got[0].shape == (50, 100)
        try:
            ferry.TokenSource("s3://corpora/toy/missing.bin", seq_len=100)
        except ferry.FerryIOError as e:
            assert "s3://corpora/toy/missing.bin" in str(e) and "HTTP 404" in str(e), e
        else:
            raise AssertionError("a missing object opened")
    server.stop()
    print("ok")
""")


def test_token_source_from_s3(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    env = dict(os.environ)
    for k in ("FERRY_S3_ENDPOINT", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        env.pop(k, None)
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(cache)], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr
