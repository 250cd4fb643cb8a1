"""The Hugging Face adapters are found through interop's table and imported only when their format is met."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

import bigmodels
from bigmodels.errors import CheckpointError
from bigmodels.interop import ADAPTER_MODULES, FAMILY_FORMATS, get_hf_adapter, supported_model_types
from bigmodels.registry import get_family


@pytest.mark.parametrize("model_type", sorted(ADAPTER_MODULES))
def test_each_table_row_names_a_module_whose_adapter_matches_it(model_type):
    module = importlib.import_module(f"bigmodels.interop.{ADAPTER_MODULES[model_type]}")
    adapter = module.ADAPTER
    assert adapter.model_type == model_type and get_hf_adapter(model_type) is adapter
    assert FAMILY_FORMATS[adapter.family] == model_type
    assert get_family(adapter.family).config_cls.__module__ == f"bigmodels.models.{adapter.family}"


def test_the_families_and_an_unknown_model_type_import_no_adapter():
    """Building models and refusing a foreign model_type leave every adapter module unimported."""
    code = (
        "import sys, bigmodels\n"
        "from bigmodels.interop import get_hf_adapter\n"
        "from bigmodels.errors import CheckpointError\n"
        "for name in bigmodels.list_models(): bigmodels.get_spec(name)\n"
        "bigmodels.create_model('gpt_mini'); bigmodels.create_model('bert_mini')\n"
        "try:\n"
        "    get_hf_adapter('llama', 'ckpt')\n"
        "except CheckpointError as e:\n"
        "    print(e)\n"
        "print(sorted(m for m in sys.modules if m.startswith('bigmodels.interop.hf_')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    message, loaded = out.strip().splitlines()
    assert message == "ckpt: Hugging Face model_type 'llama' is not supported; bigmodels reads bert, gpt2, marian, vit"
    assert loaded == "[]"


def test_loading_a_directory_imports_its_adapter_and_refuses_unknown_types(tmp_path):
    model = bigmodels.create_model("gpt_mini")
    bigmodels.save(model, tmp_path / "gpt", format="hf")
    assert type(bigmodels.load(tmp_path / "gpt")) is type(model)
    assert "bigmodels.interop.hf_gpt2" in sys.modules
    config = tmp_path / "gpt" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "model_type": "llama"}))
    with pytest.raises(CheckpointError, match=f"model_type 'llama' is not supported; bigmodels reads "
                                              f"{', '.join(supported_model_types())}"):
        bigmodels.load(tmp_path / "gpt")


def test_saving_a_family_without_a_hugging_face_format_names_the_ones_that_have_one(tmp_path):
    with pytest.raises(CheckpointError, match=r"'resnet' family; save it with format='bigmodels' \(Hugging Face "
                                              r"formats exist for bert, gpt, transformer, vit\)"):
        bigmodels.save(bigmodels.create_model("resnet18"), tmp_path / "r", format="hf")
    assert not (tmp_path / "r").exists()
