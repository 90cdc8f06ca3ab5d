//! The target Secret's data, built from a freshly issued token.
//!
//! Without templates the Secret gets the keys `access_token`, `token_type` and `expires_at`.
//! With templates (`spec.target.template`) each key is rendered with minijinja, so a Secret
//! can hold a ready-made `Authorization` header or a `.dockerconfigjson` document.
//!
//! Templates come from users and run with the access token in scope, so rendering is
//! defensive: undefined variables are errors (a typo must not publish an empty header),
//! output and evaluation steps are bounded, and no error ever carries minijinja's own
//! message, which may quote values, i.e. the token.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use jiff::Timestamp;
use minijinja::{AutoEscape, Environment, ErrorKind, Template, UndefinedBehavior, Value};
use serde::Serialize;

/// Largest rendered value for one key. Far above any header or registry credential, far
/// below what would let one template exhaust the Secret on its own.
pub const MAX_RENDERED_VALUE_BYTES: usize = 64 * 1024;

/// Largest total of keys and rendered values: the API server rejects Secrets over 1 MiB,
/// and it is better to say so in a condition than to fail the apply.
pub const MAX_RENDERED_TOTAL_BYTES: usize = 1024 * 1024;

/// minijinja instructions one template may execute. Real templates need a few dozen; the
/// bound stops a template such as nested `range` loops from pinning a controller core.
pub const TEMPLATE_FUEL: u64 = 100_000;

/// The variables a template can use.
pub const TEMPLATE_VARIABLES: [&str; 5] = ["access_token", "token_type", "expires_at", "expires_in", "scope"];

/// A token as seen by the renderer. Borrowed, so the caller can keep the token in a
/// `secrecy::SecretString` and expose it only for the duration of [`render`].
#[derive(Clone, Copy)]
pub struct TokenView<'a> {
    pub access_token: &'a str,
    pub token_type: &'a str,
    pub expires_at: Timestamp,
    pub issued_at: Timestamp,
    /// The scope the server granted, if it said.
    pub scope: Option<&'a str>,
}

impl fmt::Debug for TokenView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenView")
            .field("access_token", &"[redacted]")
            .field("token_type", &self.token_type)
            .field("expires_at", &self.expires_at)
            .field("issued_at", &self.issued_at)
            .field("scope", &self.scope)
            .finish()
    }
}

/// Why the Secret data could not be built. Messages name the key and the problem and are
/// written by tokensync, never copied from minijinja, so they cannot contain the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// The template does not compile. The detail comes from the parser, which only ever
    /// sees the template source, never a token.
    #[error("template for key {key:?} is invalid{}: {detail}", on_line(*line))]
    Syntax { key: String, line: Option<usize>, detail: String },
    /// The template names variables that do not exist (usually a typo).
    #[error(
        "template for key {key:?} uses unknown variable(s) {}; available: {}",
        names.join(", "),
        TEMPLATE_VARIABLES.join(", ")
    )]
    UnknownVariables { key: String, names: Vec<String> },
    /// Rendering failed, e.g. an undefined attribute, an unknown filter or a type error.
    #[error("template for key {key:?} failed to render{}: {problem}", on_line(*line))]
    Evaluation { key: String, line: Option<usize>, problem: String },
    /// The template ran out of its [`TEMPLATE_FUEL`].
    #[error("template for key {key:?} needs more than {TEMPLATE_FUEL} evaluation steps")]
    TooComplex { key: String },
    /// One rendered value is over [`MAX_RENDERED_VALUE_BYTES`].
    #[error("template for key {key:?} renders more than {MAX_RENDERED_VALUE_BYTES} bytes")]
    ValueTooLarge { key: String },
    /// All keys and values together are over [`MAX_RENDERED_TOTAL_BYTES`].
    #[error("rendered Secret data exceeds {MAX_RENDERED_TOTAL_BYTES} bytes")]
    DataTooLarge,
}

fn on_line(line: Option<usize>) -> String {
    line.map(|line| format!(" on line {line}")).unwrap_or_default()
}

