"""CareVault as seen by fhirpy 2.x, a real FHIR client, through its sync client.

Run by tests/clients/fhirpy_check.sh, which starts the server and passes:
  FHIRPY_BASE              the FHIR base URL (http://127.0.0.1:PORT/fhir)
  FHIRPY_ADMIN_TOKEN       a token of role admin
  FHIRPY_FRONT_DESK_TOKEN  a token of role front_desk
  FHIRPY_CAREVAULT_BIN     the carevault binary; with the server's CAREVAULT_* settings in
                           the environment it mints the clinician's token once the admin
                           has created the clinician's Practitioner

Every check prints `ok NAME`, or `FAIL NAME: why` with the last exchange with the server.
A check listed in KNOWN_FAILURES is expected to fail: it prints `known-failure NAME: why`
and does not fail the run; if it passes, the run fails so that the mark is removed.
The last line is `fhirpy: N passed, N failed`; the exit code is non-zero on any failure.
"""

import json
import os
import subprocess
import sys
import time
import traceback

import fhirpy
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import BaseFHIRError, OperationOutcome, ResourceNotFound

BASE = os.environ["FHIRPY_BASE"].rstrip("/")
SUBSETTED = ("http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "SUBSETTED")
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
LOINC = "http://loinc.org"
IDENTIFIER_SYSTEM = "urn:oid:2.16.840.1.113883.4.1"

# Checks that fail today, each with the question it leaves open. They run and report on
# every run; a check here that starts to pass fails the run until its mark is removed.
KNOWN_FAILURES: dict[str, str] = {}

exchanges = []


def record(response, *args, **kwargs):
    """requests response hook: keeps every exchange, so checks can assert exact statuses."""
    request = response.request
    exchanges.append(
        {
            "method": request.method,
            "url": request.url,
            "content_type": request.headers.get("Content-Type"),
            "if_none_exist": request.headers.get("If-None-Exist"),
            "status": response.status_code,
            "body": response.text[:400],
        }
    )


def client(token, **headers):
    return SyncFHIRClient(
        BASE,
        authorization=f"Bearer {token}",
        extra_headers=headers or None,
        requests_config={"timeout": 30, "hooks": {"response": [record]}},
    )


def last(method=None):
    for exchange in reversed(exchanges):
        if method is None or exchange["method"] == method:
            return exchange
    raise AssertionError(f"no {method or ''} request was sent")


def expect(actual, wanted, what):
    if actual != wanted:
        raise AssertionError(f"{what}: expected {wanted!r}, got {actual!r}")


def mint_clinician(practitioner_id):
    out = subprocess.run(
        [
            os.environ["FHIRPY_CAREVAULT_BIN"],
            "token",
            "--sub",
            "zz-fhirpy-clinician",
            "--tenant",
            "clinic-a",
            "--role",
            "clinician",
            "--fhir-user",
            f"Practitioner/{practitioner_id}",
            "--ttl",
            "3600",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return out.stdout.strip()


def tags(resource):
    return {(t.get("system"), t.get("code")) for t in resource.get("meta", {}).get("tag", [])}


def observation(subject, code, category, when, value):
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": CATEGORY, "code": category}]}],
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": subject},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": "1", "system": "http://unitsofmeasure.org", "code": "1"},
    }


class Run:
    def __init__(self):
        self.admin = client(os.environ["FHIRPY_ADMIN_TOKEN"])
        self.front_desk = client(os.environ["FHIRPY_FRONT_DESK_TOKEN"])
        self.clinician = None
        self.practitioner = None
        self.patient = None
        self.passed = 0
        self.failed = 0
        self.known = 0

    # --- CRUD -----------------------------------------------------------------------------

    def check_practitioner_create_read(self):
        practitioner = self.admin.resource(
            "Practitioner",
            identifier=[{"system": "http://hl7.org/fhir/sid/us-npi", "value": "9990000421"}],
            name=[{"family": "Okafor", "given": ["Ada"]}],
        )
        practitioner.save()
        expect(last("POST")["status"], 201, "create status")
        expect(practitioner.meta.versionId, "1", "versionId after create")
        read = self.admin.reference("Practitioner", practitioner.id).to_resource()
        expect(read.id, practitioner.id, "id read back")
        expect(read.name, [{"family": "Okafor", "given": ["Ada"]}], "name read back")
        self.practitioner = practitioner
        self.clinician = client(mint_clinician(practitioner.id))

    def check_patient_create_read(self):
        patient = self.front_desk.resource(
            "Patient",
            identifier=[{"system": IDENTIFIER_SYSTEM, "value": "900-10-0001"}],
            name=[{"family": "Lindqvist", "given": ["Sara"]}],
            gender="female",
            birthDate="1984-03-09",
            generalPractitioner=[self.practitioner.to_reference()],
        )
        patient.save()
        expect(last("POST")["status"], 201, "create status")
        expect(patient.meta.versionId, "1", "versionId after create")
        read = self.front_desk.reference("Patient", patient.id).to_resource()
        expect(read.serialize()["generalPractitioner"], [{"reference": f"Practitioner/{self.practitioner.id}"}], "generalPractitioner")
        expect(read.birthDate, "1984-03-09", "birthDate")
        expect(read.identifier, [{"system": IDENTIFIER_SYSTEM, "value": "900-10-0001"}], "identifier")
        self.patient = read

    def check_update_version_2(self):
        self.patient["telecom"] = [{"system": "phone", "value": "+46 8 555 0100", "use": "mobile"}]
        self.patient.save()
        expect(last("PUT")["status"], 200, "update status")
        expect(self.patient.meta.versionId, "2", "versionId after save()")
        read = self.front_desk.reference("Patient", self.patient.id).to_resource()
        expect(read.meta.versionId, "2", "versionId read back")
        expect(read.telecom[0].value, "+46 8 555 0100", "telecom read back")

    def check_history(self):
        # fhirpy has no history helper: its generic operation call on a reference.
        bundle = self.front_desk.reference("Patient", self.patient.id).execute("_history", method="get")
        expect(bundle.resourceType, "Bundle", "resourceType")
        expect(bundle.type, "history", "Bundle.type")
        expect(bundle.total, 2, "total")
        expect([e.resource.meta.versionId for e in bundle.entry], ["2", "1"], "versions, newest first")
        expect([e.request.method for e in bundle.entry], ["PUT", "POST"], "request methods")

    def check_delete_then_gone(self):
        doomed = self.front_desk.resource("Patient", name=[{"family": "Lindqvist", "given": ["Temp"]}])
        doomed.save()
        doomed.delete()
        expect(last("DELETE")["status"], 204, "delete status")
        try:
            self.front_desk.reference("Patient", doomed.id).to_resource()
        except ResourceNotFound as gone:
            expect(last("GET")["status"], 410, "read after delete")
            if '"deleted"' not in str(gone):
                raise AssertionError(f"410 body is not a `deleted` OperationOutcome: {gone}") from None
        else:
            raise AssertionError("reading a deleted Patient returned it")
        try:
            self.front_desk.reference("Patient", "00000000-0000-4000-8000-000000000000").to_resource()
        except ResourceNotFound:
            expect(last("GET")["status"], 404, "read of an unknown id")
        else:
            raise AssertionError("reading an unknown id returned a resource")

    # --- conditional create ---------------------------------------------------------------

    def check_get_or_create(self):
        wanted = self.front_desk.resource(
            "Patient",
            identifier=[{"system": IDENTIFIER_SYSTEM, "value": "900-10-0002"}],
            name=[{"family": "Berg", "given": ["Nils"]}],
        )
        search = self.front_desk.resources("Patient").search(identifier=f"{IDENTIFIER_SYSTEM}|900-10-0002")
        first, created = search.get_or_create(wanted)
        expect(created, True, "first call created")
        second, created_again = search.get_or_create(wanted)
        expect(created_again, False, "second call created")
        expect(second.id, first.id, "id of the second call")
        expect([p.id for p in search.fetch_all()], [first.id], "Patients with the identifier")

    def check_get_or_create_never_duplicates(self):
        # Whatever the answer to fhirpy's query-string form, it must never write a second
        # record for one identifier (nor one at all when it refuses).
        search = self.front_desk.resources("Patient").search(identifier=f"{IDENTIFIER_SYSTEM}|900-10-0003")
        wanted = self.front_desk.resource(
            "Patient", identifier=[{"system": IDENTIFIER_SYSTEM, "value": "900-10-0003"}], name=[{"family": "Berg"}]
        )
        statuses = []
        for _ in range(2):
            try:
                search.get_or_create(wanted)
            except OperationOutcome:
                pass
            statuses.append(last("POST")["status"])
        found = search.fetch_all()
        if statuses == [400, 400]:
            expect(found, [], "Patients after two refused get_or_create calls")
        else:
            expect(statuses, [201, 200], "statuses of two get_or_create calls")
            expect(len(found), 1, "Patients with the identifier")

    def check_conditional_create(self):
        # R4's conditional create (If-None-Exist), sent through fhirpy's save().
        criteria = f"identifier={IDENTIFIER_SYSTEM}|900-10-0004"
        conditional = client(os.environ["FHIRPY_FRONT_DESK_TOKEN"], **{"If-None-Exist": criteria})
        ids = []
        for expected_status in (201, 200):
            patient = conditional.resource(
                "Patient", identifier=[{"system": IDENTIFIER_SYSTEM, "value": "900-10-0004"}], name=[{"family": "Aalto"}]
            )
            patient.save()
            sent = last("POST")
            expect(sent["if_none_exist"], criteria, "If-None-Exist sent")
            expect(sent["status"], expected_status, "conditional create status")
            ids.append(patient.id)
        expect(ids[1], ids[0], "id of the second create")
        found = self.front_desk.resources("Patient").search(identifier=f"{IDENTIFIER_SYSTEM}|900-10-0004").fetch_all()
        expect([p.id for p in found], [ids[0]], "Patients with the identifier")

    # --- search ---------------------------------------------------------------------------

    def make_family(self):
        if getattr(self, "family_ids", None):
            return self.family_ids
        ids = []
        for given in ["Ann", "Bo", "Cai", "Dag", "Eva"]:
            patient = self.front_desk.resource("Patient", name=[{"family": "Nakamura-Holt", "given": [given]}])
            patient.save()
            ids.append(patient.id)
            time.sleep(0.01)  # distinct meta.lastUpdated, so the sort order is exact
        self.front_desk.resource("Patient", name=[{"family": "Holt", "given": ["Zed"]}]).save()
        self.family_ids = ids
        return ids

    def check_search_family(self):
        ids = self.make_family()
        found = self.front_desk.resources("Patient").search(family="nakamura-holt").fetch()
        expect(sorted(p.id for p in found), sorted(ids), "ids found by family (case-insensitive)")
        expect(self.front_desk.resources("Patient").search(family="nakamura").fetch(), [], "partial family")

    def check_count(self):
        ids = self.make_family()
        expect(self.front_desk.resources("Patient").search(family="nakamura-holt").count(), len(ids), "count()")

    def check_count_lenient(self):
        ids = self.make_family()
        lenient = client(os.environ["FHIRPY_FRONT_DESK_TOKEN"], Prefer="handling=lenient")
        expect(lenient.resources("Patient").search(family="nakamura-holt").count(), len(ids), "count()")
        expect(last("GET")["status"], 200, "status")

    def check_summary_count(self):
        ids = self.make_family()
        bundle = self.front_desk.resources("Patient").search(family="nakamura-holt", _summary="count").fetch_raw()
        expect(bundle.total, len(ids), "total")
        expect(bundle.get("entry"), None, "entries")

    def check_sort_last_updated(self):
        ids = self.make_family()
        found = self.front_desk.resources("Patient").search(family="nakamura-holt").sort("-_lastUpdated").fetch()
        expect([p.id for p in found], ids[::-1], "ids, newest first")

    def check_elements(self):
        ids = self.make_family()
        found = self.front_desk.resources("Patient").search(family="nakamura-holt").elements("name").fetch()
        expect(sorted(p.id for p in found), sorted(ids), "ids")
        for patient in found:
            expect(sorted(patient.keys()), ["id", "meta", "name", "resourceType"], "elements returned")
            if SUBSETTED not in tags(patient):
                raise AssertionError(f"meta.tag lacks SUBSETTED: {patient.meta}")

    def check_paging(self):
        ids = self.make_family()
        search = self.front_desk.resources("Patient").search(family="nakamura-holt").sort("-_lastUpdated").limit(2)
        before = len(exchanges)
        found = search.fetch_all()
        pages = [e for e in exchanges[before:] if e["method"] == "GET"]
        expect([p.id for p in found], ids[::-1], "ids over all pages, newest first")
        expect(len(pages), 3, "pages fetched (5 records, 2 a page)")
        expect([e["status"] for e in pages], [200, 200, 200], "page statuses")
        if not all(e["url"].startswith(BASE + "/Patient?") for e in pages):
            raise AssertionError(f"a next link left the base URL: {[e['url'] for e in pages]}")

    # --- clinical records -----------------------------------------------------------------

    def check_observation_search(self):
        other = self.front_desk.resource(
            "Patient", name=[{"family": "Other"}], generalPractitioner=[self.practitioner.to_reference()]
        )
        other.save()
        subject = f"Patient/{self.patient.id}"
        made = {}
        for key, (ref, code, category, when) in {
            "pulse-2025": (subject, "8867-4", "vital-signs", "2025-06-01T10:00:00Z"),
            "pulse-2024": (subject, "8867-4", "vital-signs", "2024-12-31T23:00:00Z"),
            "glucose-2025": (subject, "2339-0", "laboratory", "2025-07-01T08:00:00Z"),
            "other-2025": (f"Patient/{other.id}", "8867-4", "vital-signs", "2025-06-02T10:00:00Z"),
        }.items():
            obs = self.clinician.resource("Observation", **observation(ref, code, category, when, 72))
            obs.save()
            expect(last("POST")["status"], 201, f"create {key}")
            made[key] = obs.id
        read = self.clinician.reference("Observation", made["pulse-2025"]).to_resource()
        expect(read.subject.reference, subject, "subject read back")
        found = (
            self.clinician.resources("Observation")
            .search(patient=self.patient.id, category="vital-signs", date__ge="2025")
            .fetch_all()
        )
        expect(last("GET")["url"].split("?", 1)[1], f"patient={self.patient.id}&category=vital-signs&date=ge2025", "query sent")
        expect([o.id for o in found], [made["pulse-2025"]], "Observations found")

    # --- transaction ----------------------------------------------------------------------

    def transaction(self):
        if getattr(self, "tx", None):
            return self.tx
        patient_urn = "urn:uuid:6d1f0a52-3c1e-4e7b-9a55-0b7d3f6f2a01"
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": "urn:uuid:6d1f0a52-3c1e-4e7b-9a55-0b7d3f6f2a02",
                    "resource": observation(patient_urn, "8310-5", "vital-signs", "2025-08-01T09:30:00Z", 37.2),
                    "request": {"method": "POST", "url": "Observation"},
                },
                {
                    "fullUrl": patient_urn,
                    "resource": {
                        "resourceType": "Patient",
                        "name": [{"family": "Transact", "given": ["Tove"]}],
                        "generalPractitioner": [{"reference": f"Practitioner/{self.practitioner.id}"}],
                    },
                    "request": {"method": "POST", "url": "Patient"},
                },
            ],
        }
        # fhirpy 2.x has no transaction helper: its generic execute() posts to the base.
        self.tx = self.clinician.execute("/", method="post", data=bundle)
        return self.tx

    def check_transaction(self):
        response = self.transaction()
        expect(last("POST")["status"], 200, "transaction status")
        expect(response.type, "transaction-response", "Bundle.type")
        expect([e.response.status for e in response.entry], ["201 Created", "201 Created"], "entry statuses")
        obs_type, obs_id = response.entry[0].response.location.split("/")[:2]
        patient_type, patient_id = response.entry[1].response.location.split("/")[:2]
        expect((obs_type, patient_type), ("Observation", "Patient"), "types, in the Bundle's order")
        patient = self.clinician.reference("Patient", patient_id).to_resource()
        obs = self.clinician.reference("Observation", obs_id).to_resource()
        expect(patient.name[0].family, "Transact", "Patient read back")
        expect(obs.subject.reference, f"Patient/{patient_id}", "Observation.subject (urn:uuid: resolved)")
        found = self.clinician.resources("Observation").search(patient=patient_id).fetch_all()
        expect([o.id for o in found], [obs_id], "the patient's Observations")

    def check_transaction_fullurl_absolute(self):
        response = self.transaction()
        for entry in response.entry:
            rtype, rid = entry.response.location.split("/")[:2]
            expect(entry.get("fullUrl"), f"{BASE}/{rtype}/{rid}", "entry.fullUrl")

    # --- PATCH ----------------------------------------------------------------------------

    def check_patch_fhirpy_refused(self):
        # fhirpy's patch() sends the changed elements as a partial resource with
        # Content-Type: application/json (merge-patch style); R4 PATCH bodies are JSON Patch,
        # XML Patch or FHIRPath Patch, and CareVault takes JSON Patch only.
        target = self.front_desk.reference("Patient", self.patient.id).to_resource()
        version = target.meta.versionId
        try:
            target.patch(active=False)
        except OperationOutcome as refused:
            sent = last("PATCH")
            expect(sent["content_type"], "application/json", "Content-Type fhirpy sent")
            expect(sent["status"], 415, "status")
            expect(refused.resource["issue"][0]["code"], "not-supported", "issue code")
        else:
            raise AssertionError("a merge-style PATCH body was applied")
        after = self.front_desk.reference("Patient", self.patient.id).to_resource()
        expect(after.meta.versionId, version, "versionId after the refused PATCH")
        expect(after.get("active"), None, "active after the refused PATCH")

    def check_patch_415_names_json_patch(self):
        try:
            self.front_desk.patch("Patient", self.patient.id, active=False)
        except OperationOutcome as refused:
            expect(last("PATCH")["status"], 415, "status")
            diagnostics = refused.resource["issue"][0].get("diagnostics", "")
            if "application/json-patch+json" not in diagnostics:
                raise AssertionError(f"415 diagnostics do not name application/json-patch+json: {diagnostics!r}") from None
        else:
            raise AssertionError("a merge-style PATCH body was applied")

    def check_patch_json_patch(self):
        # The same client library sending RFC 6902 JSON Patch with its media type.
        patcher = client(os.environ["FHIRPY_FRONT_DESK_TOKEN"], **{"Content-Type": "application/json-patch+json"})
        before = self.front_desk.reference("Patient", self.patient.id).to_resource()
        operations = [
            {"op": "test", "path": "/name/0/family", "value": "Lindqvist"},
            {"op": "add", "path": "/active", "value": True},
            {"op": "replace", "path": "/name/0/given/0", "value": "Sarah"},
        ]
        patched = patcher.execute(f"Patient/{self.patient.id}", method="patch", data=operations)
        expect(last("PATCH")["content_type"], "application/json-patch+json", "Content-Type sent")
        expect(last("PATCH")["status"], 200, "status")
        expect(patched.meta.versionId, str(int(before.meta.versionId) + 1), "versionId")
        after = self.front_desk.reference("Patient", self.patient.id).to_resource()
        expect((after.active, after.name[0].given), (True, ["Sarah"]), "patched elements read back")
        expect(after.identifier, before.identifier, "untouched identifier")

    # ---------------------------------------------------------------------------------------

    def run(self, name, fn):
        known = KNOWN_FAILURES.get(name)
        before = len(exchanges)
        try:
            fn()
        except Exception as failure:  # noqa: BLE001 - every failure is reported the same way
            if isinstance(failure, OperationOutcome):
                why = json.dumps(failure.resource, separators=(",", ":"))
            else:
                why = " ".join(str(failure).split())
            why = f"{type(failure).__name__}: {why[:600]}"
            exchange = ""
            if len(exchanges) > before:
                e = exchanges[-1]
                exchange = f"    last exchange: {e['method']} {e['url']} -> {e['status']} {e['body']}"
            if known:
                self.known += 1
                print(f"known-failure {name}: {known}")
                print(f"    now: {why}")
                if exchange:
                    print(exchange)
                return
            self.failed += 1
            print(f"FAIL {name}: {why}")
            if exchange:
                print(exchange)
            if not isinstance(failure, (AssertionError, BaseFHIRError)):
                traceback.print_exc(limit=3, file=sys.stdout)
            return
        if known:
            self.failed += 1
            print(f"FAIL {name}: passes now; remove it from KNOWN_FAILURES (it was: {known})")
            return
        self.passed += 1
        print(f"ok {name}")


