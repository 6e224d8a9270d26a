"""The torch version ddpm needs: stated in pyproject.toml, and a clear refusal below it."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest
import torch

import ddpm.training.trainer  # noqa: F401 (imported again under an old version below)
from ddpm.cli import main
from ddpm.runtime import TORCH_MINIMUM, require_torch

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_pyproject_states_the_minimum_the_code_checks():
    stated = re.findall(r'^\s*"torch>=([\d.]+)"', PYPROJECT.read_text(), flags=re.M)
    assert stated == [".".join(map(str, TORCH_MINIMUM))]
    # The APIs that set the minimum exist in the torch the tests run on.
    assert callable(torch.nn.utils.get_total_norm) and callable(torch.nn.utils.clip_grads_with_norm_)


@pytest.mark.parametrize("version, ok", [("2.5.1", False), ("2.5.0+cu124", False), ("1.13.1", False),
                                         ("2.6.0", True), ("2.6.0a0+git1234", True), ("2.13.0+cpu", True),
                                         ("3.0.0", True)])
def test_require_torch_reads_the_installed_version(monkeypatch, version, ok):
    monkeypatch.setattr(torch, "__version__", version)
    if ok:
        require_torch()
    else:
        with pytest.raises(ImportError, match=rf"needs torch >= 2\.6 .*this is torch {re.escape(version)}.*pip install"):
            require_torch()


def test_an_old_torch_fails_at_import_of_the_trainer_and_at_cli_start(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch, "__version__", "2.5.1")
    monkeypatch.delitem(sys.modules, "ddpm.training.trainer")  # restored afterwards
    with pytest.raises(ImportError, match=r"needs torch >= 2\.6.*this is torch 2\.5\.1"):
        importlib.import_module("ddpm.training.trainer")
    assert main(["noise", "--dataset", "digits", "--timesteps", "0,5", "--out", str(tmp_path / "f.png")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ddpm: error: ddpm needs torch >= 2.6") and "this is torch 2.5.1" in err
    assert not (tmp_path / "f.png").exists()
