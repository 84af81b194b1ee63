"""Argo CD health checks for the Graft kinds, generated from one template (pure: no Kubernetes
imports).

`graft argocd` writes `deploy/argocd/graft.dev/<Kind>/health.lua` (Argo CD's own
resource_customizations layout, next to the hand-written `health_test.yaml` and `testdata/`) and
`deploy/argocd/argocd-cm.yaml`, the argocd-cm patch that carries the same scripts as
`resource.customizations.health.graft.dev_<Kind>` keys. `configmap_data()` gives those keys and
scripts to anything else that ships them (the Helm chart).

What a script decides, in order:

1. no Ready condition yet: Progressing, "waiting for status";
2. the Ready condition (else status.observedGeneration) is from an older metadata.generation:
   Progressing, the operator has not looked at the current spec yet;
3. kinds that end (Dataset, FineTuningJob): Failed=True is Degraded, whatever its reason;
4. Ready=True: Healthy; but a kind with a /scale subresource scaled to zero is Suspended (unless
   its autoscaler put it there: then it is Healthy, idle until the next request), and a
   Deployment whose Progressing condition is True (a rollout or scaling) is Progressing;
5. Ready=False with a terminal reason (one only a spec change fixes; `TERMINAL`): Degraded;
6. scaled to zero: Suspended;
7. anything else is a wait (Waiting..., Validating, Training, Loading, ...): Progressing.

Messages are "<Reason>: <condition message>".

Argo CD runs these scripts in gopher-lua (Lua 5.1) without its string and math libraries, so the
template uses no `string.*`, no method calls on strings (`s:sub()`), only `..`, `tostring`,
`ipairs` and table lookups.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from graft.api.kinds import (
    ACCOUNT,
    ALL_KINDS,
    API_KEY,
    DATASET,
    DEPLOYED_MODEL,
    DEPLOYMENT,
    FINE_TUNING_JOB,
    MODEL,
    USER,
    Kind,
)
from graft.core.keys import GROUP
from graft.gen import crds

INVALID_SPEC = "InvalidSpec"
"""A spec the operator cannot read: terminal on every kind."""


@dataclass(frozen=True)
class Health:
    """How Argo CD judges one kind."""

    kind: Kind
    terminal: tuple[str, ...]
    """Ready=False reasons that waiting will not fix (the reconcilers publish them with state
    Failed): Degraded. Every other Ready=False reason is a wait: Progressing."""
    ends: bool = False
    """The kind has Succeeded/Failed conditions: Failed=True is Degraded whatever its reason."""
    rollout: bool = False
    """A Progressing condition that is True while pods roll or scale keeps it Progressing."""

    @property
    def replicas_field(self) -> str | None:
        """The spec field a scale-to-zero sets, from the CRD's /scale subresource; None when
        the kind has none."""
        subresources = crds.crd(self.kind)["spec"]["versions"][0]["subresources"]
        scale = subresources.get("scale")
        if scale is None:
            return None
        path: str = scale["specReplicasPath"]
        prefix = ".spec."
        if not path.startswith(prefix) or "." in path[len(prefix) :]:
            raise ValueError(f"{self.kind.kind}: unexpected specReplicasPath {path}")
        return path[len(prefix) :]


# Where each terminal reason comes from (operator/graft/...). tests/unit/test_argocd_health.py
# reads the reconcilers and plans and fails when a reason they publish as a failure is missing
# here, when a reason they publish as a wait is listed here, or when a listed reason is gone.
HEALTH: tuple[Health, ...] = (
    Health(
        ACCOUNT,
        (
            "NamespaceConflict",  # plan/account.py namespace_problem (state Failed)
            INVALID_SPEC,
        ),
    ),
    Health(
        USER,
        (
            "RoleBindingConflict",  # plan/user.py conflict_problem (waiting=False)
            INVALID_SPEC,
        ),
    ),
    Health(
        API_KEY,
        (
            "Expired",  # plan/apikey.py expired_problem: only a later spec.expiresAt helps
            "SecretConflict",  # plan/apikey.py conflict_problem (CONFLICT_REASONS)
            "RoleConflict",
            "RoleBindingConflict",
            INVALID_SPEC,  # controller/apikey.py reconcile
        ),
    ),
    Health(
        MODEL,
        (
            "UnsupportedSource",  # plan/model.py check_source
            "BaseModelNotBase",  # plan/model.py check_base
            "BaseModelNotShared",  # plan/model.py check_base
            "InvalidAdapter",  # plan/model.py inspection_outcome
            "AdapterUnreadable",
            "InspectionFailed",
            "InspectionResultMissing",
            "InvalidBaseModel",  # controller/model.py validate
            INVALID_SPEC,  # controller/model.py reconcile
        ),
    ),
    Health(
        DEPLOYMENT,
        (
            # controller/deployment.py resolve_base_model (waiting=False). InvalidBaseModel is
            # also published with waiting=True when the base Model's own spec is unreadable:
            # a spec must change either way, so it is terminal here.
            "InvalidBaseModel",
            "BaseModelNotBase",
            "BaseModelNotShared",
            "BaseModelNotReachable",
            "UnsupportedModelSource",
            "ImageNotAllowed",  # plan/deployment.py spec_problem
            INVALID_SPEC,  # plan/deployment.py spec_problem
        ),
        rollout=True,
    ),
    Health(
        DEPLOYED_MODEL,
        (
            "TooManyAddons",  # plan/deployedmodel.py judge
            "NotAnAddon",  # plan/deployedmodel.py _single
            "AddonsDisabled",
            "BaseModelMismatch",
            "RankTooHigh",
            "ModelInvalid",  # plan/deployedmodel.py _single: the Model failed for good
            "UnsupportedModelSource",
            "LoadFailed",  # plan/deployedmodel.py deployed_model_status: a server refused the load
            "InvalidDeployment",  # controller/deployedmodel.py _deployment_of, judge_this
            "CrossAccountDeployment",  # controller/deployedmodel.py _deployment_of
            "NotAdmitted",  # controller/deployedmodel.py judge_this
            INVALID_SPEC,
        ),
    ),
    Health(
        DATASET,
        (
            "ValidationResultMissing",  # plan/dataset.py validation_outcome
            "InvalidDataset",
            "SourceUnreadable",
            "ValidationFailed",
            "UnsupportedSource",  # controller/dataset.py source_problem
            INVALID_SPEC,
        ),
        ends=True,
    ),
    Health(
        FINE_TUNING_JOB,
        (
            "InvalidReference",  # controller/finetuning.py references
            "DatasetNotInAccount",  # controller/finetuning.py references
            "DatasetInvalid",  # plan/finetuning.py dataset_gate
            "BaseModelNotBase",  # plan/finetuning.py base_model_gate
            "BaseModelNotShared",
            "BaseModelNotReachable",
            "OutputModelExists",  # plan/finetuning.py output_taken
            "DeployedModelExists",
            "TrainingFailed",  # plan/finetuning.py training_progress
            "TrainerResultMissing",
            "UnsupportedSource",  # controller/dataset.py source_problem, via inputs_ready
            INVALID_SPEC,
        ),
        ends=True,
    ),
)

BY_KIND: dict[str, Health] = {h.kind.kind: h for h in HEALTH}

# --- The Lua ------------------------------------------------------------------------------------

_HEAD = """\
-- Argo CD health check for {group}/{kind}.
-- Generated by `graft argocd` from operator/graft/gen/argocd.py: edit that, not this file.
-- Argo CD runs it in gopher-lua (Lua 5.1) without the string and math libraries.
local hs = {{}}

