"""The web client's records in a real browser (headless Chromium, as tests/test_web_browser.py):
conditions found by label, PHQ-9 with its crisis line, edits and deletions, the timeline and
its table, FHIR import and export, the passphrase change; each read by the CLI on the same
account and the other way round, with no console error, no CSP violation, no serious
accessibility violation, and no plaintext of what the page wrote in the node's storage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import MARKER
from test_web_browser import ARTEFACTS, PASSPHRASE, axe_scan, cli, entries, opened_page, register_in_page, unlock_by_keyboard

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
CERNER = ROOT / "tests" / "data" / "fhir" / "cerner-medications-and-vitals.json"
LABEL = "zqxlabel diabetes"
SYMPTOM = "zqxsymptom"


async def saved(page, n: int) -> None:
    try:
        await page.wait_for_selector(f"body[data-saved='{n}']", timeout=5000)
    except Exception:
        raise AssertionError(await page.text_content("#error"))


async def journal_entry(page, date: str, symptom: str, score: str, feeling: str, note: str = "") -> None:
    await page.fill("#j-date", date)
    await page.fill("#j-s1", symptom)
    await page.fill("#j-v1", score)
    await page.fill("#j-feeling", feeling)
    await page.fill("#j-note", note)
    await page.click("#journal-form button[type=submit]")


def _item(records: list[dict], kind: str, **match) -> dict:
    found = [r for r in records if r["kind"] == kind and all(r["data"].get(k) == v for k, v in match.items())]
    assert len(found) == 1, (kind, match, records)
    return found[0]


async def test_records_written_in_the_page_and_with_the_cli_read_each_other(node, tmp_path):
    url = node.url + "/"
    async with opened_page(url) as (page, watched):
        code = await register_in_page(page)

        # a condition found by its label: the pick fills system, code and label
        for folded in ("condition", "questionnaire"):
            await page.click(f"#more-{folded} > summary")
        await page.fill("#c-search", "type 2 diab")
        await page.click("#c-found button.pick[data-code='E11']")
        assert await page.input_value("#c-system") == "icd10" and await page.input_value("#c-code") == "E11"
        await page.fill("#c-label", LABEL)
        await page.fill("#c-onset", "2019-03-01")
        await page.click("#condition-form button[type=submit]")
        await saved(page, 1)
        # a code with a wrong check digit is refused, nothing saved
        await page.select_option("#c-system", "snomed")
        await page.fill("#c-code", "44054007")
        await page.click("#condition-form button[type=submit]")
        await page.wait_for_selector("#error:has-text('check digit')")

        # PHQ-9: item 9 above "Not at all" shows the crisis line at once, and after saving
        await page.fill("#q-country", "GB")
        await page.fill("#q-date", "2024-01-05")
        answers = [1, 1, 2, 1, 0, 0, 1, 0, 1]
        for i, a in enumerate(answers[:8]):
            await page.check(f"#q-{i}-{a}")
        assert await page.is_hidden("#crisis")
        await page.check("#q-8-1")
        await page.wait_for_selector("#crisis:not([hidden])")
        assert "Samaritans 116 123" in await page.text_content("#crisis")
        assert "Spitzer" in await page.text_content("#q-attribution")
        await page.click("#questionnaire-form button[type=submit]")
        await saved(page, 2)
        assert "PHQ9 score 7: mild" in await page.text_content("#q-result")
        assert "Samaritans" in await page.text_content("#crisis")
        # GAD-7 with a question left out is refused
        await page.select_option("#q-instrument", "gad7")
        await page.check("#q-0-2")
        await page.click("#questionnaire-form button[type=submit]")
        await page.wait_for_selector("#error:has-text('Answer question 2')")

        # journal entries and a treatment: the timeline draws them on one axis
        await journal_entry(page, "2024-01-01", SYMPTOM, "7", "3", f"{MARKER} first")
        await saved(page, 3)
        await journal_entry(page, "2024-01-04", SYMPTOM, "4", "6")
        await saved(page, 4)
        await page.fill("#t-name", "metformin")
        await page.fill("#t-started", "2024-01-02")
        await page.click("#treatment-form button[type=submit]")
        await saved(page, 5)
        chart = page.locator("#timeline-chart")
        assert await chart.get_attribute("role") == "img"
        assert await page.locator(f"#timeline-chart g.series[data-series='{SYMPTOM}'] circle").count() == 2
        assert await page.locator("#timeline-chart g.treatment[data-treatment='metformin'] rect").count() == 1
        await page.click("#timeline-toggle")
        table = await page.text_content("#timeline-table")
        assert "2024-01-04" in table and "metformin" in table and "onset: " + LABEL in table
        await page.screenshot(path=ARTEFACTS / "timeline-desktop.png", full_page=True)
        await page.locator("#timeline").screenshot(path=ARTEFACTS / "timeline-chart.png")
        # the last 30 days (today is well after January 2024): nothing of it, and the ongoing treatment
        await page.select_option("#timeline-range", "30")
        assert await page.locator(f"#timeline-chart g.series[data-series='{SYMPTOM}']").count() == 0
        assert await page.locator("#timeline-chart g.treatment[data-treatment='metformin']").count() == 1
        await page.select_option("#timeline-range", "all")
        await axe_scan(page, "timeline, questionnaire and condition forms")

        # edit the first entry (its next version) and delete the condition
        first = page.locator("#entries li", has_text=f"{MARKER} first")
        await first.locator("button.edit-record").click()
        await first.locator("input[id$='-feeling']").fill("5")
        await axe_scan(page, "edit form")
        await first.locator("form.edit button[type=submit]").click()
        await saved(page, 6)
        assert "feeling 5/10" in await entries(page)
        cond = page.locator("#entries li", has_text=LABEL)
        await cond.locator("button.delete-record").click()
        await cond.locator("button.confirm-delete").click()
        await saved(page, 7)
        assert LABEL not in await entries(page)

        # the CLI reads all of it, and writes and edits in turn
        profile = tmp_path / "cli"
        await cli("patient", "recover", "--node", node.url, "--profile", str(profile), "--kdf", "min", "--keep-all",
                  code=code)
        shown = (await cli("patient", "show", "--profile", str(profile)))["records"]
        assert not [r for r in shown if r["kind"] == "condition"]
        phq = _item(shown, "journal", date="2024-01-05")
        assert phq["data"]["questionnaires"] == [{"instrument": "phq9", "answers": answers, "total": 7, "severity": "mild"}]
        edited = _item(shown, "journal", date="2024-01-01")
        assert edited["version"] == 2 and edited["data"]["feeling"] == 5 and edited["data"]["symptoms"] == {SYMPTOM: 7}
        assert _item(shown, "treatment", name="metformin")["data"]["started"] == "2024-01-02"
        await cli("patient", "condition", "add", "--profile", str(profile), "44054006", "--system", "snomed",
                  "--label", "from the CLI", "--onset", "2018-05-01")
        await cli("patient", "journal", "add", "--profile", str(profile), "--gad7", "0,1,2,3,0,1,2", "--date", "2024-01-06")
        await cli("patient", "record", "edit", edited["id"][:12], "--profile", str(profile), "--note", "edited by the CLI")

        await unlock_by_keyboard(page, url)
        listed = await entries(page)
        assert "2018-05-01 · Condition · SNOMED 44054006 from the CLI" in listed
        assert "GAD7 9 (mild)" in listed and "PHQ9 7 (mild)" in listed
        assert "edited by the CLI" in listed and MARKER not in listed
        # the page edits what the CLI wrote
        mine = page.locator("#entries li", has_text="from the CLI")
        await mine.locator("button.edit-record").click()
        await mine.locator("input[id$='-label']").fill("edited in the page")
        await mine.locator("form.edit button[type=submit]").click()
        await page.wait_for_selector("#entries li:has-text('edited in the page')")
        await page.set_viewport_size({"width": 390, "height": 844})
        await page.screenshot(path=ARTEFACTS / "timeline-phone.png", full_page=True)
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390
        await axe_scan(page, "records at phone width")
        assert watched.problems == []
        assert await watched.csp() == []

    shown = (await cli("patient", "show", "--profile", str(profile)))["records"]
    assert _item(shown, "condition", code="44054006")["data"]["label"] == "edited in the page"
    for path in node.data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for plain in (MARKER, SYMPTOM, LABEL, "edited in the page", "metformin"):
                assert plain.encode() not in data, (path, plain)


async def test_fhir_import_and_export_and_the_passphrase_change(node, tmp_path):
    url = node.url + "/"
    async with opened_page(url) as (page, watched):
        code = await register_in_page(page)
        profile = tmp_path / "cli"
        await cli("patient", "recover", "--node", node.url, "--profile", str(profile), "--kdf", "min", "--keep-all",
                  code=code)

        # a hospital's Bundle picked in the page gives the records the CLI would make of it
        for folded in ("fhir", "settings"):
            await page.click(f"#more-{folded} > summary")
        await page.set_input_files("#import-file", str(CERNER))
        await page.click("#import-form button[type=submit]")
        await saved(page, 1)
        report = await page.text_content("#import-report")
        assert "Imported 8 records" in report
        await axe_scan(page, "import report")
        await page.set_input_files("#import-file", str(CERNER))
        await page.click("#import-form button[type=submit]")
        await saved(page, 2)
        assert "Nothing new: all 8 records" in await page.text_content("#import-report")
        again = await cli("patient", "import", "--profile", str(profile), "--fhir", str(CERNER))
        assert again["records"] == 0 and again["already_imported"] == 8

        # a file that is not a Bundle is refused, nothing stored
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({"resourceType": "Patient"}))
        await page.set_input_files("#import-file", str(bad))
        await page.click("#import-form button[type=submit]")
        await page.wait_for_selector("#error:has-text('expected a FHIR Bundle')")
        # nor is a Bundle about two people
        await page.set_input_files("#import-file", str(CERNER.parent / "searchset-two-patients.json"))
        await page.click("#import-form button[type=submit]")
        await page.wait_for_selector("#error:has-text('2 different patients')")
        assert len((await cli("patient", "show", "--profile", str(profile)))["records"]) == 8  # nothing stored

        # the export downloads a Bundle the CLI imports as records it already holds
        await page.fill("#j-s1", "pain")
        await page.fill("#j-v1", "3")
        await page.fill("#j-date", "2024-02-02")
        await page.click("#journal-form button[type=submit]")
        await saved(page, 3)
        async with page.expect_download() as info:
            await page.click("#export-form button[type=submit]")
        exported = tmp_path / "export.json"
        await (await info.value).save_as(exported)
        bundle = json.loads(exported.read_text())
        assert bundle["resourceType"] == "Bundle" and len(bundle["entry"]) >= 9
        back = await cli("patient", "import", "--profile", str(profile), "--fhir", str(exported))
        assert back["records"] == 0 and back["already_imported"] == 9, back
        cli_export = tmp_path / "cli-export.json"
        await cli("patient", "export", "--profile", str(profile), "--fhir", str(cli_export))
        assert json.loads(cli_export.read_text()) == bundle

        # the passphrase: the current one is required; afterwards only the new one opens
        new = "another passphrase, longer still"
        await page.fill("#pp-current", "not the passphrase at all")
        await page.fill("#pp-new", new)
        await page.fill("#pp-again", new)
        await page.click("#passphrase-form button[type=submit]")
        await page.wait_for_selector("#error:has-text('does not open')", timeout=30_000)
        await page.fill("#pp-current", PASSPHRASE)
        await page.fill("#pp-new", new)
        await page.fill("#pp-again", new)
        await page.click("#passphrase-form button[type=submit]")
        await page.wait_for_selector("body[data-passphrase=changed]", timeout=30_000)
        await page.goto(url)
        await page.wait_for_selector("#unlock:not([hidden])")
        await page.fill("#unlock-pass", PASSPHRASE)
        await page.click("#unlock-form button[type=submit]")
        await page.wait_for_selector("#error:has-text('does not open')", timeout=30_000)
        await page.fill("#unlock-pass", new)
        await page.click("#unlock-form button[type=submit]")
        await page.wait_for_selector("body[data-state=unlocked]", timeout=30_000)
        assert "pain 3/10" in await entries(page)
        # what the page imported and wrote is ciphertext on the node
        for path in node.data_dir.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                for plain in (b"BRANNIGAN", b"Quarry Ridge", b"amlodipine", b"olmesartan"):
                    assert plain not in data, (path, plain)
        # Chromium logs the node's 409 itself: the first import after the CLI's recovery was
        # refused as signed for the old identity epoch, and the page reloaded and signed again
        assert [p for p in watched.problems if "409 (Conflict)" not in p] == []
        assert await watched.csp() == []
