"""The part of Argo Workflows (3.6) that deploy/k8s/daily uses, so the local
runner executes the manifests as written rather than a copy of them.

Modelled: workflow parameters (template defaults, then the CronWorkflow's
arguments, then overrides; `enum` enforced), `{{...}}` substitution (an
unresolved variable is an error, as in Argo), DAG tasks in dependency order
with `depends` (the enhanced-depends grammar: `task.Result`, `&&`, `||`,
`!`, parentheses; a bare name means Succeeded, Skipped or Daemoned) and
`when` (`A == B` / `A != B` after substitution), fail-fast (after a failed
task no new task starts), `retryStrategy` (limit, retryPolicy, backoff,
and `expression` on `lastRetry.exitCode`), resource templates' success and
failure conditions (label selectors over the resource's JSON, as Argo's
executor evaluates them: any failure requirement fails, all success
requirements must hold), and the onExit handler with `{{workflow.status}}`.

Anything outside this subset raises ArgoSubsetError instead of being
guessed: a manifest change that needs more of Argo fails `make daily-loop`
and tests/deploy/test_daily_*.py until it is modelled here.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ContextManager, Protocol

import yaml

ROOT = Path(__file__).resolve().parents[2]
DAILY = ROOT / "deploy" / "k8s" / "daily"
WORKFLOW_TEMPLATE = DAILY / "workflowtemplate.yaml"
CRON_WORKFLOW = DAILY / "cronworkflow.yaml"

#: `{{workflow.parameters.x}}`, `{{inputs.parameters.x}}`, `{{workflow.name}}`, `{{workflow.status}}`.
VARIABLE = re.compile(r"\{\{\s*([^{}\s]+)\s*\}\}")
#: Task results the enhanced `depends` grammar names.
RESULTS = ("Succeeded", "Failed", "Errored", "Skipped", "Omitted", "Daemoned")
DEPENDS_TOKEN = re.compile(r"\s*(\(|\)|&&|\|\||!|[A-Za-z0-9][-A-Za-z0-9]*(?:\.[A-Za-z]+)?)")
RETRY_EXPRESSION = re.compile(r"\s*asInt\(lastRetry\.exitCode\)\s*(==|!=|<=|>=|<|>)\s*(-?\d+)\s*")
RETRY_POLICIES = ("Always", "OnFailure", "OnError", "OnTransientError")
DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)")
DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
COMPARE: dict[str, Callable[[int, int], bool]] = {
    "==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
    ">": lambda a, b: a > b, "<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b,
}


class ArgoSubsetError(ValueError):
    """The manifests use something of Argo this runner does not model."""


def load(path: Path) -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    return doc


def parameters(template: Mapping[str, Any], cron: Mapping[str, Any] | None = None,
               overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The workflow's parameter values, as Argo resolves them for a run the
    CronWorkflow starts (`argo submit -p` acts like `overrides`)."""
    declared = {p["name"]: p for p in template["spec"].get("arguments", {}).get("parameters", [])}
    values = {name: str(p.get("value", "")) for name, p in declared.items()}
    layers: list[tuple[str, Mapping[str, Any]]] = []
    if cron is not None:
        ref = cron["spec"]["workflowSpec"]["workflowTemplateRef"]["name"]
        if ref != template["metadata"]["name"]:
            raise ArgoSubsetError(f"the CronWorkflow runs {ref!r}, not {template['metadata']['name']!r}")
        args = cron["spec"]["workflowSpec"].get("arguments", {}).get("parameters", [])
        layers.append(("the CronWorkflow", {p["name"]: p["value"] for p in args}))
    layers.append(("the overrides", overrides or {}))
    for where, layer in layers:
        for name, value in layer.items():
            if name not in declared:
                raise ArgoSubsetError(f"{where} set {name!r}, which the WorkflowTemplate does not declare")
            values[name] = str(value)
    for name, p in declared.items():
        if "enum" in p and values[name] not in p["enum"]:
            raise ArgoSubsetError(f"parameter {name}={values[name]!r} is not one of {p['enum']}")
    return values


