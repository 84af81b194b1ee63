"""The user verbs of `graft`, in the hosted platform's CLI style, on the SDK.

    graft get models|deployments|deployed-models|datasets|fine-tuning-jobs [ID] [-o table|json|yaml]
    graft create dataset ID --file F
    graft create fine-tuning-job ID --base-model M --dataset D [--epochs N ...] [--wait]
    graft load-lora MODEL --deployment D        graft unload-lora MODEL --deployment D
    graft chat MODEL                            graft completion bash|zsh

Every verb works within `--account` (else GRAFT_ACCOUNT, else the kubeconfig context's
namespace) with the user's own kubeconfig; IDs may be short (`tiny`) or full names
(`accounts/acme/models/tiny`). An error is one line on stderr that says what to do next, and
exit code 1, never a traceback (a dataset's problems follow, one a line, as `graft dataset
validate` lists them).

Only argparse is imported when `graft` builds its parser; the SDK (kubernetes, openai) is
imported when a verb runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

Obj = dict[str, Any]

NOUNS = {
    "models": "models",
    "deployments": "deployments",
    "deployed-models": "deployedmodels",
    "datasets": "datasets",
    "fine-tuning-jobs": "finetuningjobs",
}
"""The CLI's nouns and the plurals of the kinds (and of full names) they list."""
ALIASES = {
    "model": "models",
    "deployment": "deployments",
    "deployed-model": "deployed-models",
    "dataset": "datasets",
    "fine-tuning-job": "fine-tuning-jobs",
}
OUTPUTS = ("table", "json", "yaml")


# --- Output -----------------------------------------------------------------------------------


def _path(obj: Mapping[str, Any], path: str) -> Any:
    value: Any = obj
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _state(obj: Mapping[str, Any]) -> str:
    status = obj.get("status") or {}
    if status.get("state"):
        return str(status["state"])
    for c in status.get("conditions") or []:
        if c.get("type") == "Ready":
            return "Ready" if c.get("status") == "True" else str(c.get("reason") or "NotReady")
    return ""


def _progress(obj: Mapping[str, Any]) -> str:
    progress = _path(obj, "status.progress") or {}
    step, total = progress.get("step"), progress.get("totalSteps")
    return f"{step}/{total}" if step is not None and total else ""


Column = tuple[str, Callable[[Mapping[str, Any]], Any]]


def _col(header: str, path: str) -> Column:
    return header, lambda o: _path(o, path)


COLUMNS: dict[str, list[Column]] = {
    "models": [_col("KIND", "spec.kind"), _col("BASE", "spec.baseModel"), ("STATE", _state)],
    "deployments": [
        _col("BASE", "spec.baseModel"),
        _col("ENGINE", "spec.engine"),
        _col("DESIRED", "spec.replicas"),
        _col("READY", "status.readyReplicas"),
        _col("ADDONS", "spec.enableAddons"),
        ("STATE", _state),
    ],
    "deployedmodels": [
        _col("MODEL", "spec.model"),
        _col("DEPLOYMENT", "spec.deployment"),
        _col("LOADED", "status.loadedReplicas"),
        ("STATE", _state),
    ],
    "datasets": [
        _col("FILENAME", "spec.filename"),
        _col("FORMAT", "spec.format"),
        _col("EXAMPLES", "status.exampleCount"),
        ("STATE", _state),
    ],
    "finetuningjobs": [
        _col("BASE", "spec.baseModel"),
        _col("DATASET", "spec.dataset"),
        _col("OUTPUT", "spec.outputModel"),
        ("PROGRESS", _progress),
        _col("LOSS", "status.finalLoss"),
        ("STATE", _state),
    ],
}


def full_name_of(obj: Mapping[str, Any], plural: str) -> str:
    meta = obj.get("metadata") or {}
    return str(
        _path(obj, "status.name") or f"accounts/{meta.get('namespace', '')}/{plural}/{meta['name']}"
    )