/// The target Secret's data for `token`: the default keys when `templates` is `None` (or
/// empty, since an empty Secret is never what a user wants), otherwise one rendered key
/// per template.
pub fn render(
    templates: Option<&BTreeMap<String, String>>,
    token: &TokenView<'_>,
) -> Result<BTreeMap<String, Vec<u8>>, RenderError> {
    match templates {
        Some(templates) if !templates.is_empty() => {
            render_templates(templates, &TemplateContext::from_token(token), Diagnostics::Redacted)
        }
        _ => Ok(default_data(token)),
    }
}

/// Checks templates before any token is requested, so the controller can report
/// `InvalidSpec` instead of spending a token request on a Secret it cannot build. Compiles
/// every template, rejects unknown variables, and test-renders with placeholder values
/// (catching unknown filters, type errors and size limits). Because no real token is
/// involved, errors here may carry minijinja's detail.
pub fn validate_templates(templates: &BTreeMap<String, String>) -> Result<(), RenderError> {
    render_templates(templates, &TemplateContext::placeholder(), Diagnostics::Detailed).map(drop)
}

fn default_data(token: &TokenView<'_>) -> BTreeMap<String, Vec<u8>> {
    BTreeMap::from([
        ("access_token".to_owned(), token.access_token.as_bytes().to_vec()),
        ("token_type".to_owned(), token.token_type.as_bytes().to_vec()),
        ("expires_at".to_owned(), rfc3339_seconds(token.expires_at).into_bytes()),
    ])
}

/// `2026-11-22T10:05:00Z`: seconds precision like every other Kubernetes timestamp, and
/// never later than the real expiry.
fn rfc3339_seconds(timestamp: Timestamp) -> String {
    timestamp.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The values templates see.
///
/// `scope` is an empty string when the server did not return one (RFC 6749 makes it
/// optional when it equals the requested scope), rather than undefined: under strict
/// undefined behaviour a template using `{{ scope }}` would otherwise render today and fail
/// at the next renewal when the server omits it.
#[derive(Serialize)]
struct TemplateContext<'a> {
    access_token: &'a str,
    token_type: &'a str,
    expires_at: String,
    /// The lifetime at issue, in seconds: what the server's `expires_in` said.
    expires_in: i64,
    scope: &'a str,
}

impl<'a> TemplateContext<'a> {
    fn from_token(token: &TokenView<'a>) -> Self {
        TemplateContext {
            access_token: token.access_token,
            token_type: token.token_type,
            expires_at: rfc3339_seconds(token.expires_at),
            expires_in: (token.expires_at.as_second() - token.issued_at.as_second()).max(0),
            scope: token.scope.unwrap_or_default(),
        }
    }

    fn placeholder() -> TemplateContext<'static> {
        TemplateContext {
            access_token: "placeholder-access-token",
            token_type: "Bearer",
            expires_at: "2000-01-01T01:00:00Z".to_owned(),
            expires_in: 3600,
            scope: "placeholder-scope",
        }
    }
}

/// Whether errors may carry minijinja's detail: only when rendering placeholder values.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Diagnostics {
    Detailed,
    Redacted,
}

fn render_templates(
    templates: &BTreeMap<String, String>,
    context: &TemplateContext<'_>,
    diagnostics: Diagnostics,
) -> Result<BTreeMap<String, Vec<u8>>, RenderError> {
    let env = template_environment();
    let mut data = BTreeMap::new();
    let mut total = 0usize;
    for (key, source) in templates {
        let value = render_key(&env, key, source, context, diagnostics)?;
        total = total.saturating_add(key.len()).saturating_add(value.len());
        if total > MAX_RENDERED_TOTAL_BYTES {
            return Err(RenderError::DataTooLarge);
        }
        data.insert(key.clone(), value);
    }
    Ok(data)
}

/// minijinja with strict undefined variables, no autoescaping (values end up in a Secret,
/// not in HTML), a fuel bound and the extra `b64encode` filter.
fn template_environment<'source>() -> Environment<'source> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.add_filter("b64encode", b64encode);
    env
}

/// Standard base64 (with padding) of a string's UTF-8 bytes, as `.dockerconfigjson`'s
/// `auth` field and HTTP Basic credentials need.
fn b64encode(value: &Value) -> Result<String, minijinja::Error> {
    let bytes = value.as_bytes().ok_or_else(|| {
        minijinja::Error::new(ErrorKind::InvalidOperation, "b64encode needs a string; convert with |string first")
    })?;
    Ok(BASE64.encode(bytes))
}

