"""Renders or lints a Helm chart with Helm's own engine (helm-python-sdk, which binds the
Helm v4 Go SDK), for tests/helm_chart.rs. Prints JSON on stdout.

    render.py version
    render.py render CHART RELEASE NAMESPACE VALUES_JSON   -> {"manifests": {path: yaml}}
    render.py lint CHART VALUES_JSON                       -> helm lint's report
A rendering error exits 1 with Helm's message on stderr.
"""

import json
import sys

import helm_python as helm


def main(argv):
    command = argv[1] if len(argv) > 1 else ""
    if command == "version":
        print(json.dumps({"helm_sdk": helm.helm_sdk_version(), "helm_c": helm.helm_c_version()}))
    elif command == "render" and len(argv) == 6:
        _, _, chart, release, namespace, values = argv
        with helm.Chart.load(chart) as loaded:
            manifests = loaded.render(json.loads(values), name=release, namespace=namespace, is_install=True)
        print(json.dumps({"manifests": manifests}))
    elif command == "lint" and len(argv) == 4:
        _, _, chart, values = argv
        print(json.dumps(helm.lint(chart, json.loads(values), strict=True, kube_version="v1.33.0")))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except helm.HelmError as e:
        print(f"helm: {e}", file=sys.stderr)
        sys.exit(1)
