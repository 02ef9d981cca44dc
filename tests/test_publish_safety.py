"""A safe publish: only the artifact's own regular files leave the machine.

A planted symbolic link (to a private key outside the folder), a FIFO, or a file swapped for a link after the
folder was checked is refused with one line; files that are not part of the artifact are left out and listed;
``--dry-run`` lists exactly what a real publish then uploads, and sends nothing.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from peft_debias.core.errors import DebiasError
from peft_debias.hub.artifact import ALLOWED, inspect_artifact
from peft_debias.hub.publish import publish_artifact

from support.hub_server import client_env, run_client
from support.publish import folder_hashes, train_tiny_adapter
from support.tiny_models import CORPUS

SECRET = b"-----BEGIN OPENSSH PRIVATE KEY-----\nnot a real key\n"
EXTRAS = {"notes.txt": b"the owner's notes", ".env": b"HF_TOKEN=hf_private", "private/config.json": b"{}"}


@pytest.fixture(scope="module")
def adapter(tiny_models, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("publish_safety")
    return train_tiny_adapter(tiny_models["llama"], root, "adapter", CORPUS, max_steps=1, batch_size=2)


@pytest.fixture
def planted(adapter, tmp_path) -> Path:
    """A copy of the adapter with files that are not the artifact's own, and a private key outside it."""
    folder = Path(shutil.copytree(adapter, tmp_path / "artifact"))
    for name, content in EXTRAS.items():
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_bytes(content)
    (tmp_path / "id_ed25519").write_bytes(SECRET)
    return folder


def _lines(stdout: str) -> list[str]:
    return [line.strip() for line in stdout.splitlines() if line.startswith("  ")]


def test_allowlist_leaves_other_files_out(planted) -> None:
    artifact = inspect_artifact(planted)
    assert artifact.files == ["adapter_config.json", "adapter_model.safetensors", "debias_config.json"] + (
        ["training_log.jsonl"] if (planted / "training_log.jsonl").exists() else []
    )
    assert artifact.left_out == sorted(EXTRAS)
    assert set(ALLOWED) == {"adapter", "negated_adapter", "bias_vector", "debiased_model", "merged_model"}


@pytest.mark.parametrize("where", ["adapter_model.safetensors", "id_ed25519", "sub/key", "linked_dir"])
def test_symbolic_links_are_refused(planted, tmp_path, where: str) -> None:
    target = tmp_path / "id_ed25519"
    if where == "adapter_model.safetensors":  # the weights themselves replaced by a link out of the folder
        (planted / where).unlink()
    if where == "linked_dir":
        outside = tmp_path / "outside"
        outside.mkdir()
        (outside / "id_ed25519").write_bytes(SECRET)
        (planted / where).symlink_to(outside, target_is_directory=True)
    else:
        (planted / where).parent.mkdir(exist_ok=True)
        (planted / where).symlink_to(target)
    with pytest.raises(DebiasError, match=rf"{where} is a symbolic link .*replace the link by the file itself"):
        publish_artifact(planted, "tester/x", check_load=False, dry_run=True)


def test_fifo_is_refused_without_opening_it(planted) -> None:
    os.mkfifo(planted / "adapter_model.safetensors.part")
    with pytest.raises(DebiasError, match=r"adapter_model\.safetensors\.part is a FIFO, not a regular file"):
        publish_artifact(planted, "tester/x", check_load=False, dry_run=True)  # would block if it opened the FIFO


def test_file_swapped_for_a_link_after_the_check_is_refused(planted, tmp_path) -> None:
    artifact = inspect_artifact(planted)
    with artifact.open("adapter_config.json") as fh:
        assert fh.read() == (planted / "adapter_config.json").read_bytes()
    os.link(planted / "adapter_config.json", tmp_path / "kept")  # keep its inode from being reused below
    (planted / "adapter_config.json").unlink()
    (planted / "adapter_config.json").symlink_to(tmp_path / "id_ed25519")
    with pytest.raises(DebiasError, match=r"adapter_config\.json cannot be opened for upload"):
        artifact.open("adapter_config.json")
    (planted / "adapter_config.json").unlink()
    (planted / "adapter_config.json").write_text("{}")  # another file under the same name
    with pytest.raises(DebiasError, match=r"adapter_config\.json changed while it was being published"):
        artifact.open("adapter_config.json")


@pytest.mark.e2e
def test_dry_run_lists_exactly_what_publish_uploads(planted, hub_server, tmp_path) -> None:
    repo = "tester/safe-publish"
    before = folder_hashes(planted)
    env = client_env(hub_server, tmp_path / "hf")
    no_token = {k: v for k, v in env.items() if k != "HF_TOKEN"}
    requests = len(hub_server.requests)
    base_id = ["--base-model-id", "tiny-org/tiny-llama"]  # the adapter's base is a local folder
    dry = run_client(
        ["-m", "peft_debias", "publish", str(planted), repo, "--skip-load-check", *base_id, "--dry-run"], no_token
    )
    assert dry.returncode == 0, dry.stderr
    assert len(hub_server.requests) == requests, "a dry run sent a request"
    listed = _lines(dry.stdout)
    would = [line.split(" (")[0] for line in listed if not line.startswith("left out:")]
    left_out = [line.removeprefix("left out: ").split(" (")[0] for line in listed if line.startswith("left out:")]
    assert left_out == sorted(EXTRAS)
    assert f"adapter_model.safetensors ({(planted / 'adapter_model.safetensors').stat().st_size} bytes)" in listed
    rewritten = [line.split(" (")[0] for line in listed if line.endswith("uploaded as a portable copy)")]
    assert "adapter_config.json" in rewritten
    real = run_client(["-m", "peft_debias", "publish", str(planted), repo, "--skip-load-check", *base_id], env)
    assert real.returncode == 0, real.stderr
    assert sorted(hub_server.tree(repo)) == sorted([*would, ".gitattributes"])
    for name in would:
        if name not in ("README.md", *rewritten):
            assert hub_server.file(repo, name) == (planted / name).read_bytes()
    assert json.loads(hub_server.file(repo, "adapter_config.json"))["base_model_name_or_path"] == "tiny-org/tiny-llama"
    assert folder_hashes(planted) == before  # the local folder is only read


def test_model_side_files_are_the_same_rule_for_vector_and_publish(tiny_models, tmp_path) -> None:
    """``vector`` copies a base's config and tokenizer files next to the new weights, and nothing else of the base's
    folder; ``publish`` uploads exactly those for a model."""
    from peft_debias.core.model_files import is_side_file
    from peft_debias.vector.folders import copy_side_files

    base = Path(shutil.copytree(tiny_models["llama"], tmp_path / "base"))
    for name in ("notes.txt", ".env", "id_ed25519", "peft_debias_source.json", "README.md", "training_args.bin"):
        (base / name).write_text("not part of the model")
    dest = tmp_path / "dest"
    dest.mkdir()
    copied = copy_side_files(base, dest)
    assert "config.json" in copied and any(name.startswith("tokenizer") for name in copied)
    assert sorted(p.name for p in dest.iterdir()) == sorted(copied)
    assert not {"notes.txt", ".env", "id_ed25519", "peft_debias_source.json", "README.md"} & set(copied)
    side = ["config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "merges.txt", "spiece.model",
            "chat_template.jinja", "modules.json", "generation_config.json", "special_tokens_map.json"]  # fmt: skip
    others = ["notes.txt", ".env", "model.safetensors", "1_Pooling/config.json", "secrets.json", "optimizer.pt"]
    assert [is_side_file(n) for n in side] == [True] * len(side)
    assert [is_side_file(n) for n in others] == [False] * len(others)
