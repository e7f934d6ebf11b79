"""The daily loop of deploy/k8s/daily, run on one machine.

`python -m deploy.daily` (`make daily-loop`) reads the WorkflowTemplate and
CronWorkflow themselves and runs what Argo Workflows and the Kubernetes
controllers would: the DAG in dependency order with its `depends`, `when`
and `retryStrategy`, container templates as processes, the PyTorchJob as
Master + Worker processes with the environment the Kubeflow Training
Operator sets (torchrun reads it), the Indexed Job as one process per
completion index with JOB_COMPLETION_INDEX, and the volume `pinrank-data`
as a local directory. The commands are the manifests' own, parameters
substituted as Argo substitutes them; only sizes are overridden.

- `argo`: the subset of Argo Workflows the manifests use (parameters,
  depends/when, retries, resource success/failure conditions, onExit).
- `pods`: pods, Indexed Jobs and PyTorchJobs as local processes.
- `fleet`: the serving fleet (`pinrank serve --model-control explicit`
  replicas over one repository) and the traffic measured during a switch.
- `loop`: the days (bootstrap, a normal rollout, a forced canary failure)
  and results/daily_loop.json.
- `sizing`: per-user costs measured here and the arithmetic for 100 million
  users (docs/deploy.md).
"""
