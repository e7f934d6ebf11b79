"""The bad-input matrix: every way a caller, an operator or a file can hand
pinrank something wrong, and the clear answer each one must get.

A case is data: an id, the surface it enters through (SURFACES), what is
wrong, a callable that performs it, and the substrings a *clear* error must
contain (the offending field or file and the problem). Two kinds of "wrong"
are legitimate traffic, and their right answer is a correct ranking, not an
error (`served=True`):

- unknown user and item ids: cold-start users and new items are normal; they
  get the cold-start embedding and the out-of-vocabulary row;
- duplicated candidates: merged candidate sources repeat items; each item is
  ranked once (first occurrence kept), so no feed shows an item twice and a
  single repeat does not fail the whole request.

Raw gRPC/HTTP cases call Triton with tritonclient, urllib or the gRPC stub,
bypassing the SDK's own validation, so the *server* is what answers them.
After every case the server must still answer `/v2/health/ready`.

`run_matrix(http_url, grpc_url, workdir)` runs them all; `run_with_server`
also exports an untrained repository and serves it, for `make reliability`.

Modules: `case` (the case model), `matrix` (the case list, the runner and
`python -m reliability.bad_inputs`), `fixtures` (the valid inputs cases
corrupt), `helpers` and `broken_files` (what several surfaces share),
`cli_runners`, and one `*_cases` module per surface.
"""
