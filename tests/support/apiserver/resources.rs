//! The data-driven set of resources the double serves.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{CustomResourceDefinition, JSONSchemaProps};

/// How server-side apply treats a list (`x-kubernetes-list-type`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListType {
    /// Replaced as a whole; one owner (the default for CRD lists).
    Atomic,
    /// A set of scalars; each value owned separately (`v:` in fieldsV1).
    Set,
    /// A list of objects keyed by these fields; each item owned separately (`k:` in fieldsV1).
    Map(Vec<String>),
}

/// Kind-specific server behaviour that is not expressible as plain flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Special {
    None,
    /// core/v1 Secret: `stringData` folded into base64 `data`, key/value validation, `type` and
    /// `immutable` enforcement.
    Secret,
    /// core/v1 Namespace: phase, `kubernetes` finalizer, `kubernetes.io/metadata.name` label,
    /// termination deletes the contents.
    Namespace,
}

/// One served resource: group/version/plural/kind/scope plus the strategy flags the real API
/// server takes from the resource's registry strategy.
#[derive(Clone, Debug)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    /// `/status` subresource: main-resource writes keep the old status, status writes change
    /// only `.status`.
    pub status_subresource: bool,
    /// Custom resource semantics: `metadata.generation` (bumped when anything outside
    /// metadata/status changes), updates must carry a resourceVersion, strategic merge patch is
    /// rejected with 415, list items carry apiVersion/kind.
    pub custom: bool,
    /// Granular list types for server-side apply, keyed by dotted field path without list
    /// items, e.g. `spec.extraHeaders`. `metadata.ownerReferences` (map keyed by uid) and
    /// `metadata.finalizers` (set) are built in. Anything else is atomic.
    pub list_types: BTreeMap<String, ListType>,
    /// Objects treated atomically by server-side apply (`x-kubernetes-map-type: atomic`).
    pub atomic_maps: BTreeSet<String>,
    /// Field selectors accepted besides `metadata.name` and `metadata.namespace`.
    pub field_selectors: Vec<String>,
    pub special: Special,
}

impl ResourceType {
    /// A built-in resource (no generation, unconditional updates allowed, strategic merge).
    pub fn builtin(group: &str, version: &str, plural: &str, kind: &str, namespaced: bool) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            singular: kind.to_lowercase(),
            kind: kind.into(),
            namespaced,
            status_subresource: false,
            custom: false,
            list_types: BTreeMap::new(),
            atomic_maps: BTreeSet::new(),
            field_selectors: Vec::new(),
            special: Special::None,
        }
    }

    /// A custom resource with a status subresource (the common CRD shape).
    pub fn custom(group: &str, version: &str, plural: &str, kind: &str, namespaced: bool) -> Self {
        Self { custom: true, status_subresource: true, ..Self::builtin(group, version, plural, kind, namespaced) }
    }

    #[must_use]
    pub fn with_status(mut self, status: bool) -> Self {
        self.status_subresource = status;
        self
    }

    #[must_use]
    pub fn with_list_type(mut self, path: &str, list_type: ListType) -> Self {
        self.list_types.insert(path.into(), list_type);
        self
    }

    #[must_use]
    pub fn with_field_selectors(mut self, fields: &[&str]) -> Self {
        self.field_selectors.extend(fields.iter().map(|f| f.to_string()));
        self
    }

    /// One resource per served version of a CRD, with scope, status subresource and the
    /// list/map types declared in its schema.
    pub fn from_crd(crd: &CustomResourceDefinition) -> Vec<Self> {
        let spec = &crd.spec;
        let namespaced = spec.scope == "Namespaced";
        spec.versions
            .iter()
            .filter(|v| v.served)
            .map(|v| {
                let mut rt = Self::custom(&spec.group, &v.name, &spec.names.plural, &spec.names.kind, namespaced);
                rt.singular = spec.names.singular.clone().unwrap_or_else(|| spec.names.kind.to_lowercase());
                rt.status_subresource = v.subresources.as_ref().is_some_and(|s| s.status.is_some());
                if let Some(schema) = v.schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()) {
                    collect_schema_types(schema, "", &mut rt);
                }
                rt
            })
            .collect()
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }

    /// `plural` or `plural.group`, as in Status messages and RBAC.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() { self.plural.clone() } else { format!("{}.{}", self.plural, self.group) }
    }

    pub(crate) fn list_type(&self, dotted: &str) -> ListType {
        match dotted {
            "metadata.ownerReferences" => ListType::Map(vec!["uid".into()]),
            "metadata.finalizers" => ListType::Set,
            _ => self.list_types.get(dotted).cloned().unwrap_or(ListType::Atomic),
        }
    }

    pub(crate) fn supports_field(&self, field: &str) -> bool {
        field == "metadata.name"
            || (field == "metadata.namespace" && self.namespaced)
            || self.field_selectors.iter().any(|f| f == field)
    }
}

fn collect_schema_types(schema: &JSONSchemaProps, path: &str, rt: &mut ResourceType) {
    let join = |name: &str| if path.is_empty() { name.to_string() } else { format!("{path}.{name}") };
    if let Some(list_type) = schema.x_kubernetes_list_type.as_deref() {
        let lt = match list_type {
            "set" => ListType::Set,
            "map" => ListType::Map(schema.x_kubernetes_list_map_keys.clone().unwrap_or_default()),
            _ => ListType::Atomic,
        };
        rt.list_types.insert(path.to_string(), lt);
    }
    if schema.x_kubernetes_map_type.as_deref() == Some("atomic") {
        rt.atomic_maps.insert(path.to_string());
    }
    if let Some(props) = &schema.properties {
        for (name, child) in props {
            collect_schema_types(child, &join(name), rt);
        }
    }
    if let Some(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(
        items,
    )) = &schema.items
    {
        // List items share the list's path: fields of items are `list.field`.
        if let Some(props) = &items.properties {
            for (name, child) in props {
                collect_schema_types(child, &join(name), rt);
            }
        }
    }
}

/// The resources served by default: the ones tokensync uses, plus ConfigMaps.
pub fn builtin_resources() -> Vec<ResourceType> {
    let mut secrets = ResourceType::builtin("", "v1", "secrets", "Secret", true).with_field_selectors(&["type"]);
    secrets.special = Special::Secret;
    let mut namespaces = ResourceType::builtin("", "v1", "namespaces", "Namespace", false)
        .with_status(true)
        .with_field_selectors(&["status.phase"]);
    namespaces.special = Special::Namespace;
    vec![
        secrets,
        namespaces,
        ResourceType::builtin("", "v1", "configmaps", "ConfigMap", true),
        ResourceType::builtin("", "v1", "serviceaccounts", "ServiceAccount", true),
        ResourceType::builtin("", "v1", "events", "Event", true).with_field_selectors(&[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ]),
        ResourceType::builtin("events.k8s.io", "v1", "events", "Event", true).with_field_selectors(&[
            "regarding.kind",
            "regarding.namespace",
            "regarding.name",
            "regarding.uid",
            "regarding.apiVersion",
            "reason",
            "reportingController",
            "type",
        ]),
        ResourceType::builtin("coordination.k8s.io", "v1", "leases", "Lease", true),
    ]
}
