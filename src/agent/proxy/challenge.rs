//! Does a 401 say the token itself is bad? RFC 6750 §3.1: a resource server answers
//! `WWW-Authenticate: Bearer error="invalid_token"` for a token that is expired, revoked or
//! malformed. Only that asks for an early renewal; a 401 without it (wrong scope in some
//! APIs, a missing header, another scheme) would not be cured by a new token.
//!
//! The header may hold several challenges, and a challenge several parameters, separated by
//! commas (RFC 9110 §11.6.1): `Basic realm="x", Bearer realm="api", error="invalid_token"`.

use http::HeaderMap;
use http::header::WWW_AUTHENTICATE;

/// Whether any `WWW-Authenticate` challenge is `Bearer` with `error="invalid_token"`.
pub fn says_invalid_token(headers: &HeaderMap) -> bool {
    headers.get_all(WWW_AUTHENTICATE).iter().filter_map(|v| v.to_str().ok()).any(bearer_invalid_token)
}

fn bearer_invalid_token(value: &str) -> bool {
    let mut scheme_is_bearer = false;
    for item in split_outside_quotes(value) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        // An item either starts a challenge ("Bearer", "Bearer realm=x", "Negotiate abc==")
        // or is one more parameter of the current one ("error=x").
        let param = match item.split_once([' ', '\t']) {
            Some((scheme, rest)) if !scheme.contains('=') && !rest.trim_start().starts_with('=') => {
                scheme_is_bearer = scheme.eq_ignore_ascii_case("bearer");
                rest.trim_start()
            }
            None if !item.contains('=') => {
                scheme_is_bearer = item.eq_ignore_ascii_case("bearer");
                continue;
            }
            _ => item,
        };
        if !scheme_is_bearer {
            continue;
        }
        if let Some((name, value)) = param.split_once('=') {
            let value = value.trim();
            let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
            if name.trim().eq_ignore_ascii_case("error") && value == "invalid_token" {
                return true;
            }
        }
    }
    false
}

/// Splits at commas that are not inside a quoted string (which may escape quotes with `\`).
fn split_outside_quotes(s: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                items.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&s[start..]);
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    fn says(values: &[&str]) -> bool {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(WWW_AUTHENTICATE, v.parse().unwrap());
        }
        says_invalid_token(&headers)
    }

    #[test]
    fn a_bearer_invalid_token_challenge_is_recognised_in_every_spelling() {
        assert!(says(&[r#"Bearer error="invalid_token""#]));
        assert!(says(&[
            r#"Bearer realm="example", error="invalid_token", error_description="The access token expired""#
        ]));
        assert!(says(&["bearer error=invalid_token"]));
        assert!(says(&[r#"Bearer realm="a b", error = "invalid_token""#]));
        assert!(says(&[r#"Basic realm="x", Bearer realm="y", error="invalid_token""#]));
        assert!(says(&[r#"Basic realm="x""#, r#"Bearer error="invalid_token""#]));
        assert!(says(&[r#"Bearer error_description="a, b, error=\"x\"", error="invalid_token""#]));
    }

    #[test]
    fn other_401s_do_not_ask_for_a_new_token() {
        assert!(!says(&[]));
        assert!(!says(&[r#"Bearer realm="example""#]));
        assert!(!says(&[r#"Bearer error="insufficient_scope""#]));
        assert!(!says(&[r#"Bearer error="invalid_request""#]));
        assert!(!says(&[r#"Basic realm="x", error="invalid_token""#]));
        assert!(!says(&[r#"Bearer error_description="error=invalid_token""#]));
        assert!(!says(&[r#"DPoP error="invalid_token""#]));
    }
}