def main():
    if not fhirpy.__version__.startswith("2."):
        print(f"fhirpy 2.x expected, found {fhirpy.__version__}")
        return 1
    print(f"fhirpy {fhirpy.__version__} against {BASE}")
    run = Run()
    checks = [
        ("practitioner-create-read", run.check_practitioner_create_read),
        ("patient-create-read", run.check_patient_create_read),
        ("update-version-2", run.check_update_version_2),
        ("history", run.check_history),
        ("delete-then-410", run.check_delete_then_gone),
        ("get_or_create", run.check_get_or_create),
        ("get_or_create-never-duplicates", run.check_get_or_create_never_duplicates),
        ("conditional-create", run.check_conditional_create),
        ("search-family", run.check_search_family),
        ("count", run.check_count),
        ("count-lenient", run.check_count_lenient),
        ("summary-count", run.check_summary_count),
        ("sort-lastUpdated", run.check_sort_last_updated),
        ("elements-subsetted", run.check_elements),
        ("paging-fetch_all", run.check_paging),
        ("observation-search", run.check_observation_search),
        ("transaction", run.check_transaction),
        ("transaction-fullurl-absolute", run.check_transaction_fullurl_absolute),
        ("patch-fhirpy-merge-refused", run.check_patch_fhirpy_refused),
        ("patch-415-names-json-patch", run.check_patch_415_names_json_patch),
        ("patch-json-patch", run.check_patch_json_patch),
    ]
    unknown = set(KNOWN_FAILURES) - {name for name, _ in checks}
    if unknown:
        print(f"KNOWN_FAILURES names no check: {sorted(unknown)}")
        return 1
    for name, fn in checks:
        run.run(name, fn)
    if run.known:
        print(f"fhirpy: {run.known} known failures (listed above; each needs a decision or a server fix)")
    print(f"fhirpy: {run.passed} passed, {run.failed} failed")
    return 1 if run.failed else 0


if __name__ == "__main__":
    sys.exit(main())
