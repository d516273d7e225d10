"""Shared fixtures. Tests never reach the hub: offline mode is forced before transformers loads."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402

from curriculum import cli  # noqa: E402


@pytest.fixture(scope="session")
def clip_model():
    from curriculum import zoo

    return zoo.load_clip("tiny", "cpu")


@pytest.fixture(scope="session")
def blip2_model():
    from curriculum import zoo

    return zoo.load_blip2("tiny", "cpu")


def run_cli(main, argv, capsys):
    """Run a script's main in-process as the shell would: (exit code, stdout, stderr)."""
    try:
        cli.run(main, argv)
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def cli_runner(capsys):
    return lambda main, argv: run_cli(main, argv, capsys)


@pytest.fixture(scope="session")
def onnx_export(tmp_path_factory):
    """(folder, manifest) of a fresh ONNX export of the tiny models: weeks 9-11 share it."""
    from stage3_moderation import export_onnx

    folder = tmp_path_factory.mktemp("onnx")
    return folder, export_onnx.export("tiny", "tiny", folder, n=32)


# ---------------------------------------------------------------- the moderation service (weeks 10-11)
def start_client(settings):
    """A TestClient of the moderation app, once /readyz says the models are loaded."""
    import time

    from fastapi.testclient import TestClient

    from stage3_moderation.app import create_app

    client = TestClient(create_app(settings))
    client.__enter__()
    deadline = time.monotonic() + 120
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.05)
    return client


@pytest.fixture(scope="module")
def service_client(onnx_export):
    """A ready TestClient of the moderation app with its default settings, shared by a module's tests."""
    from stage3_moderation.settings import Settings

    client = start_client(Settings(onnx_dir=onnx_export[0]))
    yield client
    client.__exit__(None, None, None)


@pytest.fixture
def start_service(onnx_export):
    """start_service(**settings) -> a ready TestClient on the tiny export (settings: Settings' fields,
    the rest from MODERATION_* variables); stopped after the test."""
    from stage3_moderation.settings import Settings

    clients = []
    yield lambda **settings: clients.append(start_client(Settings(onnx_dir=onnx_export[0], **settings))) or clients[-1]
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def serve_in_thread(onnx_export):
    """serve_in_thread(**settings) -> (base URL, app): a real server on loopback (serve.config: uvicorn
    with the HTTP limits), in a thread of this process, so a test can reach into the app (hold a
    stage, break a function) or its event loop (`app.state.loop`) while clients talk to it over real
    sockets. Stopped after the test."""
    import threading
    import time

    import httpx
    import uvicorn

    from stage3_moderation import serve as launcher
    from stage3_moderation.app import create_app
    from stage3_moderation.loadgen import free_port
    from stage3_moderation.settings import Settings

    servers = []

    def serve(**settings):
        app = create_app(Settings(onnx_dir=onnx_export[0], **settings))
        port = free_port()
        server = uvicorn.Server(launcher.config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    app.state.loop = server.servers[0].get_loop()
                    return url, app
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server was not ready in 120 s"
            time.sleep(0.05)

    yield serve
    for server, thread in servers:
        server.should_exit = True
        thread.join(30)
