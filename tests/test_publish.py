"""Hub publishing end to end against the local Hub server (tests/support/hub_server.py), every client in a
fresh process.

train a tiny adapter -> ``peft-debias publish`` -> ``PeftModel.from_pretrained(base, "org/name")`` in a new process
gives the local adapter's outputs exactly; the card read back with ``ModelCard.load`` carries the eval results in
its model-index; the pull works offline from the cache. Bias vectors and debiased models round-trip too.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from peft_debias.cards.results import figures
from peft_debias.eval.results import compare_results, load_results, save_results

from support.hub_server import client_env, run_client
from support.portable import assert_portable
from support.publish import folder_hashes, sample_results, train_tiny_adapter
from support.tiny_models import CORPUS
from support.vector import perturb

pytestmark = pytest.mark.e2e

REPO = "tester/gender-debias-lora"
BASE_REPO = "tester/tiny-llama"


def seed_base(hub, folder: Path, repo: str) -> None:
    """Put a model folder on the local Hub under ``repo``, as if its owner had published it."""
    hub.seed(repo, {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()})


def download(hub, repo: str, dest: Path, revision: str = "main") -> Path:
    """The files of ``repo`` as uploaded, written to ``dest`` (for the local-path checker)."""
    for name in hub.tree(repo, revision):
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_bytes(hub.file(repo, name, revision))
    return dest


@pytest.fixture(scope="module")
def adapter(tiny_models, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("publish_adapter")
    return train_tiny_adapter(tiny_models["llama"], root, "gender-lora", CORPUS, lr=5e-2, seed=3)


def _pull_script() -> str:
    return r"""
import json, sys, torch
from huggingface_hub import ModelCard
from peft import PeftModel
from peft_debias import load_debias_adapter
from peft_debias.loader.attach import adapter_parameters
from peft_debias.models.loading import load_model

base, local, repo = sys.argv[1:4]
def outputs(model, tok):
    batch = tok(["he is a doctor", "she is a nurse"], return_tensors="pt", padding=True, return_token_type_ids=False)
    with torch.no_grad():
        return model(**batch).logits
