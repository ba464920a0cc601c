"""The patient SDK: keys, local encryption, and every patient operation against a node.

Plaintext lives here and nowhere else. The CLI (``rxfed patient ...``) is a thin layer
over :class:`PatientClient`.
"""

from rxfed.client.profile import Profile
from rxfed.client.records import Record
from rxfed.client.account import PatientClient
from rxfed.client.sdk import IntegrityError, NodeRefused, RollbackDetected

__all__ = ["PatientClient", "Profile", "Record", "IntegrityError", "NodeRefused", "RollbackDetected"]
