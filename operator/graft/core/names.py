"""Graft IDs, full resource names and references (pure).

A namespaced Graft object lives in its account's namespace, so its account ID is its namespace
and its full name is accounts/<namespace>/<plural>/<name>. References in specs accept the short
ID (same account) or the full name (any account).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from graft.api.common import ID_RE, ID_RULE
from graft.api.tenancy import Role

_FULL = re.compile(r"^accounts/(?P<account>[^/]+)/(?P<plural>[^/]+)/(?P<id>[^/]+)$")
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


class InvalidReference(ValueError):
    """A reference that names the wrong kind of resource or is not a valid name."""


def is_id(value: str) -> bool:
    return bool(ID_RE.match(value))


def full_name(account: str, plural: str, id_: str) -> str:
    return f"accounts/{account}/{plural}/{id_}"


def account_full_name(account: str) -> str:
    """An Account's full name: the root of its resources' names, accounts/<account>/..."""
    return f"accounts/{account}"


def cluster_role_name(role: Role | str) -> str:
    """The ClusterRole Graft ships for a User's role (graft.gen.rbac defines them)."""
    return f"graft-{Role(role).value}"


@dataclass(frozen=True)
class Ref:
    """A resolved reference: the account (namespace) and ID of a resource."""

    account: str
    id: str
    plural: str

    @property
    def full_name(self) -> str:
        return full_name(self.account, self.plural, self.id)


def parse_ref(ref: str, plural: str, *, account: str) -> Ref:
    """Resolve `ref` (an ID, or accounts/<a>/<plural>/<id>) seen from within `account`."""
    m = _FULL.match(ref)
    if m is None:
        if not is_id(ref):
            raise InvalidReference(f"{ref!r} {ID_RULE}")
        return Ref(account=account, id=ref, plural=plural)
    if m["plural"] != plural:
        raise InvalidReference(
            f"{ref!r} names {m['plural']}, expected accounts/<account>/{plural}/<id>"
        )
    for part in (m["account"], m["id"]):
        if not is_id(part):
            raise InvalidReference(f"{part!r} in {ref!r} {ID_RULE}")
    return Ref(account=m["account"], id=m["id"], plural=plural)


def is_dns1035_label(value: str) -> bool:
    """Service names must start with a letter; Graft IDs may start with a digit."""
    return bool(_DNS1035.match(value))
