//! The five vendors of shared/seeds as their documentation shows them. Each function
//! returns a handler for [`super::TokenServer::start`] that accepts exactly the documented
//! request (paths, encoding, credential placement) for the credentials in examples/, and
//! answers with the documented response shape.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use super::{Recorded, Reply};

pub const CLIENT_ID: &str = "replace-with-your-client-id";
pub const TALI_REFRESH: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

fn str_map(params: &std::collections::BTreeMap<String, Value>) -> Vec<(&str, &str)> {
    params.iter().map(|(k, v)| (k.as_str(), v.as_str().unwrap_or("<not a string>"))).collect()
}

/// Chalk: JSON client credentials at /v1/oauth/token; who-am-i accepts the issued token.
pub fn chalk() -> impl Fn(&Recorded) -> Reply + Send + Sync + 'static {
    |r: &Recorded| match (r.method.as_str(), r.path.as_str()) {
        ("POST", "/v1/oauth/token") => {
            let body = r.json().unwrap_or_default();
            let wanted = json!({"client_id": CLIENT_ID, "client_secret": "replace-with-your-client-secret", "grant_type": "client_credentials"});
            if serde_json::to_value(&body).unwrap() == wanted && r.header("authorization").is_none() {
                Reply::json(200, json!({"access_token": "chalk-token-1", "expires_in": 3600, "token_type": "Bearer"}))
            } else {
                Reply::json(401, json!({"detail": "invalid credentials"}))
            }
        }
        ("GET", "/v1/who-am-i") if r.header("authorization") == Some("Bearer chalk-token-1") => {
            Reply::json(200, json!({"user": "svc-account"}))
        }
        _ => Reply::json(401, json!({"detail": "unauthorized"})),
    }
}

pub const CHATLAYER_PATH: &str = "/auth/realms/Chatlayer/protocol/openid-connect/token";

/// Chatlayer (Keycloak): form body with the credentials in it; 5-minute tokens.
pub fn chatlayer() -> impl Fn(&Recorded) -> Reply + Send + Sync + 'static {
    |r: &Recorded| {
        if r.path != CHATLAYER_PATH || r.method != "POST" {
            return Reply::text(404, "text/html", "<html>Not Found</html>");
        }
        let form = r.form().unwrap_or_default();
        let ok = form.get("grant_type").map(String::as_str) == Some("client_credentials")
            && form.get("client_id").map(String::as_str) == Some(CLIENT_ID)
            && form.get("client_secret").map(String::as_str) == Some("replace-with-your-client-secret")
            && r.header("authorization").is_none();
        if !ok {
            return Reply::oauth_error(401, "unauthorized_client", "Invalid client or Invalid client credentials");
        }
        Reply::json(
            200,
            json!({"access_token": "eyJhbGciOi.chatlayer", "expires_in": 300, "refresh_expires_in": 0, "token_type": "Bearer",
                   "not-before-policy": 0, "scope": "offline_access profile public_api email"}),
        )
    }
}

/// Cerkl: HTTP Basic, a form body holding only grant_type, Accept and Accept-Language.
pub fn cerkl() -> impl Fn(&Recorded) -> Reply + Send + Sync + 'static {
    |r: &Recorded| {
        let ok = r.path == "/v3/oauth/Token"
            && r.basic() == Some((CLIENT_ID.into(), "replace-with-your-client-secret".into()))
            && r.form() == Some([("grant_type".to_owned(), "client_credentials".to_owned())].into())
            && r.header("accept") == Some("application/json")
            && r.header("accept-language") == Some("en_US");
        if ok {
            Reply::json(200, json!({"access_token": "cerkl-token", "token_type": "bearer", "expires_in": 43200}))
        } else {
            Reply::oauth_error(401, "invalid_client", "Client authentication failed")
        }
    }
}

/// Charp: JSON {client_id, client_secret} at /auth/token without grant_type; JSON
/// {refresh_token} at /auth/refresh; every response rotates the refresh token and only the
/// latest one works.
pub fn charp() -> impl Fn(&Recorded) -> Reply + Send + Sync + 'static {
    let state = Arc::new(Mutex::new((String::new(), 0u32)));
    move |r: &Recorded| {
        let mut st = state.lock().unwrap();
        let body = r.json();
        let issue = |st: &mut (String, u32)| {
            st.1 += 1;
            st.0 = format!("def5020{}", st.1);
            Reply::json(
                200,
                json!({"access_token": format!("charp-access-{}", st.1), "token_type": "Bearer",
                                    "expires_in": 3600, "refresh_token": st.0}),
            )
        };
        match (r.path.as_str(), body) {
            ("/auth/token", Some(b))
                if str_map(&b) == [("client_id", CLIENT_ID), ("client_secret", "replace-with-your-secret-key")]
                    && r.header("authorization").is_none() =>
            {
                issue(&mut st)
            }
            ("/auth/refresh", Some(b))
                if b.len() == 1 && b.get("refresh_token").and_then(Value::as_str) == Some(st.0.as_str()) =>
            {
                issue(&mut st)
            }
            ("/auth/refresh", _) => {
                Reply::json(401, json!({"error": "invalid_grant", "message": "Invalid refresh token"}))
            }
            _ => Reply::json(400, json!({"error": "invalid_request"})),
        }
    }
}

/// Tali: JSON authorization_code exchange, then JSON refresh_token grants, each with
/// client_id, client_secret and redirect_uri; expires_in is a string.
pub fn tali() -> impl Fn(&Recorded) -> Reply + Send + Sync + 'static {
    |r: &Recorded| {
        let redirect = "https://yoursite.example/callback";
        let b = r.json().unwrap_or_default();
        let s = |k: &str| b.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
        let client_ok = s("client_id") == CLIENT_ID
            && s("client_secret") == "replace-with-your-client-secret"
            && s("redirect_uri") == redirect;
        if r.path != "/oauth/token" || !client_ok {
            return Reply::oauth_error(401, "invalid_client", "unknown client");
        }
        match (s("grant_type").as_str(), b.len()) {
            ("authorization_code", 5) if s("code") == "replace-with-the-code-from-the-redirect" => Reply::json(
                200,
                json!({"access_token": "MBEehXv6KQcLH39ObZ8F6FVhQsJ2Bcf7XTf64", "refresh_token": TALI_REFRESH,
                       "expires_in": "86400", "token_type": "Bearer"}),
            ),
            ("refresh_token", 5) if s("refresh_token") == TALI_REFRESH => Reply::json(
                200,
                json!({"access_token": "second-access", "refresh_token": TALI_REFRESH, "expires_in": "86400", "token_type": "Bearer"}),
            ),
            _ => Reply::oauth_error(400, "invalid_grant", "bad code or refresh token"),
        }
    }
}
