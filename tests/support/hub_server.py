"""A small Hub-compatible HTTP server for the publish / pull tests (stdlib only).

It speaks the subset of the Hugging Face Hub API that ``huggingface_hub`` uses to create a repo, commit files
(regular, base64 in an NDJSON commit) and download them again (DESIGN section 3): repo creation, whoami, YAML
validation, repo info, preupload, commit, branch creation, tree listing and ``resolve`` (GET / HEAD). Repos live
in memory with their full commit history; file contents are stored once per git blob id in a temporary folder.

Faults are injected per test with :meth:`HubServer.fail`: answer 500, answer 401, or drop the connection without
an answer, for requests whose method and path match. Every request is recorded in :attr:`HubServer.requests`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

USER = "tester"
_NAME = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}$")
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Commit:
    oid: str
    parent: str | None
    files: dict[str, str]  # path -> blob id
    title: str
    date: float


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # branch -> commit oid


@dataclass
class Fault:
    method: str
    path: re.Pattern
    action: str  # "500" | "401" | "drop"
    times: int


class _Reply(Exception):
    """Raised by a handler to answer with an error status."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class HubServer:
    """The server and its state; ``start()`` runs it in a daemon thread on 127.0.0.1 at a random port."""

    def __init__(self, root: Path, token: str = "hf_test_write_token") -> None:
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.RLock()
        self._counter = 0
        self._httpd: ThreadingHTTPServer | None = None

    # ---- lifecycle and test controls ---------------------------------------------------------------------
    def start(self) -> HubServer:
        server = self

        class Handler(_Handler):
            hub = server

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    @property
    def url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def fail(self, method: str, path_regex: str, action: str, times: int = 1) -> None:
        """Answer the next ``times`` requests matching ``method`` and ``path_regex`` with ``action``."""
        assert action in ("500", "401", "drop"), action
        with self.lock:
            self.faults.append(Fault(method.upper(), re.compile(path_regex), action, times))

    def reset_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def _take_fault(self, method: str, path: str) -> str | None:
        with self.lock:
            for fault in self.faults:
                if fault.method in (method, "*") and fault.path.search(path) and fault.times > 0:
                    fault.times -= 1
                    return fault.action
        return None

    def tree(self, repo_id: str, revision: str = "main") -> dict[str, str]:
        """``{path: git blob id}`` of a repo at a branch or commit (``{}`` when the repo does not exist)."""
        with self.lock:
            repo = self.repos.get(repo_id)
            if repo is None:
                return {}
            oid = repo.refs.get(revision, revision)
            return dict(repo.commits[oid].files) if oid in repo.commits else {}

    def file(self, repo_id: str, path: str, revision: str = "main") -> bytes:
        return self.blob(self.tree(repo_id, revision)[path])

    def seed(self, repo_id: str, files: dict[str, bytes], private: bool = False) -> str:
        """Commit ``files`` to ``main`` directly (creating the repo), as if someone had uploaded them earlier."""
        with self.lock:
            repo = self.repos.setdefault(repo_id, Repo(repo_id, private))
            parent = repo.refs.get("main")
            tree = dict(repo.commits[parent].files) if parent else {".gitattributes": self.store(GITATTRIBUTES)}
            tree.update({path: self.store(content) for path, content in files.items()})
            repo.refs["main"] = self.new_commit(repo, parent, tree, "seed").oid
            return repo.refs["main"]

    def head(self, repo_id: str, revision: str = "main") -> str | None:
        with self.lock:
            repo = self.repos.get(repo_id)
            return repo.refs.get(revision) if repo else None

    # ---- storage -----------------------------------------------------------------------------------------
    def store(self, content: bytes) -> str:
        oid = git_blob_id(content)
        path = self.root / "blobs" / oid
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(content)
            tmp.replace(path)
        return oid

    def blob(self, oid: str) -> bytes:
        return (self.root / "blobs" / oid).read_bytes()

    def new_commit(self, repo: Repo, parent: str | None, files: dict[str, str], title: str) -> Commit:
        with self.lock:
            self._counter += 1
            seed = json.dumps([repo.repo_id, parent, sorted(files.items()), title, self._counter]).encode()
            commit = Commit(hashlib.sha1(seed).hexdigest(), parent, files, title, time.time())
            repo.commits[commit.oid] = commit
            return commit


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:  # dropped connections are expected
        pass


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # ---- plumbing ----------------------------------------------------------------------------------------
    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _authorized(self) -> bool | None:
        """True: the right token; False: a wrong one; None: none given."""
        header = self.headers.get("Authorization")
        if not header:
            return None
        return header == f"Bearer {self.hub.token}"

    def _need_auth(self) -> None:
        if self._authorized() is not True:
            raise _Reply(401, "Invalid credentials in Authorization header")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        path, query = url.path, parse_qs(url.query)
        body = self._body() if method == "POST" else b""
        self.hub.requests.append((method, path))
        action = self.hub._take_fault(method, path)
        if action == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        try:
            if action == "500":
                raise _Reply(500, "Internal Error (injected)")
            if action == "401":
                raise _Reply(401, "Invalid credentials in Authorization header")
            if self._authorized() is False:  # the Hub refuses a bad token even for public content
                raise _Reply(401, "Invalid credentials in Authorization header")
            self._route(method, [unquote(p) for p in path.split("/")[1:]], query, body)
        except _Reply as reply:
            headers = {"X-Error-Message": reply.message}
            if reply.code:
                headers["X-Error-Code"] = reply.code
            if method == "HEAD":
                self._send(reply.status, b"", headers, head=True)
            else:
                self._json(reply.status, {"error": reply.message}, headers)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    # ---- routing -----------------------------------------------------------------------------------------
    def _route(self, method: str, parts: list[str], query: dict[str, list[str]], body: bytes) -> None:
        if parts[:1] == ["api"]:
            rest = parts[1:]
            if method == "POST" and rest == ["repos", "create"]:
                return self._create_repo(json.loads(body or b"{}"))
            if method == "GET" and rest == ["whoami-v2"]:
                self._need_auth()
                return self._json(200, {"type": "user", "name": USER, "orgs": [], "auth": {"type": "access_token"}})
            if method == "POST" and rest == ["validate-yaml"]:
                return self._validate_yaml(json.loads(body or b"{}"))
            if len(rest) >= 3 and rest[0] == "models":
                repo_id, tail = f"{rest[1]}/{rest[2]}", rest[3:]
                return self._model_api(method, repo_id, tail, query, body)
        if method in ("GET", "HEAD") and len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve(method, f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
        raise _Reply(404, f"no route for {method} /{'/'.join(parts)}")

    def _model_api(self, method: str, repo_id: str, tail: list[str], query: dict, body: bytes) -> None:
        if method == "GET" and not tail:
            return self._info(repo_id, "main")
        if method == "GET" and len(tail) == 2 and tail[0] == "revision":
            return self._info(repo_id, tail[1])
        if method == "GET" and len(tail) >= 2 and tail[0] == "tree":
            return self._tree(repo_id, tail[1], "/".join(tail[2:]), query.get("recursive", ["false"])[0])
        if method == "POST" and len(tail) == 2 and tail[0] == "preupload":
            return self._preupload(repo_id, tail[1], json.loads(body or b"{}"))
        if method == "POST" and len(tail) == 2 and tail[0] == "commit":
            return self._commit(repo_id, tail[1], body)
        if method == "POST" and len(tail) == 2 and tail[0] == "branch":
            return self._branch(repo_id, tail[1], json.loads(body or b"{}"))
        raise _Reply(404, f"no route for {method} {repo_id} {'/'.join(tail)}")

    # ---- lookups -----------------------------------------------------------------------------------------
    def _repo(self, repo_id: str, write: bool = False) -> Repo:
        if write:
            self._need_auth()
        repo = self.hub.repos.get(repo_id)
        if repo is None or (repo.private and self._authorized() is not True):
            raise _Reply(404, "Repository not found", "RepoNotFound")
        return repo

    def _commit_of(self, repo: Repo, revision: str) -> Commit:
        oid = repo.refs.get(revision, revision)
        if oid not in repo.commits:
            raise _Reply(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo.commits[oid]

    # ---- endpoints ---------------------------------------------------------------------------------------
    def _create_repo(self, payload: dict[str, Any]) -> None:
        self._need_auth()
        name, org = payload.get("name") or "", payload.get("organization") or USER
        if not _NAME.match(name) or not _NAME.match(org):
            raise _Reply(400, f"invalid repo name {org}/{name}")
        if payload.get("type") not in (None, "model"):
            raise _Reply(400, "this server only holds model repos")
        repo_id = f"{org}/{name}"
        url = f"{self.hub.url}/{repo_id}"
        with self.hub.lock:
            if repo_id in self.hub.repos:
                return self._json(409, {"error": "You already created this model repo", "url": url})
            repo = Repo(repo_id, payload.get("visibility") == "private" or bool(payload.get("private")))
            first = self.hub.new_commit(repo, None, {".gitattributes": self.hub.store(GITATTRIBUTES)}, "initial commit")
            repo.refs["main"] = first.oid
            self.hub.repos[repo_id] = repo
        self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _validate_yaml(self, payload: dict[str, Any]) -> None:
        content = payload.get("content", "")
        errors = []
        match = re.match(r"^---\n(.*?)\n---\n", content, re.S)
        meta = yaml.safe_load(match.group(1)) if match else {}
        meta = meta or {}
        if not isinstance(meta, dict):
            errors.append("metadata must be a mapping")
        else:
            bases = meta.get("base_model") or []
            for base in [bases] if isinstance(bases, str) else bases:
                if not isinstance(base, str) or not _HUB_ID.match(base):
                    errors.append(f'"base_model" with value "{base}" is not valid. Use a model id from the Hub')
            tags = meta.get("tags") or []
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                errors.append('"tags" must be a list of strings')
            for entry in meta.get("model-index") or []:
                if not isinstance(entry, dict) or "name" not in entry or "results" not in entry:
                    errors.append('"model-index" entries need a name and results')
        if errors:
            self._json(400, {"errors": [{"message": e} for e in errors], "warnings": []})
        else:
            self._json(200, {"errors": [], "warnings": []})

    def _info(self, repo_id: str, revision: str) -> None:
        repo = self._repo(repo_id)
        commit = self._commit_of(repo, revision)
        last = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(commit.date))
        self._json(
            200,
            {
                "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
                "id": repo_id,
                "modelId": repo_id,
                "author": repo_id.split("/")[0],
                "sha": commit.oid,
                "lastModified": last,
                "private": repo.private,
                "disabled": False,
                "gated": False,
                "tags": [],
                "siblings": [{"rfilename": p} for p in sorted(commit.files)],
            },
        )

    def _tree(self, repo_id: str, revision: str, prefix: str, recursive: str) -> None:
        commit = self._commit_of(self._repo(repo_id), revision)
        prefix = prefix.strip("/")
        entries, folders = [], set()
        for path, oid in sorted(commit.files.items()):
            if prefix and not path.startswith(prefix + "/"):
                continue
            rel = path[len(prefix) + 1 :] if prefix else path
            if "/" in rel and recursive.lower() not in ("1", "true"):
                folders.add((f"{prefix}/" if prefix else "") + rel.split("/")[0])
                continue
            size = (self.hub.root / "blobs" / oid).stat().st_size
            entries.append({"type": "file", "oid": oid, "size": size, "path": path})
        entries += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": f} for f in sorted(folders)]
        if prefix and not entries:
            raise _Reply(404, f"{prefix} not found", "EntryNotFound")
        self._json(200, entries)

    def _preupload(self, repo_id: str, revision: str, payload: dict[str, Any]) -> None:
        repo = self._repo(repo_id, write=True)
        commit = self._commit_of(repo, revision)
        files = [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": commit.files.get(f["path"])}
            for f in payload.get("files", [])
        ]
        self._json(200, {"files": files, "commitOid": commit.oid})

    def _commit(self, repo_id: str, revision: str, body: bytes) -> None:
        repo = self._repo(repo_id, write=True)
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise _Reply(400, "the commit payload must start with a header line")
        header = lines[0]["value"]
        staged: list[tuple[str, str, Any]] = []
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value", {})
            path = value.get("path", "")
            if not path or path.startswith("/") or ".." in path.split("/"):
                raise _Reply(400, f"invalid path {path!r}")
            if key == "file":
                if value.get("encoding") != "base64":
                    raise _Reply(400, "only base64 file content is supported")
                staged.append(("add", path, base64.b64decode(value["content"])))
            elif key in ("deletedFile", "deletedFolder"):
                staged.append((key, path, None))
            else:
                raise _Reply(400, f"unsupported commit operation {key!r} (this server takes regular files only)")
        with self.hub.lock:  # all or nothing: the ref moves only once every operation is staged
            parent = self._commit_of(repo, revision)
            if revision not in repo.refs:
                raise _Reply(400, f"cannot commit to {revision!r}: not a branch", "RevisionNotFound")
            expected = header.get("parentCommit")
            if expected and not parent.oid.startswith(expected):
                raise _Reply(412, f"A commit has happened since. Please refresh and try again ({parent.oid})")
            files = dict(parent.files)
            for kind, path, content in staged:
                if kind == "add":
                    files[path] = self.hub.store(content)
                elif kind == "deletedFile":
                    if path not in files:
                        raise _Reply(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                    del files[path]
                else:
                    for name in [p for p in files if p.startswith(path.rstrip("/") + "/")]:
                        del files[name]
            commit = self.hub.new_commit(repo, parent.oid, files, header.get("summary", ""))
            repo.refs[revision] = commit.oid
        self._json(
            200,
            {"success": True, "commitOid": commit.oid, "commitUrl": f"{self.hub.url}/{repo_id}/commit/{commit.oid}"},
        )

    def _branch(self, repo_id: str, branch: str, payload: dict[str, Any]) -> None:
        repo = self._repo(repo_id, write=True)
        with self.hub.lock:
            if branch in repo.refs:
                raise _Reply(409, f"Reference {branch} already exists")
            start = self._commit_of(repo, payload.get("startingPoint") or "main")
            repo.refs[branch] = start.oid
        self._json(200, {})

    def _resolve(self, method: str, repo_id: str, revision: str, path: str) -> None:
        repo = self._repo(repo_id)
        commit = self._commit_of(repo, revision)
        if path not in commit.files:
            raise _Reply(404, f"Entry not found: {path}", "EntryNotFound")
        oid = commit.files[path]
        content = self.hub.blob(oid)
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{oid}"', "Content-Type": "application/octet-stream"}
        self._send(200, content, headers, head=method == "HEAD")


# ---- client side: fresh processes pointed at the server ---------------------------------------------------------
def client_env(server: HubServer, hf_home: Path, **extra: str) -> dict[str, str]:
    """The environment of a client process: huggingface_hub reads these at import, hence fresh processes."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(
        HF_ENDPOINT=server.url,
        HF_TOKEN=server.token,
        HF_HOME=str(hf_home),
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        TRANSFORMERS_VERBOSITY="error",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
    )
    env.update(extra)
    return env


def run_client(args: list[str], env: dict[str, str], timeout: float = 120) -> Any:
    """Run ``python <args>`` (e.g. ``["-m", "peft_debias", "publish", ...]`` or ``["-c", code]``) in a fresh process."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout)
