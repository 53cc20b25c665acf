"""Roles of users in projects, and what each role may do."""

from __future__ import annotations

from enum import StrEnum

from gpupool.domain.errors import ValidationError


class ProjectRole(StrEnum):
    """A user's role in one project. admin: manages the project's members and all its workloads;
    member: submits and manages the project's workloads; viewer: reads only."""

    ADMIN = "admin"
    MEMBER = "member"
    VIEWER = "viewer"

    @property
    def can_write(self) -> bool:
        """True when the role may submit and cancel workloads."""
        return self in (ProjectRole.ADMIN, ProjectRole.MEMBER)

    @property
    def can_manage(self) -> bool:
        """True when the role may change the project's members."""
        return self == ProjectRole.ADMIN


def parse_role(value: str, field_name: str = "role") -> ProjectRole:
    """The role named `value` (admin, member, viewer); ValidationError otherwise."""
    try:
        return ProjectRole(str(value).strip().lower())
    except ValueError:
        raise ValidationError(f"unknown role {value!r}; use admin, member or viewer", field_name) from None
