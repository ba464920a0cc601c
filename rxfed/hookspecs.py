"""Every rxfed hook specification, grouped by where it runs.

* **Plugin metadata**: every plugin that handles signals declares a manifest.
* **Infrastructure hooks** provide machinery chosen by configured name (a storage backend,
  clinician verification backends).
* **Vocabulary hooks** define signal kinds and code mappings; node and client both load them.
* **Node hooks** receive consented signals on a node (matchers, moderation, verification).
* **Client hooks** run on the patient's device, with plaintext in reach.

Plugins implement hooks with :data:`rxfed.hookimpl` and are found through the ``rxfed``
entry-point group; the built-in plugins are registered the same way. ``spec/plugin_hooks.md``
documents each hook with its exact signature and an example, and a test keeps the two in step.
No hook is ``firstresult``: rxfed calls each implementation on its own (see
:class:`rxfed.plugins.RxfedPlugins`), so one failing plugin never hides another's answer.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("rxfed")


# -- plugin metadata -----------------------------------------------------------------------


@hookspec
def rxfed_plugin_manifest():
    """Declare what this plugin reads, why, and what it may send to other nodes.

    :return: a :class:`rxfed.plugins.PluginManifest`. A plugin without a manifest receives no
        signals at all. The node hands a plugin a signal only when the manifest lists the
        signal's kind in ``reads``, the grant's purpose in ``purposes``, and the grant's
        recipient covers this plugin on this node.

    Example::

        @hookimpl
        def rxfed_plugin_manifest():
            return PluginManifest(name="tally", version="1.0", reads=("diagnosis.category",),
                                  purposes=("research",), sends=())
    """


# -- infrastructure hooks ------------------------------------------------------------------


@hookspec
def rxfed_storage_backends():
    """Offer storage backends the operator can name in ``[storage] backend``.

    :return: a list of :class:`rxfed.plugins.StorageBackend`; every implementation's lists
        are collected and the node picks one by name (never by hook order).

    Example::

        @hookimpl
        def rxfed_storage_backends():
            return [StorageBackend("sqlite", "embedded SQLite, WAL mode", open_sqlite)]
    """


@hookspec
def rxfed_clinician_verifiers():
    """Offer clinician verification backends a hospital node can name in its configuration.

    Before a node vouches for a clinician, the backends the operator configured check the
    claim against what the hospital knows (an NPI's check digit and an offline registry, the
    staff directory); every configured backend must accept it.

    :return: a list of :class:`rxfed.plugins.ClinicianVerifier`; every implementation's lists
        are collected and the node picks backends by name (never by hook order).

    Example::

        @hookimpl
        def rxfed_clinician_verifiers():
            return [ClinicianVerifier("npi", "NPI check digit and offline registry", open_npi)]
    """


# -- vocabulary hooks (node and client) ----------------------------------------------------


@hookspec
def rxfed_signal_kinds():
    """Define signal kinds.

    :return: a list of :class:`rxfed.consent.signals.SignalKind`. Every implementation's
        kinds are collected; two plugins defining one name differently is an error. A grant
        for a kind no installed plugin defines is refused.

    Example::

        @hookimpl
        def rxfed_signal_kinds():
            return [SignalKind("sleep.band", {"band": Field("choice", choices=("short", "ok", "long"))})]
    """


@hookspec
def rxfed_snomed_icd10_map():
    """Extend the curated SNOMED CT to ICD-10 category table the client derives from.

    :return: a dict from SNOMED CT concept id (str) to ICD-10 three-character category
        (str, e.g. ``"E11"``). Entries are merged over the shipped table; a plugin mapping a
        concept the table already maps differently is an error.

    Example::

        @hookimpl
        def rxfed_snomed_icd10_map():
            return {"44054006": "E11"}
    """


# -- client hooks (run on the patient's device) --------------------------------------------


@hookspec
def rxfed_derive_signals(kind, records, today, snomed_map):
    """Derive signals of ``kind`` from the patient's decrypted records, on the device.

    :param kind: the signal kind's name.
    :param records: the patient's decrypted :class:`rxfed.client.records.Record` list.
    :param today: a :class:`datetime.date` (passed in so derivation is reproducible).
    :param snomed_map: SNOMED CT to ICD-10 category mappings plugins added
        (``rxfed_snomed_icd10_map``), to merge over a derivation's own table. Like every
        hook argument, an implementation may leave it out of its signature.
    :return: a list of signal bodies (dicts) when this plugin derives ``kind``, else None.
        The client validates every body against the kind's schema before it may leave the
        device, whichever plugin produced it.

    Example::

        @hookimpl
        def rxfed_derive_signals(kind, records, today):
            if kind != "sleep.band":
                return None
            return [{"band": "ok"}]
    """


@hookspec
def rxfed_presend_check(text, country):
    """Check a message the patient is about to send, on the device.

    :param text: the plaintext message.
    :param country: the patient's ISO 3166 country code (e.g. ``"GB"``), or None when not
        known: for resources local to them, such as a crisis line. Like every hook argument,
        an implementation may leave it out of its signature.
    :return: a list of :class:`rxfed.plugins.PresendWarning` (possibly empty). Warnings are
        shown to the patient and never leave the device; one with ``confirm`` true lets the
        author edit the message or send it anyway, one with ``confirm`` false (crisis
        support) is shown at once and never stands between the patient and sending. A
        plugin that could not check the message returns a warning with code ``unchecked``.

    Example::

        @hookimpl
        def rxfed_presend_check(text):
            if "stop taking your" in text.lower():
                return [PresendWarning("medication_change", "Talk to your clinician first.")]
            return []
    """


# -- node hooks (receive consented signals) ------------------------------------------------


@hookspec
def rxfed_signals_received(signals):
    """Receive signals the node may hand to this plugin.

    :param signals: a non-empty list of :class:`rxfed.consent.signals.Signal`, all covered by
        a live consent grant naming this plugin's purpose and a recipient that includes it.
    :return: None (or an awaitable). A raise or a timeout is logged and counted against the
        plugin; the delivery still counts for the other plugins.

    Example::

        @hookimpl
        async def rxfed_signals_received(signals):
            for s in signals:
                COUNTS[s.body["category"]] += 1
    """


@hookspec
def rxfed_consent_revoked(grant, subject):
    """Delete everything derived from a grant token's signals: the grant was revoked or
    expired, or the patient's latest delivery under it carries no signals any more.

    :param grant: the revoked grant token's id (as in :attr:`Signal.grant`).
    :param subject: the pseudonym the signals came under.
    :return: None (or an awaitable). The node acknowledges the revocation to the patient's
        home node after every plugin that received signals under the grant has returned.

    Example::

        @hookimpl
        def rxfed_consent_revoked(grant, subject):
            SEEN.pop(subject, None)
    """


@hookspec
def rxfed_matching_categories(signals):
    """Name the matching categories consented signals put their patient in.

    The node calls this for plugins whose manifest serves the ``matching`` purpose, with the
    signals its own patients granted for matching (a grant whose recipient covers the
    plugin), when it prepares a private set intersection with a peer or answers a patient's
    ``GET /v1/matching/suggestions``. The node counts distinct patients per category, offers
    a category to peers only when at least ``k`` of its patients are in it, and keeps the
    counting in its store, not in the plugin (spec/federation.md, "Matching").

    :param signals: a list of :class:`rxfed.consent.signals.Signal`.
    :return: a list as long as ``signals``: for each signal, a list of category names
        (``system:code``, matching :data:`rxfed.protocol.matching.CATEGORY`, e.g.
        ``"icd10:G40"``), possibly empty. A result of another shape counts as a failure and
        contributes nothing.

    Example::

        @hookimpl
        def rxfed_matching_categories(signals):
            return [[f"icd10:{s.body['category']}"] for s in signals]
    """
