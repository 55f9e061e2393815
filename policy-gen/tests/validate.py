#!/usr/bin/env python3
"""Validate JSON documents against a JSON Schema, for policy-gen's tests.

Usage: validate.py SCHEMA < DOCUMENTS   (DOCUMENTS: one JSON array of documents)

Exit status: 0 when every document is valid; 1 when some are not (one line per error on
stdout: document index, JSON pointer, message); 2 when the check cannot run (jsonschema
missing, the schema itself invalid, unreadable input). scripts/setup.sh installs
jsonschema (it comes with kubernetes-validate).
"""

import json
import sys


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        import jsonschema
    except ImportError as e:
        print(f"validate.py: cannot import jsonschema ({e}); run scripts/setup.sh", file=sys.stderr)
        return 2
    try:
        with open(sys.argv[1], encoding="utf-8") as f:
            schema = json.load(f)
        documents = json.load(sys.stdin)
        validator_class = jsonschema.validators.validator_for(schema)
        validator_class.check_schema(schema)
    except (OSError, ValueError, jsonschema.SchemaError) as e:
        print(f"validate.py: {e}", file=sys.stderr)
        return 2
    if not isinstance(documents, list):
        print("validate.py: the input must be a JSON array of documents", file=sys.stderr)
        return 2
    validator = validator_class(schema)
    invalid = False
    for index, document in enumerate(documents):
        for error in sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path)):
            pointer = "/" + "/".join(str(p) for p in error.absolute_path)
            print(f"document {index}: {pointer}: {error.message}")
            invalid = True
    return 1 if invalid else 0


if __name__ == "__main__":
    sys.exit(main())