def table(objects: Sequence[Mapping[str, Any]], plural: str) -> str:
    """Objects as an aligned table with the kind's columns, the full name first."""
    columns: list[Column] = [("NAME", lambda o: full_name_of(o, plural)), *COLUMNS[plural]]
    rows = [[h for h, _ in columns]]
    for obj in objects:
        rows.append(["" if (v := get(obj)) is None else str(v) for _, get in columns])
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]
    return "\n".join(
        "   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _clean(obj: Mapping[str, Any]) -> Obj:
    """The object without the bookkeeping a person does not need (managedFields)."""
    out = dict(obj)
    meta = dict(out.get("metadata") or {})
    meta.pop("managedFields", None)
    out["metadata"] = meta
    return out


def render(objects: Sequence[Mapping[str, Any]], plural: str, output: str, *, one: bool) -> str:
    """What `graft get` prints: a table, or the objects as JSON or YAML (one object alone when
    an ID was asked for, else a list)."""
    if output == "table":
        return table(objects, plural)
    cleaned = [_clean(o) for o in objects]
    data: Any = cleaned[0] if one and cleaned else {"items": cleaned}
    if output == "json":
        return json.dumps(data, indent=2, sort_keys=False)
    import yaml

    return str(yaml.safe_dump(data, sort_keys=False)).rstrip("\n")


# --- Parser -------------------------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser, *, output: bool = True) -> None:
    parser.add_argument(
        "--account",
        "-a",
        help="account ID (default: $GRAFT_ACCOUNT, else the kubeconfig context's namespace)",
    )
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: as kubectl finds it)")
    parser.add_argument("--context", help="kubeconfig context (default: the current one)")
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds per API request (default: 30)"
    )
    if output:
        parser.add_argument(
            "--output",
            "-o",
            choices=OUTPUTS,
            default="table",
            help="output format (default: table)",
        )


