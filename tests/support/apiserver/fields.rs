//! Field ownership for server-side apply: field sets in the `FieldsV1` format and the
//! `metadata.managedFields` entries built from them.
//!
//! A path is a list of fieldsV1 segments: `f:<field>`, `k:<json of key fields>` (item of a list
//! of type map), `v:<json value>` (item of a list of type set). A set contains leaf fields and,
//! for maps and list items, the container itself (`"."` in fieldsV1).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use super::resources::{ListType, ResourceType};

pub type Path = Vec<String>;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSet(pub BTreeSet<Path>);

/// Metadata fields the real server never tracks (its `stripfields` list, plus the fields only
/// the server sets).
const STRIPPED_METADATA: &[&str] = &[
    "name",
    "namespace",
    "creationTimestamp",
    "selfLink",
    "uid",
    "generation",
    "managedFields",
    "resourceVersion",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

impl FieldSet {
    /// The fields set in `object` (nulls count as unset).
    pub fn of(rt: &ResourceType, object: &Value) -> Self {
        let mut out = BTreeSet::new();
        collect(rt, object, &mut Vec::new(), &mut Vec::new(), &mut out);
        Self(out)
    }

    /// Only `.status` (for the status subresource) or everything but `.status`.
    pub fn restrict(self, status: bool) -> Self {
        let is_status = |p: &Path| p.first().is_some_and(|s| s == "f:status");
        Self(self.0.into_iter().filter(|p| is_status(p) == status).collect())
    }

    pub fn contains(&self, path: &Path) -> bool {
        self.0.contains(path)
    }

    /// Whether `path` or anything below it is in the set.
    pub fn covers(&self, path: &Path) -> bool {
        self.0.range(path.clone()..).next().is_some_and(|p| p.starts_with(path))
    }

    /// Paths with nothing below them in the set.
    pub fn leaves(&self) -> Vec<&Path> {
        let all: Vec<&Path> = self.0.iter().collect();
        all.iter()
            .enumerate()
            .filter(|(i, p)| all.get(i + 1).is_none_or(|next| !next.starts_with(p)))
            .map(|(_, p)| *p)
            .collect()
    }

    pub fn difference(&self, other: &Self) -> Self {
        Self(self.0.difference(&other.0).cloned().collect())
    }

    pub fn union(&self, other: &Self) -> Self {
        Self(self.0.union(&other.0).cloned().collect())
    }

    pub fn to_fields_v1(&self) -> Value {
        #[derive(Default)]
        struct Node {
            member: bool,
            children: BTreeMap<String, Node>,
        }
        fn render(node: &Node) -> Value {
            let mut map = Map::new();
            if node.member && !node.children.is_empty() {
                map.insert(".".into(), json!({}));
            }
            for (k, child) in &node.children {
                map.insert(k.clone(), render(child));
            }
            Value::Object(map)
        }
        let mut root = Node::default();
        for path in &self.0 {
            let mut node = &mut root;
            for seg in path {
                node = node.children.entry(seg.clone()).or_default();
            }
            node.member = true;
        }
        render(&root)
    }

    pub fn from_fields_v1(value: &Value) -> Self {
        fn walk(v: &Value, path: &mut Path, out: &mut BTreeSet<Path>) {
            let Some(map) = v.as_object() else { return };
            for (k, child) in map {
                if k == "." {
                    out.insert(path.clone());
                    continue;
                }
                path.push(k.clone());
                if child.as_object().is_none_or(Map::is_empty) {
                    out.insert(path.clone());
                } else {
                    walk(child, path, out);
                }
                path.pop();
            }
        }
        let mut out = BTreeSet::new();
        walk(value, &mut Vec::new(), &mut out);
        Self(out)
    }
}

fn dotted(names: &[String]) -> String {
    names.join(".")
}

fn is_atomic_map(rt: &ResourceType, names: &[String]) -> bool {
    rt.atomic_maps.contains(&dotted(names))
}

/// `k:{"uid":"..."}` for a keyed list item.
pub fn key_segment(item: &Value, keys: &[String]) -> Option<String> {
    let mut key = Map::new();
    for k in keys {
        key.insert(k.clone(), item.get(k)?.clone());
    }
    Some(format!("k:{}", Value::Object(key)))
}

fn collect(rt: &ResourceType, v: &Value, names: &mut Vec<String>, path: &mut Path, out: &mut BTreeSet<Path>) {
    match v {
        Value::Null => {}
        Value::Object(map) if !is_atomic_map(rt, names) => {
            let is_metadata = names.len() == 1 && names[0] == "metadata";
            if !path.is_empty() && !is_metadata {
                out.insert(path.clone());
            }
            for (k, child) in map {
                if child.is_null()
                    || (names.is_empty() && (k == "apiVersion" || k == "kind"))
                    || (is_metadata && STRIPPED_METADATA.contains(&k.as_str()))
                {
                    continue;
                }
                names.push(k.clone());
                path.push(format!("f:{k}"));
                collect(rt, child, names, path, out);
                path.pop();
                names.pop();
            }
        }
        Value::Array(items) => {
            out.insert(path.clone());
            match rt.list_type(&dotted(names)) {
                ListType::Map(keys) => {
                    for item in items {
                        if let Some(seg) = key_segment(item, &keys) {
                            path.push(seg);
                            collect(rt, item, names, path, out);
                            path.pop();
                        }
                    }
                }
                ListType::Set => {
                    for item in items {
                        path.push(format!("v:{item}"));
                        out.insert(path.clone());
                        path.pop();
                    }
                }
                ListType::Atomic => {}
            }
        }
        _ => {
            out.insert(path.clone());
        }
    }
}

fn find_item(items: &[Value], seg: &str) -> Option<usize> {
    if let Some(key) = seg.strip_prefix("k:") {
        let key: Map<String, Value> = serde_json::from_str(key).ok()?;
        items.iter().position(|item| key.iter().all(|(k, v)| item.get(k) == Some(v)))
    } else if let Some(value) = seg.strip_prefix("v:") {
        let value: Value = serde_json::from_str(value).ok()?;
        items.iter().position(|item| *item == value)
    } else {
        None
    }
}

pub fn get_path<'a>(mut v: &'a Value, path: &[String]) -> Option<&'a Value> {
    for seg in path {
        v = if let Some(field) = seg.strip_prefix("f:") {
            v.get(field)?
        } else {
            let items = v.as_array()?;
            &items[find_item(items, seg)?]
        };
    }
    Some(v)
}

