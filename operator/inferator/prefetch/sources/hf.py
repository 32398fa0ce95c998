"""hf://org/name[@revision]: a Hugging Face repository, on huggingface.co or any mirror (endpoint).

Listing uses huggingface_hub's HfApi: `model_info` resolves a branch or tag to a commit sha
(skipped when the operator pins one from the sizing run), and `list_repo_tree` at that sha
gives every file's size plus the sha256 of LFS files (`lfs.oid`) and the git blob sha1 of
the others (`oid`): both are verified. Bytes come from `{endpoint}/{repo}/resolve/{sha}/{path}`
with ranged GETs (see http_stream), pinned to the commit so a push during the download
cannot mix revisions.
"""

from __future__ import annotations

import re
from typing import Any

from inferator.prefetch.errors import AuthError, SourceError, TransientError
from inferator.prefetch.retry import RetryPolicy, with_retries
from inferator.prefetch.sources.http_stream import RETRYABLE_STATUS, HttpStream, make_session, open_range
from inferator.prefetch.sources.listing import Listing, RemoteFile, safe_relative_path, select_files

DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_REVISION = "main"
_COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
_CREDENTIALS_HINT = "HF_TOKEN from the ModelCache's credentialsSecret"


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection and timeout errors of whichever HTTP client this huggingface_hub uses
    (httpx2 from 1.x on, requests before)."""
    import requests

    errors: list[type[BaseException]] = [requests.ConnectionError, requests.Timeout]
    try:
        import httpx2

        errors += [httpx2.TransportError, httpx2.TimeoutException]
    except ImportError:
        pass
    return tuple(errors)


def parse_hf_uri(uri: str) -> tuple[str, str | None]:
    """'hf://org/name@rev' -> ('org/name', 'rev'); revision None when absent."""
    rest = uri.removeprefix("hf://")
    repo, _, revision = rest.partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise SourceError(f"{uri}: expected hf://org/name[@revision]")
    return repo, revision or None


class HuggingFaceSource:
    """A model repository through the Hub API and its resolve endpoint."""

    def __init__(
        self,
        uri: str,
        *,
        endpoint: str | None,
        token: str | None,
        pinned_revision: str | None,
        include: tuple[str, ...],
        exclude: tuple[str, ...],
        parallel: int,
        stall_timeout_s: float,
        retry: RetryPolicy,
    ) -> None:
        self.uri = uri
        self.repo_id, self.requested_revision = parse_hf_uri(uri)
        self.endpoint = (endpoint or DEFAULT_ENDPOINT).rstrip("/")
        self.token = token
        self.pinned_revision = pinned_revision
        self.include = include
        self.exclude = exclude
        self.stall_timeout_s = stall_timeout_s
        self.retry = retry
        self.session = make_session(parallel)
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}
        self.revision: str | None = None  # the commit sha, once listed

    def describe(self) -> str:
        return f"hf://{self.repo_id} at {self.endpoint}"

    def _api(self) -> Any:
        from huggingface_hub import HfApi

        # token=False: never fall back to a token file in $HF_HOME; the Secret is the only credential.
        return HfApi(endpoint=self.endpoint, token=self.token or False, library_name="inferator-prefetch")

    def _call(self, what: str, fn: Any) -> Any:
        """Run an HfApi call, mapping its errors onto ours (auth, transient, permanent)."""
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        where = f"{self.describe()}: {what}"
        try:
            return fn()
        except GatedRepoError as exc:
            raise AuthError(
                f"{where}: gated repository: credentials were rejected or lack access ({_CREDENTIALS_HINT})"
            ) from exc
        except RevisionNotFoundError as exc:
            raise SourceError(f"{where}: revision not found") from exc
        except RepositoryNotFoundError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            raise AuthError(
                f"{where}: repository not found, or credentials were rejected (HTTP {status}; the Hub answers "
                f"401 for private repositories without a valid token; {_CREDENTIALS_HINT})"
            ) from exc
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status in (401, 403):
                raise AuthError(
                    f"{where}: credentials were rejected (HTTP {status}; {_CREDENTIALS_HINT})"
                ) from exc
            if status in RETRYABLE_STATUS or status >= 500:
                raise TransientError(f"{where}: HTTP {status}") from exc
            raise SourceError(f"{where}: HTTP {status}: {exc}") from exc
        except _transport_errors() as exc:
            raise TransientError(f"{where}: {type(exc).__name__}: {exc}") from exc

    def resolve_revision(self) -> str:
        """The commit sha to fetch: the pinned one, a sha given in the URI, or the branch/tag resolved now."""
        if self.pinned_revision and _COMMIT_SHA.match(self.pinned_revision):
            return self.pinned_revision
        wanted = self.pinned_revision or self.requested_revision or DEFAULT_REVISION
        if _COMMIT_SHA.match(wanted):
            return wanted
        api = self._api()
        info = with_retries(
            f"{self.describe()}: resolving {wanted}",
            lambda: self._call(f"resolving {wanted}", lambda: api.model_info(self.repo_id, revision=wanted)),
            self.retry,
        )
        if not info.sha:
            raise SourceError(f"{self.describe()}: the Hub returned no commit sha for revision {wanted!r}")
        return str(info.sha)

    def list_files(self) -> Listing:
        from huggingface_hub.hf_api import RepoFile

        revision = self.resolve_revision()
        self.revision = revision
        api = self._api()

        def tree() -> list[Any]:
            return list(api.list_repo_tree(self.repo_id, revision=revision, recursive=True))

        entries = with_retries(
            f"{self.describe()}: listing {revision}",
            lambda: self._call(f"listing {revision}", tree),
            self.retry,
        )
        files = []
        for entry in entries:
            if not isinstance(entry, RepoFile):
                continue
            path = safe_relative_path(entry.path, self.describe())
            lfs = entry.lfs
            files.append(
                RemoteFile(
                    path=path,
                    size=int(lfs.size if lfs is not None else entry.size),
                    identity=f"lfs:{lfs.sha256}" if lfs is not None else f"git:{entry.blob_id}",
                    sha256=lfs.sha256 if lfs is not None else None,
                    git_blob_sha1=None if lfs is not None else entry.blob_id,
                    locator=entry.path,
                )
            )
        return Listing(select_files(files, self.include, self.exclude, self.describe()), revision)

    def file_url(self, repo_path: str, revision: str) -> str:
        from huggingface_hub import hf_hub_url

        return str(hf_hub_url(self.repo_id, repo_path, revision=revision, endpoint=self.endpoint))

    def open(self, file: RemoteFile, offset: int) -> HttpStream:
        """Bytes of a listed file, at the commit the listing resolved (never a moving branch)."""
        if self.revision is None:
            raise RuntimeError("list_files() resolves the revision before any file is opened")
        return open_range(
            self.session,
            self.file_url(str(file.locator), self.revision),
            offset,
            file.size,
            headers=self._auth,
            stall_timeout_s=self.stall_timeout_s,
            credentials_hint=_CREDENTIALS_HINT,
        )