def substitute(text: str, variables: Mapping[str, str]) -> str:
    def value(m: re.Match) -> str:
        name = m.group(1)
        if name.startswith("="):
            raise ArgoSubsetError(f"expression templates are not modelled: {m.group(0)}")
        if name not in variables:
            raise ArgoSubsetError(f"unresolved variable {m.group(0)}")
        return variables[name]

    return VARIABLE.sub(value, text)


def substitute_all(obj: Any, variables: Mapping[str, str]) -> Any:
    """Substitute in every string of a template (Argo does it on the template's JSON)."""
    if isinstance(obj, str):
        return substitute(obj, variables)
    if isinstance(obj, list):
        return [substitute_all(v, variables) for v in obj]
    if isinstance(obj, dict):
        return {k: substitute_all(v, variables) for k, v in obj.items()}
    return obj


# -- depends and when --------------------------------------------------------

def _depends_tokens(expr: str) -> list[str]:
    tokens, pos = [], 0
    while pos < len(expr):
        m = DEPENDS_TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            if expr[pos:].strip():
                raise ArgoSubsetError(f"depends {expr!r}: cannot read {expr[pos:]!r}")
            break
        tokens.append(m.group(1))
        pos = m.end()
    return tokens


def depends_on(expr: str) -> set[str]:
    """The tasks a `depends` expression names."""
    return {t.split(".")[0] for t in _depends_tokens(expr) if t not in ("(", ")", "&&", "||", "!")}


def evaluate_depends(expr: str, phases: Mapping[str, str]) -> bool:
    """`phases`: each finished task's phase (Succeeded, Failed, Errored, Skipped, Omitted)."""
    tokens = _depends_tokens(expr)
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str:
        nonlocal pos
        if pos >= len(tokens):
            raise ArgoSubsetError(f"depends {expr!r}: ends early")
        pos += 1
        return tokens[pos - 1]

    def term(token: str) -> bool:
        task, _, result = token.partition(".")
        if task not in phases:
            raise ArgoSubsetError(f"depends {expr!r}: {task!r} has not run (not a task, or a cycle)")
        if not result:
            return phases[task] in ("Succeeded", "Skipped", "Daemoned")
        if result not in RESULTS:
            raise ArgoSubsetError(f"depends {expr!r}: unknown result {result!r}")
        return phases[task] == result

    def unary() -> bool:
        token = take()
        if token == "!":
            return not unary()
        if token == "(":
            value = disjunction()
            if take() != ")":
                raise ArgoSubsetError(f"depends {expr!r}: unbalanced parentheses")
            return value
        if token in (")", "&&", "||"):
            raise ArgoSubsetError(f"depends {expr!r}: unexpected {token!r}")
        return term(token)

    def chain(operand: Callable[[], bool], op: str, combine: Callable[[bool, bool], bool]) -> Callable[[], bool]:
        """`operand (op operand)*`, left to right; every operand is read (no short circuit while parsing)."""
        def parse() -> bool:
            value = operand()
            while peek() == op:
                take()
                value = combine(value, operand())
            return value
        return parse

    conjunction = chain(unary, "&&", lambda a, b: a and b)
    disjunction = chain(conjunction, "||", lambda a, b: a or b)
    result = disjunction()
    if pos != len(tokens):
        raise ArgoSubsetError(f"depends {expr!r}: unexpected {tokens[pos]!r}")
    return result


def evaluate_when(expr: str) -> bool:
    """A substituted `when`: `A == B` or `A != B`, compared as words (Argo's
    parameters here are true/false enums)."""
    m = re.fullmatch(r"\s*(\S+)\s*(==|!=)\s*(\S+)\s*", expr)
    if not m:
        raise ArgoSubsetError(f"when {expr!r}: only `A == B` and `A != B` are modelled")
    left, op, right = m.groups()
    return (left == right) == (op == "==")


# -- retries -----------------------------------------------------------------