a, b, c = load_model(base), load_model(base), load_model(base)
remote = outputs(PeftModel.from_pretrained(a.model, repo).eval(), a.tokenizer)
here = outputs(PeftModel.from_pretrained(b.model, local).eval(), b.tokenizer)
plain = outputs(c.model, c.tokenizer)
frozen = load_debias_adapter(load_model(base).model, repo, mode="freeze")
card = ModelCard.load(repo)
from peft import AutoPeftModelForCausalLM
auto = outputs(AutoPeftModelForCausalLM.from_pretrained(repo).eval(), a.tokenizer)  # the base from the Hub id
print(json.dumps({
    "identical": torch.equal(remote, here),
    "auto_identical": torch.allclose(auto, here, atol=1e-6),
    "adapter_changes_outputs": not torch.allclose(plain, here),
    "frozen_adapter_params": sum(p.requires_grad for _, p in adapter_parameters(frozen)),
    "trainable_base_params": sum(p.requires_grad for p in frozen.parameters()),
    "library_name": card.data.library_name,
    "base_model": card.data.base_model,
    "tags": card.data.tags,
    "model_index": [[r.metric_type, r.dataset_config, r.metric_value] for r in card.data.eval_results or []],
    "text": card.text,
}))
"""


def test_adapter_publish_pull_and_card(adapter, tiny_models, hub_server, tmp_path) -> None:
    base = str(tiny_models["llama"])
    before = sample_results(base, None, 0.0)
    after = sample_results(base, adapter, 4.0)
    after["compare"] = compare_results(after, before)
    results = save_results(after, tmp_path / "results.json")
    expected = {(f.metric, f.axis, f.value, f.before) for f in figures(load_results(results))}
    hashes = folder_hashes(adapter)
    env = client_env(hub_server, tmp_path / "hf")
    seed_base(hub_server, tiny_models["llama"], BASE_REPO)  # the base, published under its Hub id

    run = run_client(
        ["-m", "peft_debias", "publish", str(adapter), REPO, "--results", str(results), "--base-model-id", BASE_REPO],
        env,
    )
    assert run.returncode == 0, run.stderr
    assert f"published adapter {adapter} to {REPO}@main" in run.stdout
    assert folder_hashes(adapter) == hashes, "publishing must not modify the local artifact"
    tree = hub_server.tree(REPO)
    assert set(tree) == {".gitattributes", "README.md", *(p for p in hashes if p != "README.md")}
    fixed = {"README.md", "adapter_config.json", "debias_config.json"}  # the base named by its Hub id
    for name in set(hashes) - fixed:
        assert hub_server.file(REPO, name) == (adapter / name).read_bytes(), name
    assert json.loads(hub_server.file(REPO, "adapter_config.json"))["base_model_name_or_path"] == BASE_REPO
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] is None
    uploaded = json.loads(hub_server.file(REPO, "debias_config.json"))
    assert uploaded["base_model"]["hub_id"] == BASE_REPO and uploaded["base_model"]["local_only"] is False
    assert hub_server.file(REPO, "README.md") != (adapter / "README.md").read_bytes()  # refreshed with results
    assert_portable(download(hub_server, REPO, tmp_path / "uploaded"), [tmp_path, adapter.parent])

    pull = run_client(["-c", _pull_script(), base, str(adapter), REPO], env)
    assert pull.returncode == 0, pull.stderr
    got = json.loads(pull.stdout.strip().splitlines()[-1])
    assert got["identical"] and got["adapter_changes_outputs"] and got["auto_identical"]
    assert got["frozen_adapter_params"] == 0 and got["trainable_base_params"] > 0
    assert got["library_name"] == "peft" and got["base_model"] == BASE_REPO
    assert {"peft", "debiasing", "bias-axis:gender", "lora"} <= set(got["tags"])
    assert f'PeftModel.from_pretrained(base, "{REPO}")' in got["text"]
    assert f'load_debias_adapter(model, "{REPO}", mode="freeze")' in got["text"]
    assert "before (base)" in got["text"] and "CrowS-Pairs stereotype score" in got["text"]
    index = {(m, cfg): v for m, cfg, v in got["model_index"]}
    for metric, axis, value, prior in expected:
        assert index[(metric, axis)] == pytest.approx(value, abs=1e-3)
        if prior is not None:
            assert index[(f"{metric}_before", axis)] == pytest.approx(prior, abs=1e-3)
    assert index[("stereotype_score", "gender")] == pytest.approx(53.25)
    assert index[("stereotype_score_before", "gender")] == pytest.approx(57.25)
    assert index[("perplexity_before", None)] == pytest.approx(25.21)

    # offline: the same pull from the Hub cache, without a single request
    seen = len(hub_server.requests)
    offline = run_client(
        [
            "-c",
            "import sys; from peft_debias import load_debias_adapter\n"
            "from peft_debias.models.loading import load_model\n"
            "m = load_debias_adapter(load_model(sys.argv[1]).model, sys.argv[2], mode='inference')\n"
            "print(sorted(m.peft_config))",
            base,
            REPO,
        ],
        client_env(hub_server, tmp_path / "hf", HF_HUB_OFFLINE="1"),
    )
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout.strip() == "['gender']"
    assert len(hub_server.requests) == seen


_VECTOR_SCRIPT = r"""
import json, sys
from dataclasses import asdict
from peft_debias.hub.publish import publish_artifact
vec, model = sys.argv[1:3]
base = "tester/tiny-llama"
one = publish_artifact(vec, "bias-vectors", revision="exp/v1", base_model_id=base)  # whoami's namespace, new branch
two = publish_artifact(model, "tester/gender-debiased-llama", private=True, base_model_id=base)
print(json.dumps([{k: v for k, v in asdict(r).items() if k != "card"} for r in (one, two)]))
"""

_VECTOR_PULL = r"""
import json, sys, torch
import huggingface_hub.constants as constants
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from peft_debias import BiasVector
from peft_debias.core.errors import DebiasError

vec, model = sys.argv[1:3]
local = BiasVector.load(vec)
remote = BiasVector.from_pretrained("tester/bias-vectors", revision="exp/v1")
same = local.keys() == remote.keys() and all(torch.equal(local.tensor(k), remote.tensor(k)) for k in local.keys())
try:
    BiasVector.from_pretrained("tester/bias-vectors")  # main has no vector: only the branch does
    main_error = None
except DebiasError as err:
    main_error = str(err)
