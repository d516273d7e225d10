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
