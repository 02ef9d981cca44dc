"""Publishing failures: Hub faults (500, dropped connection, 401) leave the repo and the local folder as they were,
bad repo ids and artifacts are refused before any request, tokens never show; plus the card's Hub metadata."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from peft_debias.core.errors import DebiasError
from peft_debias.hub.portable import portable_artifact, publish_base_id
from peft_debias.hub.publish import check_repo_id, check_revision, publish_artifact, render_card

from support.hub_server import client_env, run_client
from support.publish import folder_hashes, sample_results, train_tiny_adapter
from support.tiny_models import CORPUS

OLD = {"adapter_model.safetensors": b"old weights", "notes.md": b"the owner's notes"}


@pytest.fixture(scope="module")
def adapter(tiny_models, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("publish_errors")
    return train_tiny_adapter(
        tiny_models["llama"], root, "adapter", CORPUS, max_steps=1, batch_size=2, base_model_id="tester/tiny-llama"
    )


@pytest.fixture
def hub(hub_server):
    yield hub_server
    hub_server.reset_faults()


def _requests(hub) -> list:
    return [r for r in hub.requests if r[1] != "/api/agent-harnesses"]


def _error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("peft-debias: error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("action", "message"),
    [
        ("500", "the Hub answered 500 while committing to tester/faults-500"),
        ("drop", "the connection to the Hub at"),
        ("401", "refused the token (401 Unauthorized) while committing to tester/faults-401"),
    ],
)
def test_faults_leave_repo_and_folder_unchanged(adapter, hub, tmp_path, action: str, message: str) -> None:
    repo = f"tester/faults-{action}"
    hub.seed(repo, OLD)
    tree, head, hashes = hub.tree(repo), hub.head(repo), folder_hashes(adapter)
    hub.fail("POST", rf"^/api/models/{repo}/commit/", action)
    run = run_client(
        ["-m", "peft_debias", "publish", str(adapter), repo, "--skip-load-check"], client_env(hub, tmp_path / "hf")
    )
    assert run.returncode == 2
    line = _error_line(run.stderr)
    assert message in line and line.endswith(("try again later", "run the command again", "write access"))
    assert hub.faults[-1].times == 0, "the commit request was made and failed"
    assert hub.tree(repo) == tree and hub.head(repo) == head, "nothing partial on the server"
    assert folder_hashes(adapter) == hashes


_CLI_LOOP = r"""
import contextlib, io, json, os, sys
from peft_debias.cli.main import main
out = []
for repo in json.loads(sys.argv[2]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["publish", sys.argv[1], repo, "--skip-load-check"])
    out.append([code, err.getvalue()])
os.environ.pop("HF_TOKEN")
err = io.StringIO()
with contextlib.redirect_stderr(err):
    code = main(["publish", sys.argv[1], "tester/no-token", "--skip-load-check"])
