#!/usr/bin/env python3
"""Drives a running `kdit sandbox` with Klaviyo's official Python SDK (PyPI `klaviyo-api`).

The SDK deserializes every response into its generated pydantic models, so this is a second,
independent check that the sandbox speaks Klaviyo's shapes.

Usage:
    kdit sandbox --port 4599 --rate-limits off --api-key pk_sdk_check &
    python3 tests/python/sdk_check.py http://127.0.0.1:4599 pk_sdk_check

Exits 0 when every check passes, 1 (with the failing step) otherwise, 2 when the SDK is missing.
"""

import sys
import time
import traceback
from urllib.parse import parse_qs, urlparse

try:
    from klaviyo_api import KlaviyoAPI
except ImportError:
    print("klaviyo-api is not installed: pip install klaviyo-api", file=sys.stderr)
    sys.exit(2)


def d(resp):
    """SDK responses are pydantic models (or dicts with options); read them as dicts."""
    return resp if isinstance(resp, dict) else resp.to_dict()


def cursor(links):
    nxt = (links or {}).get("next")
    if not nxt:
        return None
    return parse_qs(urlparse(nxt).query).get("page[cursor]", [None])[0]


def main(base_url, api_key):
    # Retries matter when the sandbox runs with --faults; the SDK retries 429 and 503.
    k = KlaviyoAPI(api_key, max_delay=2, max_retries=5, test_host=base_url)
    steps = []

    def step(name):
        steps.append(name)
        print(f"  - {name}")

    step("accounts")
    acc = d(k.Accounts.get_accounts())
    assert acc["data"][0]["type"] == "account", acc

    step("profile-import create (201) and update (200)")
    body = {"data": {"type": "profile", "attributes": {
        "email": "sdk1@example.com", "first_name": "Sdk", "properties": {"tier": "gold"}}}}
    p1 = d(k.Profiles.create_or_update_profile(body))
    pid = p1["data"]["id"]
    body["data"]["attributes"]["last_name"] = "Check"
    p1b = d(k.Profiles.create_or_update_profile(body))
    assert p1b["data"]["id"] == pid
    for i in range(2, 6):
        k.Profiles.create_or_update_profile({"data": {"type": "profile", "attributes": {
            "email": f"sdk{i}@example.com", "external_id": f"sdk-{i}"}}})

    step("get profiles with a filter")
    got = d(k.Profiles.get_profiles(filter='equals(email,"sdk1@example.com")'))
    assert [p["id"] for p in got["data"]] == [pid], got

    step("get profiles, paging 2 at a time")
    seen, cur, pages = [], None, 0
    while True:
        page = d(k.Profiles.get_profiles(page_size=2, page_cursor=cur))
        pages += 1
        seen += [p["id"] for p in page["data"]]
        cur = cursor(page.get("links"))
        if not cur:
            break
    assert len(seen) == 5 and pages == 3, (seen, pages)

    step("lists: create, get, add, list profiles, remove")
    lst = d(k.Lists.create_list({"data": {"type": "list", "attributes": {"name": "SDK list"}}}))
    lid = lst["data"]["id"]
    assert d(k.Lists.get_list(lid))["data"]["attributes"]["name"] == "SDK list"
    k.Lists.add_profiles_to_list(lid, {"data": [{"type": "profile", "id": pid}]})
    members = d(k.Lists.get_profiles_for_list(lid))
    assert [m["id"] for m in members["data"]] == [pid], members
    k.Lists.remove_profiles_from_list(lid, {"data": [{"type": "profile", "id": pid}]})
    assert d(k.Lists.get_profiles_for_list(lid))["data"] == []

    step("bulk import: create, poll, import errors, profiles")
    job = d(k.Profiles.bulk_import_profiles({"data": {
        "type": "profile-bulk-import-job",
        "attributes": {"profiles": {"data": [
            {"type": "profile", "attributes": {"email": "bulk1@example.com"}},
            {"type": "profile", "attributes": {"email": "not-an-email"}},
        ]}},
        "relationships": {"lists": {"data": [{"type": "list", "id": lid}]}},
    }}))
    jid = job["data"]["id"]
    for _ in range(200):
        j = d(k.Profiles.get_bulk_import_profiles_job(jid))
        if j["data"]["attributes"]["status"] == "complete":
            break
        time.sleep(0.02)
    a = j["data"]["attributes"]
    assert (a["status"], a["completed_count"], a["failed_count"]) == ("complete", 1, 1), a
    errs = d(k.Profiles.get_errors_for_bulk_import_profiles_job(jid))
    assert len(errs["data"]) == 1, errs
    assert errs["data"][0]["attributes"]["original_payload"]["attributes"]["email"] == "not-an-email"
    imported = d(k.Profiles.get_profiles_for_bulk_import_profiles_job(jid))
    assert len(imported["data"]) == 1, imported

    step("segments: create, get, profiles")
    seg = d(k.Segments.create_segment({"data": {"type": "segment", "attributes": {
        "name": "Gold tier",
        "definition": {"condition_groups": [{"conditions": [{
            "type": "profile-property", "property": "properties['tier']",
            "filter": {"type": "string", "operator": "equals", "value": "gold"}}]}]}}}}))
    sid = seg["data"]["id"]
    assert d(k.Segments.get_segment(sid))["data"]["attributes"]["name"] == "Gold tier"
    segp = d(k.Segments.get_profiles_for_segment(sid))
    assert [p["id"] for p in segp["data"]] == [pid], segp

    step("tags: create, tag list and segment, read back")
    tag = d(k.Tags.create_tag({"data": {"type": "tag", "attributes": {"name": "kdit"}}}))
    tid = tag["data"]["id"]
    k.Tags.tag_lists(tid, {"data": [{"type": "list", "id": lid}]})
    k.Tags.tag_segments(tid, {"data": [{"type": "segment", "id": sid}]})
    ids = d(k.Tags.get_list_ids_for_tag(tid))
    assert [x["id"] for x in ids["data"]] == [lid], ids
    ids = d(k.Tags.get_segment_ids_for_tag(tid))
    assert [x["id"] for x in ids["data"]] == [sid], ids

    print(f"ok: {len(steps)} checks passed against {base_url}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(64)
    try:
        main(sys.argv[1], sys.argv[2])
    except Exception:  # report the step that failed, with the SDK's own error
        traceback.print_exc()
        sys.exit(1)
