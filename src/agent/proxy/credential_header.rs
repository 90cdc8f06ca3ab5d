//! Which header carries the token on forwarded requests, and in which format.
//!
//! The credential's target template says how its consumers present the token; the proxy
//! follows it:
//! 1. a template with exactly one key, which is a header name (`X-Api-Key: "{{ access_token }}"`,
//!    `Authorization: "Token {{ access_token }}"`): that header, with the rendered value;
//! 2. otherwise a template key named `Authorization` (any case; e.g. a template that also
//!    writes `expires_at` for file readers): the `Authorization` header with its value;
//! 3. otherwise, and without a template: `Authorization: <token_type> <access_token>`, as the
//!    verify probe sends it.
//!
//! Rendering happens once per token (in the credential's worker), not per request.

use std::collections::BTreeMap;

use http::header::{AUTHORIZATION, HeaderName, HeaderValue};
use secrecy::ExposeSecret;

use crate::token_state::{self, StoredToken};

/// Which template key (if any) gives the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// The only key of the template, as a header name.
    OnlyKey(String),
    /// The template's `Authorization` key (spelled as in the template).
    AuthorizationKey(String),
    /// `Authorization: <token_type> <access_token>`.
    Default,
}

/// The rule above, from the template's keys alone.
pub fn choose(templates: Option<&BTreeMap<String, String>>) -> Choice {
    let Some(templates) = templates.filter(|t| !t.is_empty()) else { return Choice::Default };
    if templates.len() == 1 {
        let key = templates.keys().next().expect("one key");
        if HeaderName::from_bytes(key.as_bytes()).is_ok() {
            return Choice::OnlyKey(key.clone());
        }
    }
    match templates.keys().find(|k| k.eq_ignore_ascii_case("authorization")) {
        Some(key) => Choice::AuthorizationKey(key.clone()),
        None => Choice::Default,
    }
}

/// The header and value for `stored`. Errors name the template key, never the value.
pub fn for_token(
    templates: Option<&BTreeMap<String, String>>,
    stored: &StoredToken,
) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = match choose(templates) {
        Choice::Default => {
            let value = format!("{} {}", stored.token_type, stored.access_token.expose_secret());
            (AUTHORIZATION, value.into_bytes())
        }
        Choice::OnlyKey(key) | Choice::AuthorizationKey(key) => {
            let mut data = token_state::render_target(templates, stored).map_err(|e| e.to_string())?;
            let value = data.remove(&key).ok_or_else(|| format!("the template has no key {key:?}"))?;
            let name = HeaderName::from_bytes(key.as_bytes()).map_err(|_| format!("{key:?} is not a header name"))?;
            (name, value)
        }
    };
    let mut value = HeaderValue::from_bytes(&value).map_err(|_| {
        format!("the value for the {name} header is not a valid header value (a line break or control character)")
    })?;
    value.set_sensitive(true);
    Ok((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;

    fn stored(token: &str) -> StoredToken {
        StoredToken {
            access_token: token.to_owned().into(),
            token_type: "Bearer".into(),
            scope: None,
            issued_at: Timestamp::now(),
            expires_at: Timestamp::now() + std::time::Duration::from_secs(60),
            refresh_token: None,
            inputs: String::new(),
            bootstrap: None,
            renewal_request: None,
            bound_certificate: None,
        }
    }

    fn template(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn without_a_template_the_token_goes_in_authorization_with_its_type() {
        let (name, value) = for_token(None, &stored("abc")).unwrap();
        assert_eq!((name.as_str(), value.to_str().unwrap()), ("authorization", "Bearer abc"));
        assert!(value.is_sensitive());
    }

    #[test]
    fn a_one_key_template_names_the_header_and_its_format() {
        let t = template(&[("X-Api-Key", "{{ access_token }}")]);
        let (name, value) = for_token(Some(&t), &stored("abc")).unwrap();
        assert_eq!((name.as_str(), value.to_str().unwrap()), ("x-api-key", "abc"));
        let t = template(&[("Authorization", "Token {{ access_token }}")]);
        assert_eq!(for_token(Some(&t), &stored("abc")).unwrap().1, "Token abc");
    }

    #[test]
    fn a_template_with_several_keys_gives_its_authorization_key_or_the_default() {
        let t = template(&[("authorization", "Bearer {{ access_token }}"), ("expires_at", "{{ expires_at }}")]);
        assert_eq!(choose(Some(&t)), Choice::AuthorizationKey("authorization".into()));
        let t = template(&[("token", "{{ access_token }}"), ("expires_at", "{{ expires_at }}")]);
        assert_eq!(choose(Some(&t)), Choice::Default);
        let t = template(&[(".dockerconfigjson", "{}")]);
        assert_eq!(choose(Some(&t)), Choice::OnlyKey(".dockerconfigjson".into()), "a header name by its characters");
        let t = template(&[("config json", "{}")]);
        assert_eq!(choose(Some(&t)), Choice::Default, "not a header name");
    }

    #[test]
    fn a_value_that_cannot_be_a_header_is_an_error_without_the_token() {
        let t = template(&[("X-Api-Key", "{{ access_token }}\nmore")]);
        let error = for_token(Some(&t), &stored("secret-abc")).unwrap_err();
        assert!(!error.contains("secret-abc"), "{error}");
    }
}
