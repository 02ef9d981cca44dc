"""Our published artifacts in other people's clients, by repo id, each client in a fresh process.

The realistic user path against the local Hub server (tests/support/hub_server.py), the base models served
under Hub ids (tests/support/hub_models.py): ``peft-debias train --base tiny-org/tiny-llama`` (the base given by
its id), ``peft-debias publish``, then PEFT (``PeftModel``, ``AutoPeftModelFor*``), transformers (``pipeline``,
``model.load_adapter``), sentence-transformers and lm-evaluation-harness load the adapters by repo id. Every
check compares numbers: the adapter changes the base's outputs, and each client's outputs equal what our own
loader (``load_debias_adapter``) gives on the same input.
"""

from __future__ import annotations

import json

import pytest

from support.clients import BATCH_CLI, report, require_client, train_argv, transformers_adapter_api_problem
from support.hub_models import TINY_IDS
from support.hub_server import client_env, run_client
from support.tiny_models import CORPUS
from support.vector import load_all, perturb

pytestmark = pytest.mark.e2e

LLAMA, BERT = TINY_IDS["llama"], TINY_IDS["bert_encoder"]
REPOS = {
    "lora": "tester/clients-llama-lora",
    "prefix": "tester/clients-llama-prefix",
    "prompt": "tester/clients-llama-prompt",
    "encoder": "tester/clients-bert-lora",
    "debiased": "tester/clients-llama-debiased",
}
CHANGED = 1e-3  # an adapter must move some logit / embedding by more than this
SAME = 1e-5  # two clients agree when every output is this close


@pytest.fixture(scope="module")
def published(hub_server, hub_bases, tiny_models, tmp_path_factory) -> dict:
    """Train by Hub id and publish: the LoRA through its own ``peft-debias train`` process, the rest in one."""
    root = tmp_path_factory.mktemp("clients")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(CORPUS) + "\n")
    env = client_env(hub_server, root / "hf")
    out = {name: root / name for name in REPOS}
    run = run_client(["-m", "peft_debias", *train_argv(LLAMA, out["lora"], corpus)], env)  # `peft-debias train`
    assert run.returncode == 0, run.stderr
    biased = perturb(tiny_models["llama"], root / "biased", seed=5, noise=0.05)
    argvs = [
        train_argv(LLAMA, out["prefix"], corpus, method="prefix"),
        train_argv(LLAMA, out["prompt"], corpus, method="prompt"),
        train_argv(BERT, out["encoder"], corpus),
        ["vector", "--base", LLAMA, "--biased", str(biased), "--axis", "gender", "--lambda", "1",
         "--output", str(out["debiased"]), "--no-progress"],
        *(["publish", str(out[name]), repo] for name, repo in REPOS.items()),
    ]  # fmt: skip
    assert report(["-c", BATCH_CLI, json.dumps(argvs)], env) == [0] * len(argvs)
    return {"env": env, "out": out, "root": root}


def test_published_adapters_name_the_base_by_its_hub_id(published, hub_server) -> None:
    for name, base in [("lora", LLAMA), ("prefix", LLAMA), ("prompt", LLAMA), ("encoder", BERT)]:
        config = json.loads(hub_server.file(REPOS[name], "adapter_config.json"))
        assert config["base_model_name_or_path"] == base, name
        assert (
            hub_server.file(REPOS[name], "adapter_model.safetensors")
            == (published["out"][name] / "adapter_model.safetensors").read_bytes()
        )