-- Ready=False reasons that waiting will not fix: Degraded. Any other reason is a wait.
local terminal = {{
{terminal}
}}

local function find(conditions, wanted)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == wanted then
      return c
    end
  end
  return nil
end

local function says(c)
  local text = tostring(c.reason or c.type)
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. tostring(c.message)
  end
  return text
end

local status = obj.status or {{}}
local conditions = status.conditions
local ready = find(conditions, "Ready")
if ready == nil then
  hs.status = "Progressing"
  hs.message = "waiting for status"
  return hs
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
local observed = ready.observedGeneration
if observed == nil then
  observed = status.observedGeneration
end
if generation ~= nil and observed ~= nil and observed < generation then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to observe generation " .. tostring(generation)
    .. " (status is from generation " .. tostring(observed) .. ")"
  return hs
end
"""

_ENDS = """
local failed = find(conditions, "Failed")
if failed ~= nil and failed.status == "True" then
  hs.status = "Degraded"
  hs.message = says(failed)
  return hs
end
"""

_SCALED_TO_ZERO = """
local autoscaled = obj.spec ~= nil and obj.spec.autoscaling ~= nil
local scaledToZero = obj.spec ~= nil and obj.spec.{field} == 0 and not autoscaled
local idle = obj.spec ~= nil and obj.spec.{field} == 0 and autoscaled
"""

_IDLE = """\
  if idle then
    local said = "ScaledToZero: scaled to zero by the autoscaler"
    if status.autoscaling ~= nil and status.autoscaling.reason ~= nil then
      said = tostring(status.autoscaling.reason) .. ": " .. tostring(status.autoscaling.message)
    end
    hs.status = "Healthy"
    hs.message = said .. " (autoscaled; a request brings a replica back)"
    return hs
  end
"""

_SUSPENDED = """\
if scaledToZero then
  hs.status = "Suspended"
  hs.message = "scaled to zero (spec.{field}: 0); " .. says(ready)
  return hs
end
"""

_ROLLOUT = """\
  local progressing = find(conditions, "Progressing")
  if progressing ~= nil and progressing.status == "True" then
    hs.status = "Progressing"
    hs.message = says(progressing)
    return hs
  end
