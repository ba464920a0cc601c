"""The patient's client as applications use it: :class:`rxfed.client.sdk.PatientCore` (keys,
identity, devices, records) plus the steps that span the whole account, which need the
communities and consent services built on the core: replacing what a revoked device could
still use, and erasing the account.

The services are imported when those steps run, not at import: most commands never need them
(their import time is part of every unlocked command's cost).
"""

from __future__ import annotations

from rxfed.client.sdk import PatientCore
from rxfed.protocol.statements import sign_statement
from rxfed.errors import RxfedError
from rxfed.protocol import vault as pv


class PatientClient(PatientCore):
    """One patient device talking to its home node. Use as an async context manager."""

    async def after_revocation(self) -> dict:
        """What a revoked device could still use after the new epoch, replaced: the member
        keys of every community (rekeyed, keeping each seat) and the pseudonymous keys of
        every live consent grant (revoked and granted again). Run by :meth:`revoke_devices`
        and :meth:`recover`; run it again if a host or node was unreachable. Returns
        ``{"communities": {address: outcome}, "grants": [...]}``."""
        from rxfed.client.community import PatientCommunities
        from rxfed.client.consent import PatientConsent

        communities = await PatientCommunities(self).rekey_all()
        grants = await PatientConsent(self, plugins=None).renew()
        return {"communities": communities, "grants": grants}

    async def erase_account(self, *, remove_profile: bool = True) -> dict:
        """Erase every record, device and key of this patient on the node; the node keeps a
        tombstone signed by the patient. Live consent grants are revoked first, so every
        node that received signals deletes them, and the patient leaves every community, so
        no member list keeps them (a community that refuses the departure does not hold up
        the erasure: it is reported in ``not_left``). Then remove the local key file."""
        from rxfed.client.community import PatientCommunities
        from rxfed.client.consent import PatientConsent

        consent = PatientConsent(self, plugins=False)
        for grant in await consent.list():
            if grant["status"] == "live":
                await consent.revoke(grant["grant"])
        communities, left, not_left = PatientCommunities(self), [], []
        for membership in await communities.memberships():
            address = str(membership.address)
            try:
                await communities.leave(address)
                left.append(address)
            except RxfedError as exc:
                not_left.append({"address": address, "reason": exc.message})
        secrets = await self.secrets()
        tombstone = sign_statement(secrets.signing, {"type": pv.TOMBSTONE, "patient": self.patient,
                                                     "epoch": secrets.epoch, "deleted": self._now()})
        result = await self._call("POST", "/v1/account/erase", {"tombstone": tombstone})
        if remove_profile:
            self.profile.remove()
        return {**result, "left": left, "not_left": not_left}
