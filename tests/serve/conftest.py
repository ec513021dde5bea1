"""A real `kshot serve` app on 127.0.0.1 and an ephemeral port, with a small toy-world dataset under its root."""

import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


@pytest.fixture(scope="package")
def server(tmp_path_factory):
    import uvicorn

    from kshot.serve import ServeConfig, create_app
    from kshot.serve.safety import ZipLimits
    from kshot.toyworld.export import export_world
    from kshot.toyworld.generator import World

    base = tmp_path_factory.mktemp("serve")
    export_world(World(), "imagefolder", base / "data" / "toy", domains=("Creatures",), n_train=4, n_val=2, n_test=3,
                 seed=0)
    (base / "outside").mkdir()
    cfg = ServeConfig([base / "data"], base / "runs", base / "cache", max_upload_bytes=200_000, max_pixels=512 * 512,
                      max_zip_bytes=3_000_000, zip_limits=ZipLimits(max_bytes=20_000_000, max_ratio=50))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(cfg), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started:
        assert time.time() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    yield {"url": f"http://127.0.0.1:{port}", "base": base, "cfg": cfg}
    srv.should_exit = True
    thread.join(10)
