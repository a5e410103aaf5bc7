"""One device vocabulary (cpu, gpu, auto) and one-line user errors on the command line."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from ctengine.cli import main
from ctengine.features import feature_device


def test_feature_devices():
    assert feature_device("cpu") == "cpu" and feature_device("gpu") == feature_device("cuda") == "gpu"
    assert feature_device("auto") in ("cpu", "gpu")
    with pytest.raises(ValueError, match="one of auto, cpu, gpu"):
        feature_device("tpu")


def test_torch_devices():
    torch = pytest.importorskip("torch")
    from ctengine.learn.device import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="one of auto, cpu, gpu"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs CUDA"):
            resolve_device("gpu")


@pytest.mark.parametrize("command", ["info", "train", "features"])
def test_a_user_error_is_one_line(command, tmp_path):
    result = CliRunner().invoke(main, [command, str(tmp_path / "missing.zarr")])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.output
    assert not (tmp_path / "missing.zarr").exists()
