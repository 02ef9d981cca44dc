"""The Hub side of publishing: token, repo, branch and the single commit, with one-line errors.

Every ``huggingface_hub`` failure becomes a :class:`~peft_debias.core.errors.DebiasError` that says what the Hub
answered and what state the repo is in; the token is scrubbed from every message.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from peft_debias.core.errors import DebiasError, one_line
from peft_debias.hub.artifact import is_stale

if TYPE_CHECKING:
    from peft_debias.hub.artifact import Artifact

logger = logging.getLogger(__name__)

_UNCHANGED = "a Hub commit is all or nothing, so the repo is as it was"
_TRANSPORT_MODULES = ("httpx", "httpx2", "httpcore", "httpcore2", "requests", "urllib3", "h11")


def redact(text: object, secrets: list[str]) -> str:
    """``text`` on one line with every secret replaced by ``***``."""
    out = str(text)
    for secret in secrets:
        if secret:
            out = out.replace(secret, "***")
    return one_line(out)


class HubSession:
    """An ``HfApi`` bound to one token (explicit, ``HF_TOKEN`` or the saved login)."""

    def __init__(self, token: str | None = None) -> None:
        from huggingface_hub import HfApi, constants, get_token

        self.token = token or get_token()
        self.endpoint = constants.ENDPOINT
        self.secrets = [t for t in (token, get_token()) if t]
        if not self.token:
            raise DebiasError(
                "no Hugging Face token found",
                "log in with `hf auth login` or set HF_TOKEN to a token with write access",
            )
        if constants.HF_HUB_OFFLINE:
            raise DebiasError("HF_HUB_OFFLINE is set, so nothing can be uploaded", "unset HF_HUB_OFFLINE to publish")
        self.api = HfApi(token=self.token)
        self.stage = "contacting"

    # ---- errors ------------------------------------------------------------------------------------------
    def error(self, err: BaseException, repo_id: str) -> DebiasError:
        """A one-line, token-free :class:`DebiasError` for a failed Hub call."""
        from huggingface_hub.errors import HfHubHTTPError, RevisionNotFoundError

        where = f"while {self.stage} {repo_id}"
        clean = redact(getattr(err, "server_message", None) or err, self.secrets)
        status = getattr(getattr(err, "response", None), "status_code", None)
        if isinstance(err, HfHubHTTPError) and status == 401:
            problem = f"the Hub at {self.endpoint} refused the token (401 Unauthorized) {where}"
            return DebiasError(
                problem, "log in with `hf auth login` or set HF_TOKEN to a valid token with write access"
            )
        if isinstance(err, HfHubHTTPError) and status == 403:
            problem = f"the token may not write to {repo_id} (403 Forbidden) {where}"
            return DebiasError(problem, "use a token with write access to that namespace")
        if isinstance(err, RevisionNotFoundError):
            return DebiasError(f"revision not found {where}", "check the --revision branch name")
        if isinstance(err, HfHubHTTPError) and status == 412:
            problem = f"{repo_id} changed while publishing (another commit landed first); {_UNCHANGED}"
            return DebiasError(problem, "run the command again")
        if isinstance(err, HfHubHTTPError) and status is not None and status >= 500:
            problem = f"the Hub answered {status} {where} ({clean}); {_UNCHANGED}"
            return DebiasError(problem, "try again later")
        if isinstance(err, HfHubHTTPError):
            return DebiasError(f"the Hub answered {status} {where} ({clean})", "check the repo id and your access")
        module = type(err).__module__.split(".")[0]
        if module in _TRANSPORT_MODULES or isinstance(err, (ConnectionError, TimeoutError)):
            problem = (
                f"the connection to the Hub at {self.endpoint} failed {where} ({type(err).__name__}: {clean}); "
                "a Hub commit is all or nothing, so the repo holds either its previous or the new version"
            )
            return DebiasError(problem, "check the network and run the command again")
        if isinstance(err, ValueError):  # e.g. README metadata refused by /api/validate-yaml
            return DebiasError(f"the Hub refused the upload {where} ({clean})", "check the model card metadata")
        return DebiasError(f"publishing failed {where} ({type(err).__name__}: {clean})", "run again with --debug")

    def _call(self, repo_id: str, stage: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self.stage = stage
        try:
            return fn(*args, **kwargs)
        except DebiasError:
            raise
        except Exception as err:
            raise self.error(err, repo_id) from err

    # ---- steps -------------------------------------------------------------------------------------------
    def full_repo_id(self, repo_id: str) -> str:
        """``name`` -> ``<token owner>/name`` (one whoami request); ``org/name`` unchanged."""
        if "/" in repo_id:
            return repo_id
        who = self._call(repo_id, "looking up the token owner for", self.api.whoami)
        return f"{who['name']}/{repo_id}"

    def _head(self, repo_id: str, revision: str, private: bool) -> tuple[str | None, set[str]]:
        """The branch's head commit and files, creating the branch (from main) when it is missing."""
        from huggingface_hub.errors import RevisionNotFoundError

        try:
            self.stage = "reading"
            info = self.api.repo_info(repo_id, revision=revision)
        except RevisionNotFoundError:
            if revision == "main":  # a repo without any commit yet
                return None, set()
            self._call(repo_id, f"creating branch {revision} in", self.api.create_branch, repo_id, branch=revision)
            info = self._call(repo_id, "reading", self.api.repo_info, repo_id, revision=revision)
        except Exception as err:
            raise self.error(err, repo_id) from err
        if private and not info.private:
            raise DebiasError(
                f"{repo_id} already exists and is public, but a private upload was asked for",
                "make the repo private on the Hub first, or publish without --private",
            )
        return info.sha, {s.rfilename for s in info.siblings or []}

    def commit(
        self,
        artifact: Artifact,
        card: str,
        repo_id: str,
        revision: str,
        private: bool,
        message: str,
        contents: Mapping[str, bytes] | None = None,
    ) -> tuple[Any, list[str]]:
        """Create the repo if missing and commit the folder plus ``card`` as README.md in one commit; a file in
        ``contents`` is uploaded with those bytes instead of the local file's
        (:func:`~peft_debias.hub.portable.upload_contents`)."""
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        self._call(repo_id, "creating", self.api.create_repo, repo_id, private=private, exist_ok=True)
        head, remote = self._head(repo_id, revision, private)
        contents = contents or {}
        with contextlib.ExitStack() as stack:
            # each file is opened without following links and checked to be the one inspected
            ops: list[Any] = [
                CommitOperationAdd(
                    path_in_repo=name, path_or_fileobj=contents.get(name) or stack.enter_context(artifact.open(name)),
                )
                for name in artifact.files
            ]
            ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode("utf-8")))
            deleted = sorted(p for p in remote - {*artifact.files, "README.md"} if is_stale(p))
            ops += [CommitOperationDelete(path_in_repo=p) for p in deleted]
            logger.info(
                "committing %d files (%d stale removed) to %s@%s",
                len(artifact.files) + 1, len(deleted), repo_id, revision,
            )  # fmt: skip
            commit = self._call(
                repo_id,
                "committing to",
                self.api.create_commit,
                repo_id,
                ops,
                commit_message=message,
                commit_description=f"{artifact.kind} uploaded by peft-debias publish",
                revision=revision,
                parent_commit=head,
            )
        return commit, deleted