out.append([code, err.getvalue()])
print(json.dumps(out))
"""

BAD_IDS = ["../x", "", " ", "a b/c", "a/b/c", "org/../x", "/abs/path", "org/", "org/name ", "a\\b", "org/x--y"]


@pytest.mark.e2e
def test_bad_repo_ids_and_missing_token_refused_before_any_request(adapter, hub, tmp_path) -> None:
    seen = len(_requests(hub))
    env = client_env(hub, tmp_path / "hf")
    run = run_client(["-c", _CLI_LOOP, str(adapter), json.dumps(BAD_IDS)], env)
    assert run.returncode == 0, run.stderr
    results = json.loads(run.stdout.strip().splitlines()[-1])
    for repo, (code, stderr) in zip(BAD_IDS, results, strict=False):
        assert code == 2, (repo, stderr)
        assert "repo id" in _error_line(stderr), (repo, stderr)
    code, stderr = results[-1]
    assert code == 2 and "no Hugging Face token found" in _error_line(stderr)
    assert len(_requests(hub)) == seen, "no request may be made for a refused publish"
    for repo in BAD_IDS:
        with pytest.raises(DebiasError):
            check_repo_id(repo)
    assert check_repo_id("my-org/gender.lora_v2") == "my-org/gender.lora_v2"


@pytest.mark.e2e
def test_tokens_never_show_in_output_logs_or_card(adapter, hub, tmp_path) -> None:
    wrong = "hf_WrongTokenLeakCheck4d2b9e61"
    base = ["-m", "peft_debias", "publish", str(adapter), "tester/secret-check", "--skip-load-check", "-vv"]
    env = client_env(hub, tmp_path / "hf", HF_DEBUG="1")
    refused = run_client(base, dict(env, HF_TOKEN=wrong))
    assert refused.returncode == 2 and "401" in _error_line(refused.stderr)
    hub.fail("POST", r"/commit/", "500")
    failed = run_client([*base, "--debug"], env)  # with the traceback too
    assert failed.returncode != 0 and "500" in failed.stderr
    done = run_client(base, env)
    assert done.returncode == 0, done.stderr
    for run in (refused, failed, done):
        for secret in (wrong, hub.token):
            assert secret not in run.stdout and secret not in run.stderr
    for path in hub.tree("tester/secret-check"):
        assert hub.token.encode() not in hub.file("tester/secret-check", path), path


@pytest.mark.e2e
def test_republish_replaces_the_artifact_and_keeps_other_files(adapter, hub, tmp_path) -> None:
    repo = "tester/republish"
    hub.seed(repo, {**OLD, "vector-00001-of-00002.safetensors": b"old shard"})
    env = client_env(hub, tmp_path / "hf")
    run = run_client(["-m", "peft_debias", "publish", str(adapter), repo, "--skip-load-check"], env)
    assert run.returncode == 0, run.stderr
    assert "1 stale removed" in run.stdout
    tree = hub.tree(repo)
    assert "vector-00001-of-00002.safetensors" not in tree and tree["notes.md"]
    assert hub.file(repo, "adapter_model.safetensors") == (adapter / "adapter_model.safetensors").read_bytes()
    commits = hub.repos[repo].commits
    assert commits[commits[hub.head(repo)].parent].title == "seed"  # one new commit on top of the seed
    head = hub.head(repo)
    private = run_client(["-m", "peft_debias", "publish", str(adapter), repo, "--skip-load-check", "--private"], env)
    assert private.returncode == 2 and "already exists and is public" in _error_line(private.stderr)
    assert hub.head(repo) == head


# ---- refused before the network (in process) -------------------------------------------------------------------
def _copy(adapter: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(adapter, tmp_path / "copy"))


def test_incomplete_or_wrong_artifacts_are_refused(adapter, tiny_models, tmp_path) -> None:
    with pytest.raises(DebiasError, match="is not a folder"):
        publish_artifact(tmp_path / "missing", "tester/x")
    copy = _copy(adapter, tmp_path)
    (copy / "adapter_model.safetensors").unlink()
    with pytest.raises(DebiasError, match=r"incomplete adapter: adapter_model.safetensors missing"):
        publish_artifact(copy, "tester/x")
    (copy / "debias_config.json").unlink()
    with pytest.raises(DebiasError, match=r"has no debias_config\.json"):
        publish_artifact(copy, "tester/x")
    biased = _copy(adapter, tmp_path / "b")
    info = json.loads((biased / "debias_config.json").read_text())
    (biased / "debias_config.json").write_text(json.dumps({**info, "artifact": "biased_adapter"}))
    with pytest.raises(DebiasError, match="deliberately biased"):
        publish_artifact(biased, "tester/x")
    other_base = _copy(adapter, tmp_path / "o")
    info["base_model"] = {**info["base_model"], "name": str(tiny_models["gpt2"]), "path": str(tiny_models["gpt2"])}
    (other_base / "debias_config.json").write_text(json.dumps(info))
    with pytest.raises(DebiasError, match="does not load on its recorded base"):
        publish_artifact(other_base, "tester/x")
    for revision in ("a" * 40, "../main", "-x", "a b"):
        with pytest.raises(DebiasError, match="revision"):
            check_revision(revision)


def test_results_must_fit_the_artifact(adapter, tiny_models, tmp_path) -> None:
    base_only = sample_results(str(tiny_models["llama"]), None, 0.0)
    with pytest.raises(DebiasError, match="without any adapter"):
        publish_artifact(adapter, "tester/x", results=base_only, check_load=False)
    (tmp_path / "bad.json").write_text(json.dumps({"foo": 1}))
    with pytest.raises(DebiasError, match="not a peft-debias results file"):
        publish_artifact(adapter, "tester/x", results=tmp_path / "bad.json", check_load=False)
    vector = tmp_path / "vec"
    vector.mkdir()
    (vector / "bias_vector.json").write_text(json.dumps({"files": ["vector.safetensors"]}))
    (vector / "vector.safetensors").write_bytes(b"")
    with pytest.raises(DebiasError, match="not a model"):
        publish_artifact(vector, "tester/x", results=sample_results("m", adapter, 1.0), check_load=False)


def test_hub_card_metadata(adapter) -> None:
    from peft_debias.cards.vector import render_debiased_card
    from peft_debias.hub.artifact import inspect_artifact

    artifact = inspect_artifact(adapter)
    local_card = ModelCard((adapter / "README.md").read_text())
    assert local_card.data.base_model == "tester/tiny-llama"  # the recorded Hub id, on the training-time card too
    artifact.info["base_model"].update(name="llama", hub_id=None, local_only=True)
    hub_card = ModelCard(render_card(artifact, "org/name"))
    assert hub_card.data.base_model is None and not any(t.startswith("base_model:") for t in hub_card.data.tags)
    # a record written before Hub ids were recorded: the bundled alias's id, found at publish time
    old = {k: v for k, v in artifact.info["base_model"].items() if k not in ("hub_id", "local_only")}
    artifact.info["base_model"] = {**old, "name": "bundled:smollm2", "path": "/home/me/.cache/peft_debias/smollm2"}
    fixed = portable_artifact(artifact, publish_base_id(artifact))
    card = ModelCard(render_card(fixed, "org/name", sample_results("bundled:smollm2", adapter, 2.0)))
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "base_model:adapter:HuggingFaceTB/SmolLM2-135M-Instruct" in card.data.tags
    assert card.data.model_name == "name" and len(card.data.eval_results) == 6  # no compare block: after only
    assert "before" not in card.text.split("## Evaluation")[1].split("## Limitations")[0]
    merged = render_debiased_card(
        {"artifact": "merged_model", "axis": "gender", "base_model": {"name": "gpt2", "kind": "causal_lm"},
         "adapters": [{"axis": "gender", "method": "lora", "source": "/home/me/gender-lora"}]},
        repo_id="org/merged", for_hub=True,
    )  # fmt: skip
    merged_card = ModelCard(merged)
    assert "peftdebias" in merged_card.data.tags and merged_card.data.base_model == "gpt2"
    assert "agarwal2023peftdebias" in merged and "/home/me" not in merged and "gender-lora" in merged
