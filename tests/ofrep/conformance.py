"""Evaluates flags through the real OpenFeature Python SDK and its OFREP provider.

Usage: conformance.py BASE_URL TOKEN FLAG KEYS_FILE

Prints one JSON line per key of KEYS_FILE ({"key", "value", "reason", "variant"}), then
{"missing_flag": error code} for a flag that does not exist, then {"wrong_token": error code}
for a request with a token the server does not know. tests/ofrep_python.rs checks them.
"""

import json
import sys

from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext


def client(base_url, token, domain):
    provider = OFREPProvider(base_url, headers_factory=lambda: {"Authorization": f"Bearer {token}"})
    api.set_provider_and_wait(provider, domain)
    return api.get_client(domain)


def main():
    base_url, token, flag, keys_file = sys.argv[1:5]
    flags = client(base_url, token, "flagstore")
    with open(keys_file, encoding="utf-8") as keys:
        for key in (line.rstrip("\n") for line in keys):
            details = flags.get_boolean_details(flag, False, EvaluationContext(targeting_key=key))
            if details.error_code is not None:
                sys.exit(f"{key}: {details.error_code} {details.error_message}")
            print(json.dumps({"key": key, "value": details.value, "reason": details.reason,
                              "variant": details.variant}))
    missing = flags.get_boolean_details("no_such_flag", False, EvaluationContext(targeting_key="k"))
    print(json.dumps({"missing_flag": str(missing.error_code.value), "value": missing.value}))
    wrong = client(base_url, token + "x", "wrong").get_boolean_details(
        flag, True, EvaluationContext(targeting_key="k"))
    print(json.dumps({"wrong_token": str(wrong.error_code.value) if wrong.error_code else None,
                      "value": wrong.value}))


main()