def parse_duration(text: str | int) -> float:
    """Seconds of a Go duration ("5m", "1h30m") or a plain number of seconds."""
    text = str(text).strip()
    if text.isdigit():
        return float(text)
    parts = DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ArgoSubsetError(f"not a duration: {text!r}")
    return sum(float(n) * DURATION_UNITS[u] for n, u in parts)


def retry_wanted(strategy: Mapping[str, Any], exit_code: int, attempts: int) -> bool:
    """Whether Argo starts another attempt after `attempts` attempts, the
    last one failed with `exit_code` (a pod's exit code; 1 for a resource
    whose failure condition held)."""
    if attempts > int(strategy.get("limit", 0)):
        return False
    policy = strategy.get("retryPolicy", "OnFailure")
    if policy not in RETRY_POLICIES:
        raise ArgoSubsetError(f"retryPolicy {policy!r}")
    # Every failure here is a node in phase Failed (a non-zero exit, a failure
    # condition); Argo's Error phase (the pod could not run) does not happen locally.
    if policy not in ("Always", "OnFailure"):
        return False
    expression = strategy.get("expression")
    if expression is None:
        return True
    m = RETRY_EXPRESSION.fullmatch(expression)
    if not m:
        raise ArgoSubsetError(f"retryStrategy.expression {expression!r}: only asInt(lastRetry.exitCode) <op> N")
    return COMPARE[m.group(1)](exit_code, int(m.group(2)))


def backoff_seconds(strategy: Mapping[str, Any], retry: int) -> float:
    """The wait before retry number `retry` (1 = the first retry)."""
    backoff = strategy.get("backoff")
    if not backoff:
        return 0.0
    wait = parse_duration(backoff["duration"]) * int(backoff.get("factor", 1)) ** (retry - 1)
    if "maxDuration" in backoff:
        wait = min(wait, parse_duration(backoff["maxDuration"]))
    return wait


# -- resource conditions -----------------------------------------------------

_MISSING = object()


def json_path(obj: Any, key: str) -> Any:
    """gjson's dotted path, as far as the conditions use it (object keys, list indexes)."""
    for part in key.split("."):
        if isinstance(obj, dict) and part in obj:
            obj = obj[part]
        elif isinstance(obj, list) and part.isdigit() and int(part) < len(obj):
            obj = obj[int(part)]
        else:
            return _MISSING
    return obj


def _as_string(value: Any) -> str:
    """gjson's Result.String()."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def requirement_matches(requirement: str, status_doc: Mapping[str, Any]) -> bool:
    """One label-selector requirement on a resource's JSON (Kubernetes'
    labels.Requirement.Matches over gjson values, as Argo evaluates it)."""
    requirement = requirement.strip()
    m = re.fullmatch(r"(!?)([A-Za-z0-9][-A-Za-z0-9_./]*)", requirement)
    if m:
        exists = json_path(status_doc, m.group(2)) is not _MISSING
        return exists != (m.group(1) == "!")
    m = re.fullmatch(r"([A-Za-z0-9][-A-Za-z0-9_./]*)\s*(==|=|!=|>|<)\s*(\S+)", requirement)
    if not m:
        raise ArgoSubsetError(f"condition {requirement!r}: only key, !key, key ==|=|!=|>|< value are modelled")
    key, op, want = m.groups()
    value = json_path(status_doc, key)
    if op == "!=":
        return value is _MISSING or _as_string(value) != want
    if value is _MISSING:
        return False
    if op in ("==", "="):
        return _as_string(value) == want
    try:
        return COMPARE[op](int(_as_string(value)), int(want))
    except ValueError:
        return False


def resource_phase(resource: Mapping[str, Any], status_doc: Mapping[str, Any]) -> str:
    """Succeeded, Failed or Running for a resource template's object."""
    failure = [r for r in resource.get("failureCondition", "").split(",") if r.strip()]
    success = [r for r in resource.get("successCondition", "").split(",") if r.strip()]
    if any(requirement_matches(r, status_doc) for r in failure):
        return "Failed"
    if success and all(requirement_matches(r, status_doc) for r in success):
        return "Succeeded"
    return "Running"


