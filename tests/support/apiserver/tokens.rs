//! The ServiceAccount token issuer of the double, as the real API server implements it:
//! `POST .../serviceaccounts/NAME/token` (TokenRequest, authentication.k8s.io/v1) answers
//! an RS256 JWT with iss, sub `system:serviceaccount:NS:NAME`, aud, exp, iat, nbf, jti and
//! the `kubernetes.io` claims; the issuer is published at `/.well-known/openid-configuration`
//! and its keys at `/openid/v1/jwks` (service account issuer discovery), so token servers
//! in tests verify tokens over HTTP like a real identity provider.
//!
//! Like the real server: no audiences means the API server's own audiences; expirationSeconds
//! defaults to 3600 and is refused below 600 (10 minutes) or above 2^32 with a 422 Invalid
//! Status naming `spec.expirationSeconds`; a missing ServiceAccount is 404; a boundObjectRef
//! of a kind other than Pod, Secret or Node is 400.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::errors::ApiError;

/// The issuer's settings and key.
#[derive(Clone)]
pub struct Issuer {
    /// The `iss` claim and discovery issuer (the real server's --service-account-issuer).
    pub issuer: String,
    /// What the API server itself accepts (--api-audiences; by default the issuer).
    pub api_audiences: Vec<String>,
    /// The shortest expirationSeconds accepted (600 on a real server).
    pub min_expiration: i64,
    key: EncodingKey,
    jwk: Value,
    /// Every token issued, so tests can prove none is stored or shown anywhere.
    pub issued: Vec<String>,
}

const KEY_ID: &str = "apiserver-double-sa-key";

impl Issuer {
    pub fn new(issuer: String, api_audiences: Vec<String>) -> Self {
        let pem = std::fs::read(format!("{}/tests/fixtures/keys/rsa.pem", env!("CARGO_MANIFEST_DIR")))
            .expect("the RSA fixture key");
        let key = EncodingKey::from_rsa_pem(&pem).expect("an RSA key");
        let mut jwk = serde_json::to_value(jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap())
            .expect("JWK serializes");
        jwk["kid"] = json!(KEY_ID);
        jwk["use"] = json!("sig");
        jwk["alg"] = json!("RS256");
        let api_audiences = if api_audiences.is_empty() { vec![issuer.clone()] } else { api_audiences };
        Issuer { issuer, api_audiences, min_expiration: 600, key, jwk, issued: Vec::new() }
    }

    /// `/.well-known/openid-configuration`; `external` is the URL clients reach the server at.
    pub fn discovery(&self, external: &str) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{external}/openid/v1/jwks"),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        })
    }

    /// `/openid/v1/jwks`.
    pub fn jwks(&self) -> Value {
        json!({"keys": [self.jwk]})
    }

    /// A TokenRequest for ServiceAccount `account` (the stored object).
    pub fn token_request(&mut self, namespace: &str, account: &Value, body: &Value) -> Result<Value, ApiError> {
        let name = account.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
        let invalid = |field: &str, value: &Value, why: &str| {
            let message = format!("{field}: Invalid value: {value}: {why}");
            ApiError {
                code: 422,
                reason: "Invalid".into(),
                message: format!("TokenRequest.authentication.k8s.io \"{name}\" is invalid: {message}"),
                details: Some(json!({
                    "name": name, "group": "authentication.k8s.io", "kind": "TokenRequest",
                    "causes": [{"reason": "FieldValueInvalid", "message": format!("Invalid value: {value}: {why}"), "field": field}],
                })),
            }
        };
        let spec = body.get("spec").cloned().unwrap_or_default();
        let seconds = spec.get("expirationSeconds").and_then(Value::as_i64).unwrap_or(3600);
        if seconds < self.min_expiration {
            return Err(invalid(
                "spec.expirationSeconds",
                &json!(seconds),
                "may not specify a duration less than 10 minutes",
            ));
        }
        if seconds > 1 << 32 {
            return Err(invalid(
                "spec.expirationSeconds",
                &json!(seconds),
                "may not specify a duration larger than 2^32 seconds",
            ));
        }
        let audiences: Vec<String> = match spec.get("audiences").and_then(Value::as_array) {
            Some(list) if !list.is_empty() => list.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            _ => self.api_audiences.clone(),
        };
        let mut k8s = json!({
            "namespace": namespace,
            "serviceaccount": {"name": name, "uid": account.pointer("/metadata/uid").cloned().unwrap_or_default()},
        });
        if let Some(bound) = spec.get("boundObjectRef").filter(|b| !b.is_null()) {
            let kind = bound.get("kind").and_then(Value::as_str).unwrap_or_default();
            if !matches!(kind, "Pod" | "Secret" | "Node") {
                return Err(ApiError::bad_request(format!("cannot bind token to object of type {kind}")));
            }
            k8s[kind.to_lowercase()] = json!({"name": bound.get("name"), "uid": bound.get("uid")});
        }
        let now = jiff::Timestamp::now().as_second();
        let claims = json!({
            "aud": audiences,
            "exp": now + seconds,
            "iat": now,
            "nbf": now,
            "iss": self.issuer,
            "jti": format!("{:032x}", rand::random::<u128>()),
            "kubernetes.io": k8s,
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
        });
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(KEY_ID.into());
        let token = jsonwebtoken::encode(&header, &claims, &self.key).expect("signing works");
        self.issued.push(token.clone());
        let expires = jiff::Timestamp::from_second(now + seconds).unwrap().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        Ok(json!({
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": null},
            "spec": {"audiences": audiences, "expirationSeconds": seconds, "boundObjectRef": spec.get("boundObjectRef")},
            "status": {"token": token, "expirationTimestamp": expires},
        }))
    }
}
