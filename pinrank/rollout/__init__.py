"""Roll a new model version out to a fleet of replicas: `pinrank rollout`,
the last step of the daily loop (export v+1 -> parity gate -> rollout).

The fleet is N replicas (Triton pods, each `pinrank serve --model-control
explicit`) behind one Service, all serving one model repository they share
(a ReadWriteMany volume; locally, one directory). `pinrank export` has
already published v+1 into it, parity-gated; the replicas still serve v,
since under explicit model control Triton loads nothing until told to.

The procedure (procedure.py): preflight (every replica ready and serving
the same v; v+1 and v complete in the repository), then switch ONE replica,
the canary, to v+1 and replay real requests (replay.py) to it and to an old
replica (canary.py: no errors, every answer within the contract, p99 within
a bound of the old version's); then switch the others one at a time, each
checked after its switch. A failed canary switches the canary back (exit
3); a failed switch puts every replica back on v (exit 1).

Why a per-replica `switch_version` over the shared repository is sound
behind one Service:

- A switch is atomic per replica (pinrank.serving.model_control): both
  versions' step models are loaded first, then the ensemble's routing moves
  to v+1 for all steps at once, then v is unloaded. Requests in flight
  finish on the version they started on; no request sees a replica that is
  half switched (a new preprocess feeding an old ranker) and none fails
  (`failed_requests_during_switch`, tests/rollout).
- While the rollout runs, the Service sends some requests to v replicas and
  some to v+1 replicas. Each answer comes from one version end to end, so
  each is self-consistent; the mix lasts seconds, and v+1 passed the parity
  gate and the canary before it took more than one replica. Like any canary,
  the canary replica answers its share of live traffic while it is judged.
- The repository's configs are edited by each switch and record the last
  one, so after a rollout (or a rollback) they say what the fleet serves:
  a pod that restarts, or one that joins later (a headless Service lists
  only ready pods), loads the same version as the rest. The files of v stay
  on the volume, so a rollback is another switch, in seconds.
- A lock file in the repository (flock) keeps two rollouts from
  interleaving their edits.

The alternative, a rolling restart that loads v+1 (kubectl rollout restart,
the configs pointing at v+1), costs each pod a full start: Triton and its
Python stubs, every model loaded, readiness probes passing, minutes per pod
for large models and N of them in sequence, while the fleet runs one pod
short; and the Service mixes v and v+1 pods during it just the same.
Switching in place costs a load of v+1 beside v (seconds for these models)
and no capacity, and a rollback takes seconds instead of another rolling
restart.
"""