CAUSAL = r"""
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
from peft import AutoPeftModelForCausalLM, PeftModel
from peft_debias.loader.attach import load_debias_adapter

base_id, repos, debiased, api = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
tok = AutoTokenizer.from_pretrained(base_id)
texts = ["he is a doctor", "she is a nurse and he is"]
batch = tok(texts, return_tensors="pt", padding=True, return_token_type_ids=False)
width = batch["input_ids"].shape[1]
prompt = tok("the man went to", return_tensors="pt", return_token_type_ids=False)
GEN = dict(max_new_tokens=8, do_sample=False)

def logits(model):  # prompt tuning prepends virtual tokens: keep the real positions
    with torch.no_grad():
        return model.eval()(**batch).logits[:, -width:]
def generated(model):
    with torch.no_grad():
        return model.generate(**prompt, **GEN)[0].tolist()
def piped(pipe):
    return pipe("the man went to", return_tensors=True, **GEN)[0]["generated_token_ids"]
def gap(a, b):
    return (a - b).abs().max().item()
def fresh():
    return AutoModelForCausalLM.from_pretrained(base_id)

base = logits(fresh())
out = {"base_generated": generated(fresh()), "base_pipeline": piped(pipeline("text-generation", model=base_id))}
for name, repo in repos.items():
    ours_model = load_debias_adapter(fresh(), repo, mode="inference")
    ours = logits(ours_model)
    auto = AutoPeftModelForCausalLM.from_pretrained(repo)
    peft_model = PeftModel.from_pretrained(fresh(), repo)
    r = {"changed": gap(ours, base), "peft": gap(logits(peft_model), ours), "auto": gap(logits(auto), ours),
         "auto_base": auto.get_base_model().name_or_path, "generated": generated(ours_model)}
    if name == "lora" and api:  # transformers loads a LoRA repo by itself (its PEFT integration)
        pipe = pipeline("text-generation", model=repo)
        r["pipeline_model"] = type(pipe.model).__name__
    else:  # prompt learning (or no transformers adapter API): a PeftModel goes into the pipeline instead
        pipe = pipeline("text-generation", model=peft_model, tokenizer=tok)
    r["pipeline"] = piped(pipe)
    out[name] = r
    if name == "lora" and api:  # transformers' own adapter API
        model = fresh()
        model.load_adapter(repo, adapter_name="gender")
        api_out = {"active": model.active_adapters(), "with": gap(logits(model), ours)}
        model.disable_adapters()
        api_out["disabled"] = gap(logits(model), base)
        model.enable_adapters()
        model.set_adapter("gender")
        api_out["enabled"] = gap(logits(model), ours)
        out["api"] = api_out
model = AutoModelForCausalLM.from_pretrained(debiased)
out["debiased"] = {"weights": {k: v.tolist() for k, v in model.state_dict().items() if k.endswith("q_proj.weight")},
                   "changed": gap(logits(model), base), "generated": generated(model),
                   "pipeline": piped(pipeline("text-generation", model=debiased))}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def causal(published) -> dict:
    repos = {name: REPOS[name] for name in ("lora", "prefix", "prompt")}
    api = "0" if transformers_adapter_api_problem() else "1"
    return report(["-c", CAUSAL, LLAMA, json.dumps(repos), REPOS["debiased"], api], published["env"])


@pytest.mark.parametrize("method", ["lora", "prefix", "prompt"])
def test_causal_adapter_by_repo_id(causal, method) -> None:
    got = causal[method]
    assert got["changed"] > CHANGED, "the adapter must change the base model's logits"
    assert got["peft"] < SAME, "PeftModel.from_pretrained(base, repo) must give our loader's logits"
    assert got["auto"] < SAME, "AutoPeftModelForCausalLM.from_pretrained(repo) must give our loader's logits"
    assert got["auto_base"] == LLAMA, "AutoPeft must load the base named by its Hub id in adapter_config.json"
    assert got["pipeline"] == got["generated"], "the pipeline must generate what our loaded adapter generates"


def test_pipeline_loads_a_lora_repo_and_changes_generation(causal) -> None:
    lora = causal["lora"]
    assert causal["base_pipeline"] == causal["base_generated"]
    assert {tuple(causal[m]["pipeline"]) for m in ("lora", "prefix", "prompt")} != {tuple(causal["base_pipeline"])}
    assert lora["pipeline"] != causal["base_pipeline"], "with the adapter the pipeline must generate differently"
    problem = transformers_adapter_api_problem()  # pipeline(model=repo) goes through model.load_adapter
    if problem:
        pytest.skip(problem)
    assert lora["pipeline_model"] == "LlamaForCausalLM"  # the base, with the adapter injected


def test_transformers_adapter_api(causal) -> None:
    problem = transformers_adapter_api_problem()
    if problem:
        pytest.skip(problem)
    api = causal["api"]
    assert api["active"] == ["gender"]
    assert api["with"] < SAME and api["enabled"] < SAME, "load_adapter must give our loader's logits"
    assert api["disabled"] < SAME, "disable_adapters must give the base's logits back"


def test_debiased_model_loads_with_auto_model(causal, published) -> None:
    got = causal["debiased"]
    local = load_all(published["out"]["debiased"])
    import torch

    assert got["weights"], "the debiased model has no q_proj weights"
    for name, values in got["weights"].items():
        assert torch.equal(torch.tensor(values), local[name]), name
    assert got["changed"] > CHANGED, "the debiased model must differ from the base"
    assert got["pipeline"] == got["generated"]


ENCODER = r"""
import json, sys, torch
from transformers import AutoModel, AutoTokenizer, pipeline
from peft import AutoPeftModelForFeatureExtraction, PeftModel
from peft_debias.loader.attach import load_debias_adapter

