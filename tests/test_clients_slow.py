"""The clients of tests/test_clients.py on the real bases, served under their real Hub ids by the local Hub server:
``HuggingFaceTB/SmolLM2-135M-Instruct`` (the converted bundled SmolLM2) and ``sentence-transformers/all-MiniLM-L6-v2``
(the bundled MiniLM, with sentence-transformers' module files). A real adapter (a few training steps) on each,
trained by Hub id and published; then lm-eval's command line on our CrowS-Pairs task with ``--log_samples``,
``SentenceTransformer(id).load_adapter(repo)`` and ``AutoPeftModelFor*`` by repo id.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from support.bundled import require_bundled
from support.clients import report, require_client, train_argv
from support.hub_models import MINILM_ID, SMOLLM2_ID, serve_real_bases
from support.hub_server import client_env, run_client
from support.tiny_models import CORPUS

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

REPOS = {"smollm2": "tester/smollm2-gender-lora", "minilm": "tester/minilm-gender-lora"}
CHANGED = 1e-4


@pytest.fixture(scope="module")
def published(hub_server, tmp_path_factory) -> dict:
    serve_real_bases(hub_server, require_bundled("minilm"), require_bundled("smollm2"))
    root = tmp_path_factory.mktemp("clients_slow")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(CORPUS) + "\n")
    env = client_env(hub_server, root / "hf")
    for name, base in [("smollm2", SMOLLM2_ID), ("minilm", MINILM_ID)]:
        argv = train_argv(base, root / name, corpus, steps=4, lr=1e-3)
        run = run_client(["-m", "peft_debias", *argv], env, timeout=900)
        assert run.returncode == 0, run.stderr
        run = run_client(["-m", "peft_debias", "publish", str(root / name), REPOS[name]], env, timeout=900)
        assert run.returncode == 0, run.stderr
    return {"env": env, "root": root}


SCORE = r"""
import json, sys
from peft_debias.eval.lm_scoring import causal_logprob_sums
from peft_debias.loader.attach import load_debias_adapter
from peft_debias.models.loading import load_model
base_id, repo, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
loaded = load_model(base_id)
model = load_debias_adapter(loaded.model, repo, mode="inference") if repo else loaded.model
print(json.dumps([total for total, _ in causal_logprob_sums(model, loaded.tokenizer, texts, bos="context")]))
"""


def _lm_eval(published: dict, model_args: str, out: Path, data_dir: Path, limit: int) -> tuple[float, list]:
    """``lm_eval`` on our gender CrowS-Pairs task: (pct_stereotype, per-pair samples in doc order)."""
    from peft_debias.evaluate_modules.lm_eval_tasks import tasks_dir

    argv = [
        "-m", "lm_eval", "--model", "hf", "--model_args", model_args, "--include_path", str(tasks_dir()),
        "--tasks", "peft_debias_crows_pairs_gender", "--limit", str(limit), "--device", "cpu", "--batch_size", "8",
        "--metadata", json.dumps({"data_dir": str(data_dir)}), "--output_path", str(out), "--log_samples",
    ]  # fmt: skip
    run = run_client(argv, published["env"], timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    pct = results["results"]["peft_debias_crows_pairs_gender"]["pct_stereotype,none"]
    lines = next(out.rglob("samples_peft_debias_crows_pairs_gender_*.jsonl")).read_text().splitlines()
    return pct, sorted((json.loads(line) for line in lines), key=lambda s: s["doc_id"])


def test_lm_eval_cli_on_smollm2_with_the_adapter(published, data_dir) -> None:
    require_client("lm_eval")
    limit, found = 16, {}
    for label, args, repo in [
        ("adapter", f"pretrained={SMOLLM2_ID},peft={REPOS['smollm2']}", REPOS["smollm2"]),
        ("base", f"pretrained={SMOLLM2_ID}", ""),
    ]:
        pct, samples = _lm_eval(published, args, published["root"] / f"lm_eval_{label}", data_dir, limit)
        texts = [t for s in samples for t in (s["doc"]["sent_more"], s["doc"]["sent_less"])]
        ours = np.array(report(["-c", SCORE, SMOLLM2_ID, repo, json.dumps(texts)], published["env"], timeout=900))
        theirs = np.array([float(r[0]) for s in samples for r in s["filtered_resps"]])
        assert np.allclose(theirs, ours, rtol=0, atol=5e-3), label
        decisions = ours[0::2] > ours[1::2]
        assert [s["pct_stereotype"] for s in samples] == decisions.astype(float).tolist()
        assert pct == pytest.approx(decisions.mean())
        found[label] = theirs
    assert np.abs(found["adapter"] - found["base"]).max() > CHANGED


MINILM = r"""
import json, sys, torch
from peft import AutoPeftModelForFeatureExtraction
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoTokenizer
from peft_debias.loader.attach import load_debias_adapter
base_id, repo = sys.argv[1:3]
texts = ["The doctor said he was tired.", "The nurse said she was tired."]
tok = AutoTokenizer.from_pretrained(base_id)
batch = tok(texts, return_tensors="pt", padding=True)
def pooled(model):
    with torch.no_grad():
        h = model.eval()(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=-1)
ours = pooled(load_debias_adapter(AutoModel.from_pretrained(base_id), repo, mode="inference"))
st = SentenceTransformer(base_id)
plain = st.encode(texts, convert_to_tensor=True)
st.load_adapter(repo)
adapted = st.encode(texts, convert_to_tensor=True)
auto = pooled(AutoPeftModelForFeatureExtraction.from_pretrained(repo))
print(json.dumps({"st": (adapted - ours).abs().max().item(), "changed": (adapted - plain).abs().max().item(),
                  "auto": (auto - ours).abs().max().item(), "modules": [type(m).__name__ for m in st]}))
"""


def test_sentence_transformers_on_minilm_by_repo_id(published) -> None:
    require_client("sentence_transformers")
    got = report(["-c", MINILM, MINILM_ID, REPOS["minilm"]], published["env"], timeout=900)
    assert got["modules"] == ["Transformer", "Pooling", "Normalize"]
    assert got["st"] < 1e-5 and got["auto"] < 1e-5
    assert got["changed"] > CHANGED