/// Removes the field or list item at `path`; returns whether something was removed.
pub fn remove_path(v: &mut Value, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else { return false };
    let mut node = v;
    for seg in parents {
        node = if let Some(field) = seg.strip_prefix("f:") {
            match node.get_mut(field) {
                Some(n) => n,
                None => return false,
            }
        } else {
            let Some(items) = node.as_array_mut() else { return false };
            let Some(i) = find_item(items, seg) else { return false };
            &mut items[i]
        };
    }
    if let Some(field) = last.strip_prefix("f:") {
        node.as_object_mut().is_some_and(|m| m.remove(field).is_some())
    } else {
        let Some(items) = node.as_array_mut() else { return false };
        match find_item(items, last) {
            Some(i) => {
                items.remove(i);
                true
            }
            None => false,
        }
    }
}

/// Human-readable field path for conflict messages, e.g. `.data.token` or
/// `.metadata.ownerReferences[uid="..."]`.
pub fn display_path(path: &[String]) -> String {
    let mut out = String::new();
    for seg in path {
        if let Some(field) = seg.strip_prefix("f:") {
            out.push('.');
            out.push_str(field);
        } else if let Some(key) = seg.strip_prefix("k:") {
            let key: Map<String, Value> = serde_json::from_str(key).unwrap_or_default();
            let inner: Vec<String> = key.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!("[{}]", inner.join(",")));
        } else if let Some(value) = seg.strip_prefix("v:") {
            out.push_str(&format!("[={value}]"));
        }
    }
    out
}

/// Merges an applied configuration into an object the way server-side apply does: maps merge
/// field by field, lists of type map merge by key, sets union, everything else is replaced.
pub fn apply_merge(rt: &ResourceType, target: &mut Value, config: &Value) {
    merge_at(rt, &mut Vec::new(), target, config);
}

