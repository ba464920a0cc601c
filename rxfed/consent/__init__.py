"""Consent and signals: what may leave a patient's device, for whom, and the record of its use.

* :mod:`rxfed.consent.signals` — signal kinds (typed schemas with no free text) and signals.
* :mod:`rxfed.consent.grants` — consent grants, per-recipient grant tokens, revocations.
* :mod:`rxfed.consent.audit` — the per-patient hash-chained audit log and its signed heads.

This layer is sans-I/O: pure functions and frozen attrs classes; the node and the client
call it.
"""
