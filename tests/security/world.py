"""The callers of a server over the fake engine, every kind the access policy knows: an
admin key, a member key of organization A, a member key of organization B, a revoked key
(of A) and no key. Every secret used is known, for the scan of logs and files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from openmaas.accounts.admin import NewOrganization
from openmaas.platform import open_platform
from openmaas.settings import Settings

MASTER_KEY = "security-suite-master-key-0123456789abcdef"
FAKES = {"fake-chat": {"text": "one two three"}}


@dataclass(frozen=True)
class Keys:
    admin: str
    member: str  # organization A
    other: str  # organization B
    revoked: str  # was organization A's
    org_a: str
    org_b: str

    def headers(self, who: str) -> dict[str, str]:
        """``Authorization`` for ``who`` (a field name), none for ``"none"``."""
        if who == "none":
            return {}
        return {"Authorization": f"Bearer {getattr(self, who)}"}

    def secrets(self) -> list[str]:
        return [self.admin, self.member, self.other, self.revoked, MASTER_KEY]


async def issue_keys(settings: Settings) -> Keys:
    async with open_platform(settings) as platform:
        accounts = platform.accounts_admin("test")
        org_a = await accounts.create_org(NewOrganization(name="org-a"))
        org_b = await accounts.create_org(NewOrganization(name="org-b"))
        admin = await accounts.issue_key(org_a.id, "ops", role="admin")
        member = await accounts.issue_key(org_a.id, "app")
        other = await accounts.issue_key(org_b.id, "app")
        revoked = await accounts.issue_key(org_a.id, "old")
        await accounts.revoke_key(revoked.key.id)
        return Keys(admin.token, member.token, other.token, revoked.token, org_a.id, org_b.id)


def security_settings(tmp_path: Path) -> Settings:
    return Settings(
        home=tmp_path / "home",
        database_url="sqlite+aiosqlite:///" + str(tmp_path / "openmaas.db"),
        embedded_models=False,
        fake_models=FAKES,
        secret_key=MASTER_KEY,
    )