base_id, repo, api = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
texts = ["he is a doctor", "she is a nurse and he is"]
tok = AutoTokenizer.from_pretrained(base_id)
batch = tok(texts, return_tensors="pt", padding=True)
def hidden(model):
    with torch.no_grad():
        return model.eval()(**batch).last_hidden_state
def pooled(h):  # what the served sentence encoder computes: mean over real tokens, L2-normalised
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=-1)
def gap(a, b):
    return (a - b).abs().max().item()
def fresh():
    return AutoModel.from_pretrained(base_id)

base, ours = hidden(fresh()), hidden(load_debias_adapter(fresh(), repo, mode="inference"))
auto = AutoPeftModelForFeatureExtraction.from_pretrained(repo)
out = {"changed": gap(ours, base), "peft": gap(hidden(PeftModel.from_pretrained(fresh(), repo)), ours),
       "auto": gap(hidden(auto), ours), "auto_base": auto.get_base_model().name_or_path}
if api:  # by repo id: transformers' PEFT integration
    pipe = pipeline("feature-extraction", model=repo)
else:
    pipe = pipeline("feature-extraction", model=PeftModel.from_pretrained(fresh(), repo), tokenizer=tok)
out["pipeline_by_repo"] = api
n = int(batch["attention_mask"][0].sum())
out["pipeline"] = gap(torch.tensor(pipe(texts[0])[0]), ours[0, :n])
out["pipeline_base"] = gap(torch.tensor(pipe(texts[0])[0]), base[0, :n])
try:
    from sentence_transformers import SentenceTransformer
except ImportError:
    out["st"] = None
else:
    st = SentenceTransformer(base_id)
    plain = st.encode(texts, convert_to_tensor=True)
    st.load_adapter(repo)
    debiased = st.encode(texts, convert_to_tensor=True)
    out["st"] = {"modules": [type(m).__name__ for m in st], "base": gap(plain, pooled(base)),
                 "adapter": gap(debiased, pooled(ours)), "changed": gap(debiased, plain),
                 "active": st.active_adapters() if api else None}  # refused with transformers' adapter API
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def encoder(published) -> dict:
    api = "0" if transformers_adapter_api_problem() else "1"
    return report(["-c", ENCODER, BERT, REPOS["encoder"], api], published["env"])


def test_encoder_adapter_by_repo_id(encoder) -> None:
    assert encoder["changed"] > CHANGED, "the adapter must change the encoder's hidden states"
    assert encoder["peft"] < SAME and encoder["auto"] < SAME
    assert encoder["auto_base"] == BERT
    assert encoder["pipeline"] < SAME, "pipeline('feature-extraction', model=repo) must apply the adapter"
    assert encoder["pipeline_base"] > CHANGED


def test_sentence_transformers_loads_the_adapter(encoder) -> None:
    require_client("sentence_transformers")
    st = encoder["st"]
    assert st is not None, "the client process could not import sentence_transformers"
    assert st["modules"] == ["Transformer", "Pooling", "Normalize"]
    assert st["base"] < SAME, "SentenceTransformer(id) must mean-pool and normalise like the served repo says"
    assert st["adapter"] < SAME, "SentenceTransformer.load_adapter(repo) must give our loader's embeddings"
    assert st["changed"] > CHANGED / 10
    problem = transformers_adapter_api_problem()  # load_adapter still works then, active_adapters() is refused
    assert st["active"] == (None if problem else ["default"])


