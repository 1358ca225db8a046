"""Who is calling: an operator's session or an API key, with a role and maybe a region."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pdsno.auth.permissions import allowed
from pdsno.errors import PermissionDeniedError


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    region: str | None
    kind: str = "api_key"  # "api_key" or "session"
    # An API key's scopes: the only permissions it may use (within its role's).
    scopes: frozenset[str] | None = None
    # The API key's ID or the user's ID.
    subject_id: str | None = None
    # A session's token hash, to end it; never the token itself.
    session_hash: str | None = None
    expires_at: datetime | None = None

    def may(self, permission: str) -> bool:
        """Deny by default: the role must hold it, and a scoped key must name it."""
        if not allowed(self.role, permission):
            return False
        return self.scopes is None or permission in self.scopes

    def why_not(self, permission: str) -> str:
        if not allowed(self.role, permission):
            return f"role {self.role} lacks the permission {permission}"
        return f"this API key is not scoped for the permission {permission}"

    def may_access(self, region: str | None) -> bool:
        """A principal bound to a region reaches only that region's resources."""
        return self.region is None or region == self.region

    def check_region(self, region: str | None, what: str = "this resource") -> None:
        if not self.may_access(region):
            raise PermissionDeniedError(
                f"{self.name} is bound to region {self.region}; {what} is in region "
                f"{region or '(none)'}"
            )