fn merge_at(rt: &ResourceType, names: &mut Vec<String>, target: &mut Value, config: &Value) {
    match (target, config) {
        (Value::Object(t), Value::Object(c)) if !is_atomic_map(rt, names) => {
            for (k, cv) in c {
                if cv.is_null() {
                    continue;
                }
                names.push(k.clone());
                match t.get_mut(k) {
                    Some(tv) => merge_at(rt, names, tv, cv),
                    None => {
                        t.insert(k.clone(), cv.clone());
                    }
                }
                names.pop();
            }
        }
        (Value::Array(t), Value::Array(c)) => match rt.list_type(&dotted(names)) {
            ListType::Map(keys) => {
                for item in c {
                    let existing = key_segment(item, &keys).and_then(|seg| find_item(t, &seg));
                    match existing {
                        Some(i) => merge_at(rt, names, &mut t[i], item),
                        None => t.push(item.clone()),
                    }
                }
            }
            ListType::Set => {
                for item in c {
                    if !t.contains(item) {
                        t.push(item.clone());
                    }
                }
            }
            ListType::Atomic => *t = c.clone(),
        },
        (target, config) => *target = config.clone(),
    }
}

/// One `metadata.managedFields` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct ManagedEntry {
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    pub api_version: String,
    pub time: Option<String>,
    pub subresource: Option<String>,
    pub fields: FieldSet,
}

impl ManagedEntry {
    pub fn same_owner(&self, manager: &str, operation: &str, subresource: Option<&str>) -> bool {
        self.manager == manager && self.operation == operation && self.subresource.as_deref() == subresource
    }

    pub fn parse_all(object: &Value) -> Vec<Self> {
        let Some(entries) = object.pointer("/metadata/managedFields").and_then(Value::as_array) else {
            return Vec::new();
        };
        entries
            .iter()
            .filter_map(|e| {
                Some(Self {
                    manager: e.get("manager").and_then(Value::as_str).unwrap_or_default().to_string(),
                    operation: e.get("operation")?.as_str()?.to_string(),
                    api_version: e.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_string(),
                    time: e.get("time").and_then(Value::as_str).map(String::from),
                    subresource: e.get("subresource").and_then(Value::as_str).map(String::from),
                    fields: e.get("fieldsV1").map(FieldSet::from_fields_v1).unwrap_or_default(),
                })
            })
            .collect()
    }

    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "fieldsType": "FieldsV1",
            "fieldsV1": self.fields.to_fields_v1(),
        });
        if let Some(time) = &self.time {
            v["time"] = json!(time);
        }
        if let Some(sub) = &self.subresource {
            v["subresource"] = json!(sub);
        }
        v
    }
}

pub fn write_entries(object: &mut Value, entries: &[ManagedEntry]) {
    let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) else { return };
    if entries.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".into(), Value::Array(entries.iter().map(ManagedEntry::to_json).collect()));
    }
}

/// Ownership after a non-apply write (create, update, patch) by `manager`: changed and added
/// fields move to the writer's `Update` entry, removed fields leave every entry.
#[allow(clippy::too_many_arguments)]
pub fn record_update(
    rt: &ResourceType,
    entries: &mut Vec<ManagedEntry>,
    old: Option<&Value>,
    new: &Value,
    manager: &str,
    api_version: &str,
    subresource: Option<&str>,
    now: &str,
) {
    let new_set = FieldSet::of(rt, new);
    let old_set = old.map(|o| FieldSet::of(rt, o)).unwrap_or_default();
    let leaves: BTreeSet<&Path> = new_set.leaves().into_iter().collect();
    let changed = FieldSet(
        new_set
            .0
            .iter()
            .filter(|p| {
                !old_set.contains(p) || (leaves.contains(p) && old.and_then(|o| get_path(o, p)) != get_path(new, p))
            })
            .cloned()
            .collect(),
    );
    let removed = old_set.difference(&new_set);
    for entry in entries.iter_mut() {
        entry.fields = entry.fields.difference(&removed).difference(&changed);
    }
    if !changed.0.is_empty() {
        match entries.iter_mut().find(|e| e.same_owner(manager, "Update", subresource)) {
            Some(entry) => {
                entry.fields = entry.fields.union(&changed);
                entry.time = Some(now.to_string());
                entry.api_version = api_version.to_string();
            }
            None => entries.push(ManagedEntry {
                manager: manager.to_string(),
                operation: "Update".into(),
                api_version: api_version.to_string(),
                time: Some(now.to_string()),
                subresource: subresource.map(String::from),
                fields: changed,
            }),
        }
    }
    entries.retain(|e| !e.fields.0.is_empty());
}
