"""Structural schemas for the custom kinds under deploy/ (not in the core Kubernetes schemas).

Written from the CRDs of the Prometheus Operator (monitoring.coreos.com/v1 PodMonitor and PrometheusRule,
in deploy/prometheus) and of cert-manager (cert-manager.io/v1 Issuer and Certificate, in deploy/webhook):
the required fields, the types, enums and duration patterns of the fields these manifests use, and no
unknown field. Stricter than the CRDs themselves (which accept more fields), never looser on the fields used here.
"""

from __future__ import annotations

from typing import Any

DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
LABEL_NAME = {"type": "string", "pattern": r"^[a-zA-Z_][a-zA-Z0-9_]*$"}
DNS_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", "maxLength": 253}
METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": DNS_NAME, "namespace": {"type": "string"}, "labels": STRING_MAP, "annotations": STRING_MAP},
    "additionalProperties": False,
}
RELABEL = {
    "type": "object",
    "properties": {
        "action": {"enum": ["replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod", "HashMod", "labelmap",
                            "LabelMap", "labeldrop", "LabelDrop", "labelkeep", "LabelKeep", "lowercase", "Lowercase",
                            "uppercase", "Uppercase", "keepequal", "KeepEqual", "dropequal", "DropEqual"]},
        "modulus": {"type": "integer"}, "regex": {"type": "string"}, "replacement": {"type": "string"},
        "separator": {"type": "string"}, "sourceLabels": {"type": "array", "items": {"type": "string"}},
        "targetLabel": {"type": "string"},
    },
    "additionalProperties": False,
}
SELECTOR = {
    "type": "object",
    "properties": {
        "matchLabels": STRING_MAP,
        "matchExpressions": {"type": "array", "items": {
            "type": "object", "required": ["key", "operator"], "additionalProperties": False,
            "properties": {"key": {"type": "string"}, "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                           "values": {"type": "array", "items": {"type": "string"}}}}},
    },
    "additionalProperties": False,
}
POD_MONITOR: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": METADATA,
        "spec": {
            "type": "object",
            "required": ["selector"],
            "properties": {
                "selector": SELECTOR,
                "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                    "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}}},
                "jobLabel": {"type": "string"},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "sampleLimit": {"type": "integer"},
                "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object",
                    "properties": {
                        "port": {"type": "string"}, "portNumber": {"type": "integer", "minimum": 1, "maximum": 65535},
                        "path": {"type": "string"}, "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                        "interval": DURATION, "scrapeTimeout": DURATION, "honorLabels": {"type": "boolean"},
                        "relabelings": {"type": "array", "items": RELABEL},
                        "metricRelabelings": {"type": "array", "items": RELABEL},
                    },
                    "additionalProperties": False,
                }},
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}
RULE = {
    "type": "object",
    "required": ["expr"],
    "properties": {
        "alert": {"type": "string", "minLength": 1}, "record": {"type": "string", "pattern": r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"},
        "expr": {"type": ["string", "integer"]}, "for": DURATION, "keep_firing_for": DURATION,
        "labels": STRING_MAP, "annotations": STRING_MAP,
    },
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
    "additionalProperties": False,
}
PROMETHEUS_RULE: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": METADATA,
        "spec": {
            "type": "object",
            "required": ["groups"],
            "properties": {"groups": {"type": "array", "minItems": 1, "items": {
                "type": "object",
                "required": ["name", "rules"],
                "properties": {"name": {"type": "string", "minLength": 1}, "interval": DURATION, "limit": {"type": "integer"},
                               "labels": STRING_MAP, "rules": {"type": "array", "minItems": 1, "items": RULE}},
                "additionalProperties": False,
            }}},
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}
# cert-manager's durations are Go durations (time.ParseDuration): 2160h, 90m, 1h30m.
GO_DURATION = {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"}
NAMESPACED_METADATA = {**METADATA, "required": ["name", "namespace"]}
ISSUER: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "cert-manager.io/v1"},
        "kind": {"const": "Issuer"},
        "metadata": NAMESPACED_METADATA,
        "spec": {
            "type": "object",
            "properties": {
                "selfSigned": {"type": "object", "additionalProperties": False, "properties": {
                    "crlDistributionPoints": {"type": "array", "items": {"type": "string"}}}},
                "ca": {"type": "object", "required": ["secretName"], "additionalProperties": False, "properties": {
                    "secretName": {"type": "string", "minLength": 1},
                    "crlDistributionPoints": {"type": "array", "items": {"type": "string"}},
                    "ocspServers": {"type": "array", "items": {"type": "string"}}}},
            },
            "oneOf": [{"required": ["selfSigned"]}, {"required": ["ca"]}],
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}
USAGES = ["signing", "digital signature", "content commitment", "key encipherment", "key agreement",
          "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any", "server auth",
          "client auth", "code signing", "email protection", "s/mime", "ipsec end system", "ipsec tunnel", "ipsec user",
          "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc"]
CERTIFICATE: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "cert-manager.io/v1"},
        "kind": {"const": "Certificate"},
        "metadata": NAMESPACED_METADATA,
        "spec": {
            "type": "object",
            "required": ["secretName", "issuerRef"],
            "properties": {
                "secretName": {"type": "string", "minLength": 1},
                "commonName": {"type": "string"},
                "dnsNames": {"type": "array", "items": DNS_NAME},
                "ipAddresses": {"type": "array", "items": {"type": "string"}},
                "duration": GO_DURATION, "renewBefore": GO_DURATION,
                "isCA": {"type": "boolean"},
                "usages": {"type": "array", "items": {"enum": USAGES}},
                "privateKey": {"type": "object", "additionalProperties": False, "properties": {
                    "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]}, "size": {"type": "integer"},
                    "encoding": {"enum": ["PKCS1", "PKCS8"]}, "rotationPolicy": {"enum": ["Never", "Always"]}}},
                "issuerRef": {"type": "object", "required": ["name"], "additionalProperties": False, "properties": {
                    "name": {"type": "string", "minLength": 1}, "kind": {"type": "string"},
                    "group": {"type": "string"}}},
                "secretTemplate": {"type": "object", "additionalProperties": False, "properties": {
                    "annotations": STRING_MAP, "labels": STRING_MAP}},
                "revisionHistoryLimit": {"type": "integer", "minimum": 1},
            },
            "anyOf": [{"required": ["dnsNames"]}, {"required": ["ipAddresses"]}, {"required": ["commonName"]}],
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}
SCHEMAS = {("monitoring.coreos.com/v1", "PodMonitor"): POD_MONITOR,
           ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE,
           ("cert-manager.io/v1", "Issuer"): ISSUER,
           ("cert-manager.io/v1", "Certificate"): CERTIFICATE}
