//! Request log, counters and fault injection.

/// What a request did, in the API server's audit vocabulary (`apply` split out of `patch`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    /// Any PATCH except server-side apply (merge, JSON, strategic).
    Patch,
    /// PATCH with `application/apply-patch+yaml`.
    Apply,
    Delete,
    DeleteCollection,
}

impl Verb {
    pub fn is_write(self) -> bool {
        !matches!(self, Verb::Get | Verb::List | Verb::Watch)
    }
}

/// One request the double answered.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestRecord {
    pub verb: Verb,
    pub group: String,
    /// Plural resource name, e.g. `secrets`.
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub field_manager: Option<String>,
    /// Content type of a PATCH body.
    pub patch_type: Option<String>,
    /// HTTP status code of the answer (200 for a watch that started).
    pub code: u16,
    /// Whether the request changed stored state (bumped the resourceVersion).
    pub changed: bool,
    /// Whether the client asked for PartialObjectMetadata (metadata-only get/list/watch).
    pub metadata_only: bool,
    /// The labelSelector query parameter, if any.
    pub label_selector: Option<String>,
    /// The client's name, from [`super::CLIENT_HEADER`] ([`super::ApiServer::client_named`]).
    pub client: Option<String>,
    /// The resourceVersion query parameter as sent (`None`: absent).
    pub resource_version: Option<String>,
    /// The sendInitialEvents query parameter as sent (`None`: absent), for watch-list
    /// ("streaming list") requests.
    pub send_initial_events: Option<String>,
    /// The status of the staged fault this request was answered with: the code of a
    /// [`Fault`] rule it used up, or 410 for a watch refused by
    /// [`super::ApiServer::expire_next_watches`] (whose `code` stays 200: the watch starts, its
    /// only event is the 410). `None`: answered by the server as it is.
    pub injected: Option<u16>,
}

/// A rule that makes matching requests fail. Build with [`Fault::writes`] or [`Fault::verbs`].
#[derive(Clone, Debug)]
pub struct Fault {
    /// Empty: any write (create, update, patch, apply, delete, deletecollection).
    pub verbs: Vec<Verb>,
    pub resource: Option<String>,
    /// `None`: any; `Some(None)`: the main resource only; `Some(Some("status"))`.
    pub subresource: Option<Option<String>>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub code: u16,
    pub message: String,
    /// How many matching requests fail before the rule is used up.
    pub times: usize,
    /// Perform the request, then answer with the error (a lost response).
    pub after_write: bool,
    /// `Some`: only requests of this client ([`super::ApiServer::client_named`]).
    pub client: Option<String>,
    /// Matching requests hang (before they change anything) for as long as the rule exists,
    /// instead of failing; `code` and `times` do not apply.
    pub hang: bool,
}

impl Fault {
    /// Fails the next matching write with a 500.
    pub fn writes() -> Self {
        Self {
            verbs: Vec::new(),
            resource: None,
            subresource: None,
            namespace: None,
            name: None,
            code: 500,
            message: "injected fault".into(),
            times: 1,
            after_write: false,
            client: None,
            hang: false,
        }
    }

    pub fn verbs(verbs: &[Verb]) -> Self {
        Self { verbs: verbs.to_vec(), ..Self::writes() }
    }

    #[must_use]
    pub fn resource(mut self, plural: &str) -> Self {
        self.resource = Some(plural.into());
        self
    }

    #[must_use]
    pub fn subresource(mut self, sub: &str) -> Self {
        self.subresource = Some(Some(sub.into()));
        self
    }

    #[must_use]
    pub fn main_resource(mut self) -> Self {
        self.subresource = Some(None);
        self
    }

    #[must_use]
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    #[must_use]
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The status code; the reason is the one the real server uses for it (409 Conflict,
    /// 500 InternalError, 503 ServiceUnavailable, ...). kube's default client retries 429,
    /// 503 and 504 on its own.
    #[must_use]
    pub fn code(mut self, code: u16) -> Self {
        self.code = code;
        self
    }

    #[must_use]
    pub fn message(mut self, message: &str) -> Self {
        self.message = message.into();
        self
    }

    #[must_use]
    pub fn times(mut self, times: usize) -> Self {
        self.times = times;
        self
    }

    #[must_use]
    pub fn client(mut self, name: &str) -> Self {
        self.client = Some(name.into());
        self
    }

    /// Matching requests get no answer until the rule is removed
    /// ([`super::ApiServer::clear_faults`]): a connection that hangs rather than fails.
    #[must_use]
    pub fn hang(mut self) -> Self {
        self.hang = true;
        self
    }

    #[must_use]
    pub fn after_write(mut self) -> Self {
        self.after_write = true;
        self
    }

    pub(crate) fn matches(&self, rec: &RequestRecord) -> bool {
        let verb_ok = if self.verbs.is_empty() { rec.verb.is_write() } else { self.verbs.contains(&rec.verb) };
        verb_ok
            && self.resource.as_ref().is_none_or(|r| *r == rec.resource)
            && self.subresource.as_ref().is_none_or(|s| *s == rec.subresource)
            && self.namespace.as_ref().is_none_or(|n| rec.namespace.as_ref() == Some(n))
            && self.name.as_ref().is_none_or(|n| rec.name.as_ref() == Some(n))
            && self.client.as_ref().is_none_or(|c| rec.client.as_ref() == Some(c))
    }
}
