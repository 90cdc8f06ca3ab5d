//! Kubernetes `Status` failures, shaped like the real API server's.

use serde_json::{Value, json};

use super::resources::ResourceType;

#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: String,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        Self { code, reason: reason.into(), message: message.into(), details: None }
    }

    /// The reason the real API server uses for a status code.
    pub fn reason_for(code: u16) -> &'static str {
        match code {
            400 => "BadRequest",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            405 => "MethodNotAllowed",
            406 => "NotAcceptable",
            409 => "Conflict",
            410 => "Expired",
            415 => "UnsupportedMediaType",
            422 => "Invalid",
            429 => "TooManyRequests",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            _ => "InternalError",
        }
    }

    pub fn from_code(code: u16, message: impl Into<String>) -> Self {
        Self::new(code, Self::reason_for(code), message)
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn not_found(rt: &ResourceType, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{} \"{name}\" not found", rt.group_resource()))
            .with_details(json!({"name": name, "group": rt.group, "kind": rt.plural}))
    }

    /// What the server answers for a path it does not serve.
    pub fn no_route() -> Self {
        Self::new(404, "NotFound", "the server could not find the requested resource")
            .with_details(json!({"causes": [{"reason": "UnexpectedServerResponse", "message": "404 page not found"}]}))
    }

    pub fn already_exists(rt: &ResourceType, name: &str) -> Self {
        Self::new(409, "AlreadyExists", format!("{} \"{name}\" already exists", rt.group_resource()))
            .with_details(json!({"name": name, "group": rt.group, "kind": rt.plural}))
    }

    pub fn conflict(rt: &ResourceType, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {} \"{name}\": {why}", rt.group_resource()),
        )
        .with_details(json!({"name": name, "group": rt.group, "kind": rt.plural}))
    }

    pub fn stale(rt: &ResourceType, name: &str) -> Self {
        Self::conflict(
            rt,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 422 with one cause per (field, message).
    pub fn invalid(rt: &ResourceType, name: &str, causes: &[(String, String)]) -> Self {
        let text = causes.iter().map(|(f, m)| format!("{f}: {m}")).collect::<Vec<_>>().join(", ");
        let causes: Vec<Value> = causes
            .iter()
            .map(|(f, m)| json!({"reason": "FieldValueInvalid", "message": format!("{f}: {m}"), "field": f}))
            .collect();
        Self::new(422, "Invalid", format!("{} \"{name}\" is invalid: {text}", rt.kind))
            .with_details(json!({"name": name, "group": rt.group, "kind": rt.kind, "causes": causes}))
    }

    /// 422 for query parameters that fail `ValidateListOptions`, as the real handler builds it:
    /// `errors.NewInvalid(GroupKind{"meta.k8s.io", "ListOptions"}, "", errs)`. Each error is
    /// `(field, type, body)`: the cause's reason (`FieldValueForbidden`, ...) and the
    /// `field.Error` body ("Forbidden: ...").
    pub fn invalid_list_options(errors: &[(&str, &str, String)]) -> Self {
        let texts: Vec<String> = errors.iter().map(|(f, _, body)| format!("{f}: {body}")).collect();
        // utilerrors.Aggregate: one error alone, several as "[a, b]".
        let aggregated = match texts.as_slice() {
            [one] => one.clone(),
            many => format!("[{}]", many.join(", ")),
        };
        let causes: Vec<Value> =
            errors.iter().map(|(f, reason, body)| json!({"reason": reason, "message": body, "field": f})).collect();
        Self::new(422, "Invalid", format!("ListOptions.meta.k8s.io \"\" is invalid: {aggregated}"))
            .with_details(json!({"group": "meta.k8s.io", "kind": "ListOptions", "causes": causes}))
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// Server-side apply conflicts: 409 with one `FieldManagerConflict` cause per field.
    pub fn apply_conflicts(rt: &ResourceType, name: &str, conflicts: &[(String, String)]) -> Self {
        let n = conflicts.len();
        let listed = conflicts
            .iter()
            .map(|(manager, field)| format!("conflict with \"{manager}\": {field}"))
            .collect::<Vec<_>>()
            .join("\n- ");
        let plural = if n == 1 { "conflict" } else { "conflicts" };
        let causes: Vec<Value> = conflicts
            .iter()
            .map(|(manager, field)| {
                json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{manager}\""), "field": field})
            })
            .collect();
        Self::new(409, "Conflict", format!("Apply failed with {n} {plural}: {listed}"))
            .with_details(json!({"name": name, "group": rt.group, "kind": rt.plural, "causes": causes}))
    }

    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}