fn render_key<'source>(
    env: &Environment<'source>,
    key: &'source str,
    source: &'source str,
    context: &TemplateContext<'_>,
    diagnostics: Diagnostics,
) -> Result<Vec<u8>, RenderError> {
    let template = env.template_from_named_str(key, source).map_err(|error| syntax_error(key, &error))?;
    reject_unknown_variables(env, key, &template)?;
    let mut output = BoundedOutput::default();
    match template.render_captured_to(context, &mut output) {
        Ok(_) => Ok(output.bytes),
        Err(_) if output.overflowed => Err(RenderError::ValueTooLarge { key: key.to_owned() }),
        Err(error) => Err(evaluation_error(key, &error, diagnostics)),
    }
}

/// Static check for variables that are neither ours, nor minijinja globals (`range`, ...),
/// nor assigned in the template. Strict undefined behaviour would catch them only on the
/// branch actually taken; this also names the misspelt variable, which the runtime error
/// does not.
fn reject_unknown_variables(env: &Environment<'_>, key: &str, template: &Template<'_, '_>) -> Result<(), RenderError> {
    let globals: BTreeSet<&str> = env.globals().map(|(name, _)| name).collect();
    let unknown: BTreeSet<String> = template
        .undeclared_variables(false)
        .into_iter()
        .filter(|name| !TEMPLATE_VARIABLES.contains(&name.as_str()) && !globals.contains(name.as_str()))
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(RenderError::UnknownVariables { key: key.to_owned(), names: unknown.into_iter().collect() })
    }
}

fn syntax_error(key: &str, error: &minijinja::Error) -> RenderError {
    let detail = error.detail().map_or_else(|| error.kind().to_string(), str::to_owned);
    RenderError::Syntax { key: key.to_owned(), line: error.line(), detail }
}

/// Built from the error kind and line only, unless the values were placeholders: minijinja
/// details can quote values, and the values include the access token.
fn evaluation_error(key: &str, error: &minijinja::Error, diagnostics: Diagnostics) -> RenderError {
    if error.kind() == ErrorKind::OutOfFuel {
        return RenderError::TooComplex { key: key.to_owned() };
    }
    let problem = match (diagnostics, error.detail()) {
        (Diagnostics::Detailed, Some(detail)) => format!("{}: {detail}", error.kind()),
        _ => error.kind().to_string(),
    };
    RenderError::Evaluation { key: key.to_owned(), line: error.line(), problem }
}

/// Collects rendered output and refuses to grow past [`MAX_RENDERED_VALUE_BYTES`], so an
/// oversized template fails early instead of allocating without bound.
#[derive(Default)]
struct BoundedOutput {
    bytes: Vec<u8>,
    overflowed: bool,
}