"""

_HEALTHY = """\
  hs.status = "Healthy"
  hs.message = says(ready)
  return hs
end
"""

_DEGRADED = """
if terminal[ready.reason] then
  hs.status = "Degraded"
  hs.message = says(ready)
  return hs
end
"""

_TAIL = """
hs.status = "Progressing"
hs.message = says(ready)
return hs
"""


def render_lua(health: Health) -> str:
    """The health.lua of one kind."""
    for reason in health.terminal:
        if not (reason.isascii() and reason.isidentifier() and reason[0].isupper()):
            raise ValueError(f"{health.kind.kind}: reason {reason!r} is not a CamelCase word")
    terminal = "\n".join(f"  {reason} = true," for reason in sorted(set(health.terminal)))
    out = _HEAD.format(group=GROUP, kind=health.kind.kind, terminal=terminal)
    if health.ends:
        out += _ENDS
    field = health.replicas_field
    if field is not None:
        out += _SCALED_TO_ZERO.format(field=field)
    out += '\nif ready.status == "True" then\n'
    if field is not None:
        out += _indent(_SUSPENDED.format(field=field))
        out += _IDLE
    if health.rollout:
        out += _ROLLOUT
    out += _HEALTHY
    out += _DEGRADED
    if field is not None:
        out += "\n" + _SUSPENDED.format(field=field)
    return out + _TAIL


def _indent(block: str) -> str:
    return "".join(f"  {line}" if line.strip() else line for line in block.splitlines(True))


def scripts() -> dict[str, str]:
    """health.lua of every kind, by kind, in the order of graft.api.kinds.ALL_KINDS."""
    return {k.kind: render_lua(BY_KIND[k.kind]) for k in ALL_KINDS}


# --- argocd-cm ----------------------------------------------------------------------------------

CONFIGMAP_HEADER = """\
# Generated by `graft argocd` from deploy/argocd/graft.dev/*/health.lua: do not edit by hand.
# Argo CD health checks for the Graft kinds, as a patch of Argo CD's argocd-cm ConfigMap:
#   kubectl -n argocd patch configmap argocd-cm --patch-file deploy/argocd/argocd-cm.yaml
# (or list it under `patches:` of the kustomization that installs Argo CD). See README.md.
"""


def configmap_key(kind: str) -> str:
    """The argocd-cm key of a kind's health check."""
    return f"resource.customizations.health.{GROUP}_{kind}"


def configmap_data(lua: Mapping[str, str] | None = None) -> dict[str, str]:
    """argocd-cm data: one `resource.customizations.health.graft.dev_<Kind>` key per kind, with
    the given scripts (by kind; default: the generated ones)."""
    lua = scripts() if lua is None else lua
    return {configmap_key(kind): lua[kind] for kind in (k.kind for k in ALL_KINDS)}


def render_configmap(
    lua: Mapping[str, str] | None = None, *, name: str = "argocd-cm", namespace: str = "argocd"
) -> str:
    """The argocd-cm patch as YAML, every script a literal block (`|`) so it reads as Lua."""
    lines = [
        "apiVersion: v1",
        "kind: ConfigMap",
        "metadata:",
        f"  name: {name}",
        f"  namespace: {namespace}",
        "data:",
    ]
    for key, script in configmap_data(lua).items():
        if not script.endswith("\n") or script.endswith("\n\n") or script.startswith(" "):
            raise ValueError(f"{key}: a script must end in one newline and not start indented")
        lines.append(f"  {key}: |")
        lines += [f"    {line}" if line else "" for line in script.splitlines()]
    return CONFIGMAP_HEADER + "\n".join(lines) + "\n"


# --- Files --------------------------------------------------------------------------------------


def lua_path(root: Path, kind: str) -> Path:
    return root / GROUP / kind / "health.lua"


def wanted_files(root: Path) -> dict[Path, str]:
    """Every generated file under `root` (deploy/argocd) and its content. The argocd-cm patch is
    made from the scripts as they will be on disk."""
    lua = scripts()
    files = {lua_path(root, kind): text for kind, text in lua.items()}
    files[root / "argocd-cm.yaml"] = render_configmap(lua)
    return files


def write_all(root: Path, *, check: bool) -> int:
    """`graft argocd`: write the health checks and the argocd-cm patch under `root`; with
    `check`, only say which are out of date. Returns the command's exit code."""
    stale = [
        path
        for path, text in wanted_files(root).items()
        if not path.is_file() or path.read_text() != text
    ]
    if check:
        for path in stale:
            print(
                f"{path} is out of date with operator/graft/gen/argocd.py: run 'make argocd' "
                "and commit",
                file=sys.stderr,
            )
        return 1 if stale else 0
    for path, text in wanted_files(root).items():
        if path in stale:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        print(path)
    return 0
