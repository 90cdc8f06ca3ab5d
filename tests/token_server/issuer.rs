//! A scriptable OAuth2 issuer for the controller tests: `token-1`, `token-2`, ... with the
//! lifetime given, optionally rotating refresh tokens (only the latest accepted), and an
//! answer the test sets instead of a token while it runs.

use std::sync::{Arc, Mutex};

use serde_json::json;

use super::{Recorded, Reply, TokenServer};

/// How the test token server behaves; tests change it while the controller runs.
pub struct Behaviour {
    pub lifetime: u64,
    pub issued: u32,
    /// Answer with this instead of a token.
    pub fail: Option<Box<dyn Fn() -> Reply + Send>>,
    /// Issue a new refresh token with every response and accept only the latest.
    pub rotating_refresh: bool,
    pub current_refresh: String,
}

pub struct Issuer {
    pub server: TokenServer,
    pub behaviour: Arc<Mutex<Behaviour>>,
}

impl Issuer {
    pub async fn start(lifetime: u64) -> Issuer {
        let behaviour = Arc::new(Mutex::new(Behaviour {
            lifetime,
            issued: 0,
            fail: None,
            rotating_refresh: false,
            current_refresh: String::new(),
        }));
        let b = behaviour.clone();
        let server = TokenServer::start(move |r: &Recorded| {
            let mut b = b.lock().unwrap();
            if let Some(fail) = &b.fail {
                return fail();
            }
            let p = r.params();
            if b.rotating_refresh
                && p.get("grant_type").map(String::as_str) == Some("refresh_token")
                && p.get("refresh_token") != Some(&b.current_refresh)
            {
                return Reply::oauth_error(400, "invalid_grant", "refresh token reused");
            }
            b.issued += 1;
            let mut body = json!({"access_token": format!("token-{}", b.issued), "token_type": "Bearer", "expires_in": b.lifetime});
            if b.rotating_refresh {
                b.current_refresh = format!("refresh-{}", b.issued);
                body["refresh_token"] = b.current_refresh.clone().into();
            }
            Reply::json(200, body)
        })
        .await;
        Issuer { server, behaviour }
    }

    pub fn url(&self) -> String {
        self.server.url("/token")
    }

    pub fn requests(&self) -> usize {
        self.server.requests().len()
    }

    pub fn fail_with(&self, reply: impl Fn() -> Reply + Send + 'static) {
        self.behaviour.lock().unwrap().fail = Some(Box::new(reply));
    }

    pub fn heal(&self) {
        self.behaviour.lock().unwrap().fail = None;
    }
}
