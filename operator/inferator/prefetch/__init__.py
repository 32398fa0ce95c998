"""`inferator prefetch`: the code the ModelCache prefetch Job runs.

It lists a source (Hugging Face, S3, HTTP(S) or a volume already holding the weights),
downloads the files in parallel to temporary names, verifies them (size always, sha256
whenever the source publishes one), renames them into place, reads the model's facts and
writes the cache manifest last, so that its presence means "complete and verified". Progress
and results are reported on the ModelCache's status subresource.

Modules: `config` (env + flags), `sources/` (one module per source kind), `download`
(parallel, resumable transfers), `verify` (digests and structural checks), `journal`
(files already complete), `manifest` (the cache manifest), `report` (status patches),
`errors` (exit codes), `redact` (keeping secrets out of every message), `main` (the CLI).
"""
