#!/usr/bin/env python3
"""Extracts the part of a KEDA CustomResourceDefinition that .ci/check_keda.py validates
against: the `openAPIV3Schema` of one version, without `description` texts and without
`status` (written by the operator, never by us), as JSON with a `$comment` naming its source.

Used once per KEDA version bump (.ci/keda/README.md says which release the files come from):

    git -C KEDA show v2.20.2:config/crd/bases/keda.sh_scaledobjects.yaml \\
      | python3 .ci/keda/extract_crd_schema.py v1alpha1 "kedacore/keda v2.20.2 (COMMIT) PATH" \\
      > .ci/keda/scaledobject.v1alpha1.schema.json

Needs PyYAML.
"""

from __future__ import annotations

import json
import sys

import yaml


def strip(node: object) -> object:
    """The schema without `description` keys (documentation only, most of the CRD's bytes)."""
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    version, source = sys.argv[1], sys.argv[2]
    crd = yaml.safe_load(sys.stdin)
    (schema,) = [
        v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"] if v["name"] == version
    ]
    schema = strip(schema)
    schema["properties"].pop("status", None)
    out = {
        "$comment": (
            f"openAPIV3Schema of {crd['spec']['names']['kind']} {crd['spec']['group']}/{version}, "
            f"from {source}; descriptions and status removed "
            "(.ci/keda/extract_crd_schema.py). Apache-2.0, The KEDA Authors."
        ),
        **schema,
    }
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