# -- running a workflow ------------------------------------------------------

@dataclass
class Attempt:
    exit_code: int
    seconds: float
    commands: list[list[str]]
    #: What the local controller reports (pods, restarts, the object's status).
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def phase(self) -> str:
        return "Succeeded" if self.exit_code == 0 else "Failed"


@dataclass
class Step:
    name: str
    template: str
    phase: str
    seconds: float = 0.0
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def exit_code(self) -> int | None:
        return self.attempts[-1].exit_code if self.attempts else None

    def record(self) -> dict[str, Any]:
        last = self.attempts[-1] if self.attempts else None
        return {
            "name": self.name, "template": self.template, "phase": self.phase, "seconds": round(self.seconds, 2),
            "exit_code": self.exit_code, "attempts": len(self.attempts),
            "command": last.commands[0] if last and last.commands else None,
            # Pods of one Job or PyTorchJob run the same command (their controller's environment tells them
            # apart: detail.pods); listed only where they differ.
            "commands": last.commands if last and len({tuple(c) for c in last.commands}) > 1 else None,
            "attempt_exit_codes": [a.exit_code for a in self.attempts] if len(self.attempts) > 1 else None,
            "detail": last.detail if last and last.detail else None,
        }


@dataclass
class Run:
    workflow: str
    status: str
    steps: list[Step]
    seconds: float

    def step(self, name: str) -> Step:
        (found,) = [s for s in self.steps if s.name == name]
        return found


class Cluster(Protocol):
    """What runs a template's work: Kubernetes and its controllers, or the local stand-in (pods.LocalCluster)."""

    def run_container(self, workflow: str, step: str, container: dict[str, Any], metadata: dict[str, Any],
                      volumes: list[dict[str, Any]]) -> Attempt: ...

    def run_resource(self, workflow: str, step: str, manifest: dict[str, Any]) -> tuple[Attempt, dict[str, Any]]:
        """Create the object and run it to completion: (the attempt, the object's final status)."""
        ...