impl io::Write for BoundedOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_RENDERED_VALUE_BYTES {
            self.overflowed = true;
            return Err(io::Error::other("rendered value too large"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.SECRET-PAYLOAD-7f3a9c.sig";

    fn token() -> TokenView<'static> {
        TokenView {
            access_token: TOKEN,
            token_type: "Bearer",
            issued_at: "2026-11-22T10:00:00.250Z".parse().unwrap(),
            expires_at: "2026-11-22T10:05:00.750Z".parse().unwrap(),
            scope: Some("public_api"),
        }
    }

    fn templates(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
        entries.iter().map(|(key, source)| (key.to_string(), source.to_string())).collect()
    }

    fn render_one(source: &str) -> Result<String, RenderError> {
        let data = render(Some(&templates(&[("value", source)])), &token())?;
        Ok(String::from_utf8(data["value"].clone()).unwrap())
    }

    #[test]
    fn without_templates_the_default_keys_are_written() {
        let data = render(None, &token()).unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), ["access_token", "expires_at", "token_type"]);
        assert_eq!(data["access_token"], TOKEN.as_bytes());
        assert_eq!(data["token_type"], b"Bearer");
        assert_eq!(data["expires_at"], b"2026-11-22T10:05:00Z");
    }

    #[test]
    fn empty_templates_fall_back_to_the_default_keys() {
        assert_eq!(render(Some(&BTreeMap::new()), &token()).unwrap(), render(None, &token()).unwrap());
    }

    #[test]
    fn authorization_header_template_renders_without_escaping() {
        let data = render(Some(&templates(&[("Authorization", "Bearer {{ access_token }}")])), &token()).unwrap();
        assert_eq!(data.len(), 1);
        assert_eq!(data["Authorization"], format!("Bearer {TOKEN}").as_bytes());
        assert_eq!(render_one("<{{ '&\"' }}>").unwrap(), "<&\">");
    }

    #[test]
    fn templates_see_every_token_field() {
        let rendered = render_one("{{ token_type }}|{{ expires_at }}|{{ expires_in }}|{{ scope }}").unwrap();
        assert_eq!(rendered, "Bearer|2026-11-22T10:05:00Z|300|public_api");
    }

    #[test]
    fn absent_scope_renders_as_empty_string() {
        let unscoped = TokenView { scope: None, ..token() };
        let data = render(Some(&templates(&[("v", "[{{ scope }}]{% if scope %}scoped{% endif %}")])), &unscoped);
        assert_eq!(data.unwrap()["v"], b"[]");
    }

    #[test]
    fn expired_at_issue_token_has_zero_expires_in() {
        let expired = TokenView { expires_at: token().issued_at - jiff::SignedDuration::from_secs(5), ..token() };
        let data = render(Some(&templates(&[("v", "{{ expires_in }}")])), &expired).unwrap();
        assert_eq!(data["v"], b"0");
    }

    #[test]
    fn dockerconfigjson_renders_with_b64encode_and_tojson() {
        let source = r#"{"auths": {"registry.example": {"username": "oauth2accesstoken", "password": {{ access_token | tojson }}, "auth": {{ ("oauth2accesstoken:" ~ access_token) | b64encode | tojson }}}}}"#;
        let data = render(Some(&templates(&[(".dockerconfigjson", source)])), &token()).unwrap();
        let document: serde_json::Value = serde_json::from_slice(&data[".dockerconfigjson"]).unwrap();
        let registry = &document["auths"]["registry.example"];
        assert_eq!(registry["password"], TOKEN);
        assert_eq!(registry["auth"], BASE64.encode(format!("oauth2accesstoken:{TOKEN}")));
    }

    #[test]
    fn b64encode_uses_standard_alphabet_with_padding() {
        assert_eq!(render_one("{{ '\u{fb}\u{ff}x' | b64encode }}").unwrap(), "w7vDv3g=");
    }

    #[test]
    fn b64encode_rejects_non_strings() {
        assert!(matches!(render_one("{{ expires_in | b64encode }}"), Err(RenderError::Evaluation { .. })));
        assert_eq!(render_one("{{ expires_in | string | b64encode }}").unwrap(), "MzAw");
    }

    #[test]
    fn misspelt_variable_is_an_error_naming_it() {
        let error = render_one("Bearer {{ acces_token }}").unwrap_err();
        assert_eq!(error, RenderError::UnknownVariables { key: "value".into(), names: vec!["acces_token".into()] });
        assert!(error.to_string().contains("acces_token"), "{error}");
    }

    #[test]
    fn unknown_variable_on_an_untaken_branch_is_still_an_error() {
        assert!(matches!(render_one("{% if false %}{{ nope }}{% endif %}"), Err(RenderError::UnknownVariables { .. })));
    }

    #[test]
    fn undefined_attribute_is_an_error_not_an_empty_string() {
        let error = render_one("{{ access_token.value }}").unwrap_err();
        assert!(matches!(&error, RenderError::Evaluation { key, line: Some(1), .. } if key == "value"), "{error:?}");
    }

    #[test]
    fn assigned_loop_and_global_names_are_not_unknown() {
        let source =
            "{% set p = 'x' %}{% for c in range(2) %}{{ loop.index }}{{ p }}{% endfor %}{{ namespace(a=1).a }}";
        assert_eq!(render_one(source).unwrap(), "1x2x1");
    }

    #[test]
    fn syntax_error_names_the_key_and_line() {
        let error = render(Some(&templates(&[("Authorization", "Bearer\n{{ access_token ")])), &token()).unwrap_err();
        let RenderError::Syntax { key, line, .. } = &error else { panic!("{error:?}") };
        assert_eq!((key.as_str(), *line), ("Authorization", Some(2)));
        assert!(error.to_string().starts_with("template for key \"Authorization\" is invalid on line 2: "), "{error}");
    }

    #[test]
    fn value_over_the_per_key_limit_is_rejected() {
        let huge = "x".repeat(MAX_RENDERED_VALUE_BYTES + 1);
        let error = render(Some(&templates(&[("big", &huge)])), &token()).unwrap_err();
        assert_eq!(error, RenderError::ValueTooLarge { key: "big".into() });
        let exact = "x".repeat(MAX_RENDERED_VALUE_BYTES);
        assert!(render(Some(&templates(&[("big", &exact)])), &token()).is_ok());
    }

    #[test]
    fn data_over_the_secret_limit_is_rejected() {
        let value = "x".repeat(MAX_RENDERED_VALUE_BYTES);
        let keys: Vec<String> = (0..17).map(|i| format!("key-{i:02}")).collect();
        let many: BTreeMap<String, String> = keys.iter().map(|key| (key.clone(), value.clone())).collect();
        assert_eq!(render(Some(&many), &token()).unwrap_err(), RenderError::DataTooLarge);
        let fewer: BTreeMap<String, String> = many.into_iter().take(15).collect();
        assert!(render(Some(&fewer), &token()).is_ok());
    }

    #[test]
    fn runaway_template_runs_out_of_fuel() {
        let source = "{% for i in range(1000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}";
        assert_eq!(render_one(source).unwrap_err(), RenderError::TooComplex { key: "value".into() });
    }

    #[test]
    fn token_never_appears_in_render_errors() {
        let failing = [
            "{{ access_token | int }}",
            "{{ access_token + 1 }}",
            "{{ range(access_token) }}",
            "{{ access_token.foo.bar }}",
            "{{ {access_token: 1}[access_token ~ 'x'].y }}",
            "{{ access_token | nosuch }}",
            "{{ access_token is nosuchtest }}",
            "{{ access_token | b64encode | b64encode(access_token) }}",
            "{% macro m(t) %}{{ m(t ~ access_token) }}{% endmacro %}{{ m(access_token) }}",
            "{% for i in range(100000) %}{{ access_token }}{% endfor %}",
            "{{ access_token }}{{ acces_token }}",
        ];
        for source in failing {
            let error = render_one(source).expect_err(source);
            let shown = format!("{error} {error:?}");
            assert!(!shown.contains("SECRET-PAYLOAD"), "{source} leaked the token: {shown}");
        }
    }

    #[test]
    fn token_view_debug_redacts_the_token() {
        let shown = format!("{:?}", token());
        assert!(!shown.contains("SECRET-PAYLOAD"), "{shown}");
        assert!(shown.contains("public_api"), "{shown}");
    }

    #[test]
    fn validation_accepts_working_templates() {
        let valid = templates(&[
            ("Authorization", "{{ token_type }} {{ access_token }}"),
            (".dockerconfigjson", r#"{"auths": {"r": {"auth": {{ ("u:" ~ access_token) | b64encode | tojson }}}}}"#),
        ]);
        assert_eq!(validate_templates(&valid), Ok(()));
    }

    #[test]
    fn validation_reports_syntax_errors_unknown_variables_and_unknown_filters() {
        let syntax = validate_templates(&templates(&[("a", "{% if %}")])).unwrap_err();
        assert!(matches!(syntax, RenderError::Syntax { .. }), "{syntax:?}");
        let typo = validate_templates(&templates(&[("a", "{{ acces_token }}")])).unwrap_err();
        assert!(matches!(typo, RenderError::UnknownVariables { .. }), "{typo:?}");
        let filter = validate_templates(&templates(&[("a", "{{ access_token | b64encod }}")])).unwrap_err();
        assert!(filter.to_string().contains("b64encod"), "validation explains the filter: {filter}");
    }

    #[test]
    fn validation_reports_oversized_output() {
        let huge = "x".repeat(MAX_RENDERED_VALUE_BYTES + 1);
        assert_eq!(
            validate_templates(&templates(&[("k", &huge)])),
            Err(RenderError::ValueTooLarge { key: "k".into() })
        );
    }
}