def _noun(value: str) -> str:
    noun = ALIASES.get(value, value)
    if noun not in NOUNS:
        raise argparse.ArgumentTypeError(f"unknown resource {value!r}; one of: {', '.join(NOUNS)}")
    return noun


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the user verbs to the `graft` command line."""
    get = sub.add_parser(
        "get",
        help="list or show models, deployments, deployed-models, "
        "datasets or fine-tuning-jobs of an account",
    )
    get.add_argument(
        "resource", type=_noun, choices=list(NOUNS), metavar="RESOURCE", help=", ".join(NOUNS)
    )
    get.add_argument("id", nargs="?", metavar="ID", help="short ID or full name (default: all)")
    _common(get)
    get.set_defaults(func=run(_get))

    create = sub.add_parser("create", help="create a dataset or a fine-tuning job")
    kinds = create.add_subparsers(title="resources", metavar="RESOURCE")
    dataset = kinds.add_parser(
        "dataset", help="validate a JSONL file locally, upload it and create a Dataset"
    )
    dataset.add_argument("id", metavar="ID", help="the Dataset's ID")
    dataset.add_argument("--file", required=True, help="the JSONL file")
    dataset.add_argument("--no-wait", action="store_true", help="do not wait for Ready")
    _common(dataset)
    dataset.set_defaults(func=run(_create_dataset))

    job = kinds.add_parser("fine-tuning-job", help="train a LoRA addon from a dataset")
    job.add_argument("id", metavar="ID", help="the FineTuningJob's ID")
    job.add_argument("--base-model", required=True, help="the Base model (ID or full name)")
    job.add_argument("--dataset", required=True, help="the Dataset (ID or full name)")
    job.add_argument("--output-model", help="ID of the addon Model to create (default: ID)")
    job.add_argument("--deployment", help="load the result into this Deployment")
    job.add_argument("--epochs", type=int)
    job.add_argument("--learning-rate", type=float)
    job.add_argument("--lora-rank", type=int)
    job.add_argument("--batch-size", type=int)
    job.add_argument("--max-steps", type=int)
    job.add_argument("--wait", action="store_true", help="wait for it, showing its progress")
    _common(job)
    job.set_defaults(func=run(_create_job))

    load = sub.add_parser("load-lora", help="load an addon Model into a Deployment")
    load.add_argument("model", metavar="MODEL", help="the addon Model (ID or full name)")
    load.add_argument("--deployment", required=True, help="the Deployment (ID or full name)")
    load.add_argument("--wait", action="store_true", help="wait until every replica serves it")
    _common(load)
    load.set_defaults(func=run(_load_lora))

    unload = sub.add_parser("unload-lora", help="unload an addon Model from a Deployment")
    unload.add_argument("model", metavar="MODEL", help="the addon Model (ID or full name)")
    unload.add_argument("--deployment", required=True, help="the Deployment (ID or full name)")
    _common(unload, output=False)
    unload.set_defaults(func=run(_unload_lora))

    chat = sub.add_parser("chat", help="chat with a model through the gateway (streaming)")
    chat.add_argument("model", metavar="MODEL", help="the Model (ID or full name)")
    chat.add_argument("--system", help="a system message to start with")
    chat.add_argument("--max-tokens", type=int, default=512)
    chat.add_argument("--gateway", help="gateway URL (default: $GRAFT_GATEWAY_URL)")
    chat.add_argument("--api-key", help="API key (default: $GRAFT_API_KEY)")
    _common(chat, output=False)
    chat.set_defaults(func=run(_chat))

    completion = sub.add_parser("completion", help="print a shell completion script")
    completion.add_argument("shell", choices=("bash", "zsh"))

    def _completion(ns: argparse.Namespace) -> int:
        print(completion_script(sub, ns.shell), end="")
        return 0

    completion.set_defaults(func=_completion)


# --- Running a verb ------------------------------------------------------------------------------


def run(verb: Callable[[argparse.Namespace, Any], int]) -> Callable[[argparse.Namespace], int]:
    """The verb with its Connection, and its errors as one line and exit code 1."""

    def call(ns: argparse.Namespace) -> int:
        from graft.sdk.errors import DatasetInvalid, GraftError

        try:
            from graft.sdk.connection import Connection

            conn = Connection(
                ns.account,
                kubeconfig=ns.kubeconfig,
                context=ns.context,
                timeout=ns.timeout,
                gateway_url=getattr(ns, "gateway", None),
                api_key=getattr(ns, "api_key", None),
            )
            return verb(ns, conn)
        except DatasetInvalid as exc:
            print(f"graft: error: {exc}", file=sys.stderr)
            return 1
        except GraftError as exc:
            print(f"graft: error: {one_line(str(exc))}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(file=sys.stderr)
            return 130

    return call


def one_line(text: str) -> str:
    lines = [line.strip().removeprefix("- ") for line in text.splitlines() if line.strip()]
    return "; ".join(lines)


def _plural(noun: str) -> str:
    return NOUNS[noun]


def _split(ref: str, plural: str, account: str) -> tuple[str, str]:
    """(account, ID) of a short ID or a full name."""
    from graft.core.names import InvalidReference, parse_ref
    from graft.sdk.errors import ConfigError

    try:
        parsed = parse_ref(ref, plural, account=account)
    except InvalidReference as exc:
        raise ConfigError(str(exc)) from None
    return parsed.account, parsed.id


def _print(objects: list[Obj], plural: str, output: str, *, one: bool) -> None:
    print(render(objects, plural, output, one=one))


def _get(ns: argparse.Namespace, conn: Any) -> int:
    from graft.sdk.errors import NotFound

    plural = _plural(ns.resource)
    if ns.id:
        account, id_ = _split(ns.id, plural, conn.account)
        target = conn.for_account(account)
        obj = target.get(plural, id_)
        if obj is None:
            raise NotFound(
                f"{target.full_name(plural, id_)} does not exist; `graft get {ns.resource}` "
                "lists what there is"
            )
        _print([obj], plural, ns.output, one=True)
        return 0
    objects = sorted(conn.list(plural), key=lambda o: o["metadata"]["name"])
    if not objects and ns.output == "table":
        print(f"No {ns.resource} in account {conn.account}.", file=sys.stderr)
        return 0
    _print(objects, plural, ns.output, one=False)
    return 0


def _create_dataset(ns: argparse.Namespace, conn: Any) -> int:
    from graft.core.names import is_id
    from graft.sdk.dataset import Dataset
    from graft.sdk.errors import ConfigError

    if not is_id(ns.id):
        from graft.api.common import ID_RULE

        raise ConfigError(f"dataset ID {ns.id!r} {ID_RULE}")
    dataset = Dataset.from_file(ns.file, connection=conn)
    dataset.requested_id = ns.id
    dataset.sync(wait=not ns.no_wait)
    _print([dataset.obj or {}], "datasets", ns.output, one=True)
    return 0


def _create_job(ns: argparse.Namespace, conn: Any) -> int:
    from graft.sdk.finetuning import hyperparameters_wire, wait_for_job

    hyperparameters = hyperparameters_wire(
        {
            "epochs": ns.epochs,
            "learning_rate": ns.learning_rate,
            "lora_rank": ns.lora_rank,
            "batch_size": ns.batch_size,
            "max_steps": ns.max_steps,
        }
    )
    spec: Obj = {
        "baseModel": ns.base_model,
        "dataset": ns.dataset,
        "outputModel": ns.output_model or ns.id,
    }
    if hyperparameters:
        spec["hyperparameters"] = hyperparameters
    if ns.deployment:
        spec["deployment"] = ns.deployment
    obj = conn.create("finetuningjobs", {"metadata": {"name": ns.id}, "spec": spec})
    if ns.wait:
        obj = wait_for_job(conn, ns.id)
    _print([obj], "finetuningjobs", ns.output, one=True)
    return 0


def _load_lora(ns: argparse.Namespace, conn: Any) -> int:
    from graft.sdk.llm import LLM

    _, deployment = _split(ns.deployment, "deployments", conn.account)
    llm = LLM(ns.model, deployment_type="shared", deployment=deployment, connection=conn)
    if not llm.info.is_addon:
        from graft.sdk.errors import ConfigError

        raise ConfigError(
            f"{llm.info.full_name} is a Base model: load-lora loads an addon (PeftAddon); "
            "serve a base model with a Deployment"
        )
    llm.apply()
    if ns.wait:
        llm.wait_ready()
    name = llm.deployed_model
    assert name is not None
    obj = conn.get("deployedmodels", name) or {"metadata": {"name": name}}
    _print([obj], "deployedmodels", ns.output, one=True)
    return 0


def _unload_lora(ns: argparse.Namespace, conn: Any) -> int:
    from graft.sdk.errors import NotFound
    from graft.sdk.llm import ref_full_name

    model = ref_full_name(ns.model, "models", conn.account)
    deployment = ref_full_name(ns.deployment, "deployments", conn.account)
    gone = []
    for dm in conn.list("deployedmodels"):
        spec = dm.get("spec") or {}
        if (
            ref_full_name(str(spec.get("model") or ""), "models", conn.account) == model
            and ref_full_name(str(spec.get("deployment") or ""), "deployments", conn.account)
            == deployment
        ):
            conn.delete("deployedmodels", dm["metadata"]["name"])
            gone.append(conn.full_name("deployedmodels", dm["metadata"]["name"]))
    if not gone:
        raise NotFound(
            f"{model} is not loaded into {deployment}; `graft get deployed-models` lists what is"
        )
    for name in gone:
        print(f"{name} deleted")
    return 0


def _chat(ns: argparse.Namespace, conn: Any, stdin: IO[str] | None = None) -> int:
    """A conversation: each line typed is a user message, the answer streams back."""
    import openai

    from graft.sdk.llm import LLM

    llm = LLM(ns.model, deployment_type="shared", connection=conn)
    messages: list[Obj] = []
    if ns.system:
        messages.append({"role": "system", "content": ns.system})
    source = stdin or sys.stdin
    interactive = source.isatty()
    if interactive:
        print(f"Chatting with {llm.model_name}; an empty line or Ctrl-D ends.", file=sys.stderr)
    while True:
        if interactive:
            print("> ", end="", flush=True, file=sys.stderr)
        line = source.readline()
        if not line or (interactive and not line.strip()):
            return 0
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line.rstrip("\n")})
        answer = []
        try:
            for chunk in llm.chat.completions.create(
                messages=messages, max_tokens=ns.max_tokens, stream=True
            ):
                if chunk.choices and chunk.choices[0].delta.content:
                    piece = chunk.choices[0].delta.content
                    answer.append(piece)
                    print(piece, end="", flush=True)
        except openai.APIStatusError as exc:
            from graft.sdk.errors import gateway_error

            raise gateway_error(
                exc.status_code, exc.response.content, action=f"chat with {llm.model_name}"
            ) from None
        except openai.APIConnectionError as exc:
            from graft.sdk.errors import Unavailable

            raise Unavailable(
                f"cannot reach the gateway at {conn.gateway_url}: {exc}; check GRAFT_GATEWAY_URL"
            ) from None
        print()
        messages.append({"role": "assistant", "content": "".join(answer)})


# --- Shell completion ---------------------------------------------------------------------------


def _tree(parser: argparse.ArgumentParser) -> dict[str, Any]:
    """{"options": [...], "commands": {name: subtree}} of an argparse parser."""
    options: list[str] = []
    commands: dict[str, Any] = {}
    for action in parser._actions:
        options += [o for o in action.option_strings if o.startswith("--")]
        if isinstance(action, argparse._SubParsersAction):
            commands.update(_commands(action))
        elif action.choices and not action.option_strings:
            commands.update({str(c): {"options": [], "commands": {}} for c in action.choices})
    return {"options": sorted(set(options)), "commands": commands}


def _commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> dict[str, Any]:
    return {name: _tree(child) for name, child in sub.choices.items()}


def completion_script(sub: argparse._SubParsersAction[argparse.ArgumentParser], shell: str) -> str:
    """A bash completion function for `graft`, made from its parser's commands (zsh loads it
    through bashcompinit): the commands, their subcommands and nouns, and their --options."""
    words: dict[str, str] = {}

    def walk(node: dict[str, Any], path: str) -> None:
        words[path] = " ".join([*node["commands"], *node["options"]])
        for name, child in node["commands"].items():
            walk(child, f"{path} {name}".strip())

    walk({"options": ["--help"], "commands": _commands(sub)}, "")
    known = "|".join(f'"{p}"' for p in words if p)
    lines = [
        "# graft shell completion (generated by `graft completion`)",
        "_graft_words() {",
        '    case "$1" in',
        *[f'        "{p}") echo "{w}" ;;' for p, w in words.items()],
        "    esac",
        "}",
        "_graft() {",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" path="" w',
        '    for w in "${COMP_WORDS[@]:1:COMP_CWORD-1}"; do',
        f'        case "${{path:+$path }}$w" in {known}) path="${{path:+$path }}$w" ;; esac',
        "    done",
        '    COMPREPLY=($(compgen -W "$(_graft_words "$path")" -- "$cur"))',
        "}",
        "complete -o default -F _graft graft",
    ]
    script = "\n".join(lines) + "\n"
    if shell == "zsh":
        script = "autoload -U +X bashcompinit && bashcompinit\n" + script
    return script