def dag_order(tasks: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Tasks in an order where each comes after those its `depends` names (file order otherwise)."""
    by_name = {t["name"]: t for t in tasks}
    needs = {t["name"]: depends_on(t["depends"]) if "depends" in t else set() for t in tasks}
    for name, deps in needs.items():
        if deps - set(by_name):
            raise ArgoSubsetError(f"task {name} depends on unknown tasks {sorted(deps - set(by_name))}")
    done: list[str] = []
    while len(done) < len(tasks):
        ready = [t["name"] for t in tasks if t["name"] not in done and needs[t["name"]] <= set(done)]
        if not ready:
            raise ArgoSubsetError(f"the DAG has a cycle among {sorted(set(by_name) - set(done))}")
        done.append(ready[0])
    return [by_name[n] for n in done]


Log = Callable[[str], None]
Around = Callable[[str], ContextManager[Any]]


@dataclass
class Runner:
    """Runs one Workflow of a WorkflowTemplate on a Cluster."""

    template: dict[str, Any]
    cluster: Cluster
    log: Log = print
    #: Around each task (by name): the loop measures traffic around `rollout`.
    around: Around | None = None
    #: Real backoff waits are minutes; locally they are scaled (0: retry at once).
    backoff_scale: float = 0.0

    @property
    def templates(self) -> dict[str, dict[str, Any]]:
        return {t["name"]: t for t in self.template["spec"]["templates"]}

    def run(self, name: str, params: Mapping[str, str]) -> Run:
        spec = self.template["spec"]
        variables = {"workflow.name": name, **{f"workflow.parameters.{k}": v for k, v in params.items()}}
        entry = self.templates[spec["entrypoint"]]
        if "dag" not in entry:
            raise ArgoSubsetError("the entrypoint must be a dag template")
        t0 = time.monotonic()
        phases: dict[str, str] = {}
        steps: list[Step] = []
        failed = False
        for task in dag_order(entry["dag"]["tasks"]):
            step = self._task(task, variables, phases, skip_all=failed)
            phases[step.name] = step.phase
            steps.append(step)
            failed = failed or step.phase == "Failed"
        status = "Failed" if failed else "Succeeded"
        if spec.get("onExit"):
            steps.append(self._template(f"{spec['onExit']} (onExit)", spec["onExit"],
                                        {**variables, "workflow.status": status}))
        return Run(name, status, steps, time.monotonic() - t0)

    def _task(self, task: Mapping[str, Any], variables: Mapping[str, str], phases: Mapping[str, str],
              skip_all: bool) -> Step:
        name, template = task["name"], task["template"]
        if skip_all or ("depends" in task and not evaluate_depends(task["depends"], phases)):
            # DAG fail-fast: nothing new starts after a failure; an unmet dependency omits the task.
            self.log(f"  {name}: omitted")
            return Step(name, template, "Omitted")
        if "when" in task and not evaluate_when(substitute(task["when"], variables)):
            self.log(f"  {name}: skipped (when {task['when']!r})")
            return Step(name, template, "Skipped")
        declared = {p["name"] for p in self.templates[template].get("inputs", {}).get("parameters", [])}
        given = {p["name"]: substitute(p["value"], variables)
                 for p in task.get("arguments", {}).get("parameters", [])}
        if set(given) != declared:
            raise ArgoSubsetError(f"task {name} passes {sorted(given)} to {template}, which takes {sorted(declared)}")
        return self._template(name, template, {**variables, **{f"inputs.parameters.{k}": v for k, v in given.items()}})

    def _template(self, name: str, template_name: str, variables: Mapping[str, str]) -> Step:
        template = self.templates[template_name]
        strategy = template.get("retryStrategy")
        step = Step(name, template_name, "Failed")
        around = self.around(name) if self.around else contextlib.nullcontext()
        t0 = time.monotonic()
        self.log(f"  {name}: running ({template_name})")
        with around:
            while True:
                attempt = self._attempt(name, template, variables)
                step.attempts.append(attempt)
                if attempt.phase == "Succeeded":
                    break
                if strategy is None or not retry_wanted(strategy, attempt.exit_code, len(step.attempts)):
                    break
                wait = backoff_seconds(strategy, len(step.attempts))
                self.log(f"  {name}: exit {attempt.exit_code}, retrying (Argo would wait {wait:.0f} s)")
                time.sleep(wait * self.backoff_scale)
        step.phase = step.attempts[-1].phase
        step.seconds = time.monotonic() - t0
        retries = f", {len(step.attempts) - 1} retries" if len(step.attempts) > 1 else ""
        self.log(f"  {name}: {step.phase} (exit {step.exit_code}{retries}) in {step.seconds:.1f} s")
        return step

    def _attempt(self, name: str, template: Mapping[str, Any], variables: Mapping[str, str]) -> Attempt:
        workflow = variables["workflow.name"]
        if "container" in template:
            return self.cluster.run_container(workflow, name, substitute_all(template["container"], variables),
                                              substitute_all(template.get("metadata", {}), variables),
                                              self.template["spec"].get("volumes", []))
        if "resource" in template:
            resource = template["resource"]
            if resource["action"] != "create":
                raise ArgoSubsetError(f"{name}: resource action {resource['action']!r}")
            manifest = yaml.safe_load(substitute(resource["manifest"], variables))
            attempt, status = self.cluster.run_resource(workflow, name, manifest)
            phase = resource_phase(resource, {"status": status})
            if phase == "Running":
                raise ArgoSubsetError(f"{name}: the {manifest['kind']} finished but neither its success nor its "
                                      f"failure condition holds on {status}")
            # Argo's executor exits 1 when a failure condition holds.
            attempt.exit_code = 0 if phase == "Succeeded" else 1
            attempt.detail["status"] = status
            return attempt
        raise ArgoSubsetError(f"{name}: only container and resource templates run")