pulled = AutoModelForCausalLM.from_pretrained("tester/gender-debiased-llama")
weights = load_file(model + "/model.safetensors")
model_same = all(torch.equal(p, weights[n]) for n, p in pulled.state_dict().items() if n in weights)
constants.HF_HUB_OFFLINE = True  # from the cache from now on
cached = BiasVector.from_pretrained("tester/bias-vectors", revision="exp/v1")
print(json.dumps({"same": same, "main_error": main_error, "model_same": model_same, "cached": len(cached)}))
"""


def test_vector_and_debiased_model_round_trip(tiny_models, hub_server, tmp_path) -> None:
    from peft_debias import BiasVector

    pre = tiny_models["llama"]
    biased = perturb(pre, tmp_path / "biased", seed=5)
    vector = BiasVector.from_models(pre, biased, axis="gender")
    vector.save(tmp_path / "vec", progress=False)
    vector.apply_to(pre, scale=-1.0, output=tmp_path / "debiased", progress=False)
    hashes = {name: folder_hashes(tmp_path / name) for name in ("vec", "debiased")}
    env = client_env(hub_server, tmp_path / "hf")

    run = run_client(["-c", _VECTOR_SCRIPT, str(tmp_path / "vec"), str(tmp_path / "debiased")], env)
    assert run.returncode == 0, run.stderr
    one, two = json.loads(run.stdout.strip().splitlines()[-1])
    assert one["repo_id"] == "tester/bias-vectors" and one["revision"] == "exp/v1" and one["kind"] == "bias_vector"
    assert two["kind"] == "debiased_model" and hub_server.repos["tester/gender-debiased-llama"].private
    assert set(hub_server.tree("tester/bias-vectors", "exp/v1")) >= {"bias_vector.json", "vector.safetensors"}
    assert set(hub_server.tree("tester/bias-vectors")) == {".gitattributes"}  # main untouched
    assert {name: folder_hashes(tmp_path / name) for name in hashes} == hashes
    card = hub_server.file("tester/bias-vectors", "README.md", "exp/v1").decode()
    assert 'BiasVector.from_pretrained("tester/bias-vectors")' in card and "not a model" in card

    pull = run_client(["-c", _VECTOR_PULL, str(tmp_path / "vec"), str(tmp_path / "debiased")], env)
    assert pull.returncode == 0, pull.stderr
    got = json.loads(pull.stdout.strip().splitlines()[-1])
    assert got["same"] and got["model_same"] and got["cached"] == len(vector)
    assert got["main_error"] and "tester/bias-vectors" in got["main_error"]


def test_local_only_base_is_refused_and_an_old_artifact_is_fixed_in_the_upload(
    adapter, tiny_models, hub_server, tmp_path
) -> None:
    """An artifact written before records were portable (local paths everywhere): refused without an id, with one
    line naming the flag and no request; with --base-model-id the uploaded copy is portable, the folder unchanged,
    and the load check still finds the base at the folder the old record names."""
    llama = tiny_models["llama"]
    old = tmp_path / "old"
    shutil.copytree(adapter, old)
    info = json.loads((old / "debias_config.json").read_text())
    kept = {k: v for k, v in info["base_model"].items() if k not in ("hub_id", "local_only")}
    info["base_model"] = {**kept, "name": str(llama), "path": str(llama)}
    info["corpus"][0]["source"] = str(adapter.parent / "corpus.txt")
    info["train_config"].update(base=str(llama), output=str(old))
    (old / "debias_config.json").write_text(json.dumps(info, indent=2))
    config = json.loads((old / "adapter_config.json").read_text())
    (old / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(llama)}))
    hashes = folder_hashes(old)
    env = client_env(hub_server, tmp_path / "hf")
    repo = "tester/old-style-lora"

    refused = run_client(["-m", "peft_debias", "publish", str(old), repo], env)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith("peft-debias: error:") and "only as a local folder" in line
    assert line.endswith("pass --base-model-id ORG/NAME, the base's Hub id")
    assert hub_server.tree(repo) == {}

    run = run_client(["-m", "peft_debias", "publish", str(old), repo, "--base-model-id", BASE_REPO], env)
    assert run.returncode == 0, run.stderr
    assert folder_hashes(old) == hashes, "publishing must not modify the local artifact"
    uploaded = download(hub_server, repo, tmp_path / "uploaded")
    assert_portable(uploaded, [tmp_path, adapter.parent, llama.parent])
    assert json.loads((uploaded / "adapter_config.json").read_text())["base_model_name_or_path"] == BASE_REPO
    base = json.loads((uploaded / "debias_config.json").read_text())["base_model"]
    assert base["hub_id"] == base["name"] == BASE_REPO and "path" not in base
    assert (uploaded / "adapter_model.safetensors").read_bytes() == (old / "adapter_model.safetensors").read_bytes()