LM_EVAL = r"""
import json, sys
import numpy as np
from lm_eval import simple_evaluate
from lm_eval.tasks import TaskManager
from peft_debias.eval.lm_scoring import causal_logprob_sums
from peft_debias.eval.stereoset import stereoset_metrics
from peft_debias.evaluate_modules.lm_eval_tasks import tasks_dir
from peft_debias.loader.attach import load_debias_adapter
from peft_debias.models.loading import load_model

base_id, repo, data_dir, limit = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tasks = ["peft_debias_crows_pairs_gender", "peft_debias_stereoset_gender"]
manager = TaskManager(include_path=str(tasks_dir()), metadata={"data_dir": data_dir})
def run(model_args):
    res = simple_evaluate(model="hf", model_args=model_args, tasks=tasks, limit=limit, log_samples=True,
                          task_manager=manager, device="cpu", batch_size=8)
    samples = {t: sorted(res["samples"][t], key=lambda s: s["doc_id"]) for t in tasks}
    return res["results"], samples
def lls(sample):
    return [float(r[0]) for r in sample["filtered_resps"]]
out = {}
runs = [("adapter", f"pretrained={base_id},peft={repo}", repo), ("base", f"pretrained={base_id}", None)]
for label, args, adapter in runs:
    results, samples = run(args)
    loaded = load_model(base_id)
    model = load_debias_adapter(loaded.model, adapter, mode="inference") if adapter else loaded.model
    crows = samples[tasks[0]]
    texts = [t for s in crows for t in (s["doc"]["sent_more"], s["doc"]["sent_less"])]
    ours = [total for total, _ in causal_logprob_sums(model, loaded.tokenizer, texts, bos="context")]
    stereo = samples[tasks[1]]
    ours_ss = [total for total, _ in causal_logprob_sums(
        model, loaded.tokenizer, [t for s in stereo for t in s["doc"]["sentences"]], bos="context")]
    theirs_ss = np.array([lls(s) for s in stereo])
    mine = stereoset_metrics([type("I", (), {"target": s["doc"]["target"]}) for s in stereo], theirs_ss)
    out[label] = {
        "pct_stereotype": results[tasks[0]]["pct_stereotype,none"],
        "lm_eval_lls": [ll for s in crows for ll in lls(s)], "our_lls": ours,
        "lm_eval_decisions": [s["pct_stereotype"] for s in crows], "ids": [s["doc"]["id"] for s in crows],
        "ss": results[tasks[1]]["ss,none"], "lms": results[tasks[1]]["lms,none"], "ss_ours": mine["ss"],
        "lms_ours": mine["lms"], "stereoset_lls": theirs_ss.ravel().tolist(), "our_stereoset_lls": ours_ss,
    }
print(json.dumps(out))
"""


def check_lm_eval_report(got: dict, n: int) -> None:
    """lm-eval's numbers equal ours pair by pair (summed log-likelihoods, BOS context); the adapter changes them."""
    import numpy as np

    for label in ("adapter", "base"):
        run = got[label]
        theirs, ours = np.array(run["lm_eval_lls"]), np.array(run["our_lls"])
        assert len(theirs) == 2 * n and np.allclose(theirs, ours, rtol=0, atol=2e-3), label
        decisions = (ours[0::2] > ours[1::2]).astype(float)
        assert run["lm_eval_decisions"] == decisions.tolist(), label
        assert run["pct_stereotype"] == pytest.approx(decisions.mean(), abs=1e-12)
        assert np.allclose(run["stereoset_lls"], run["our_stereoset_lls"], rtol=0, atol=2e-3), label
        assert run["ss"] == pytest.approx(run["ss_ours"]) and run["lms"] == pytest.approx(run["lms_ours"])
    assert got["adapter"]["ids"] == got["base"]["ids"]
    moved = np.abs(np.array(got["adapter"]["lm_eval_lls"]) - np.array(got["base"]["lm_eval_lls"])).max()
    assert moved > CHANGED, "lm-eval with peft=REPO must score with the adapter applied"


@pytest.mark.integration
def test_lm_eval_runs_our_tasks_on_the_adapter(published, data_dir) -> None:
    require_client("lm_eval")
    n = 12
    env = {**published["env"], "HF_DATASETS_CACHE": str(published["root"] / "datasets")}
    got = report(["-c", LM_EVAL, LLAMA, REPOS["lora"], str(data_dir), str(n)], env, timeout=600)
    check_lm_eval_report(got, n)
