//! Durations as Kubernetes writes them (`90s`, `10m`, `1h30m`), kept as strings in the spec.
//!
//! The spec keeps the raw string so that an object that slipped past admission still
//! deserializes and gets a clear `InvalidSpec` condition instead of vanishing from the watch.
//! The CRD pattern and [`parse_duration`] accept exactly the same language.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// Pattern enforced by the CRD; kept in sync with [`parse_duration`] by a unit test.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// A duration such as `5m`, `1h`, `1h30m` or `90s` (units: ms, s, m, h).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DurationString(pub String);

impl DurationString {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// Parses the value; the error names what is wrong but not the field (callers add it).
    pub fn parse(&self) -> Result<Duration, String> {
        parse_duration(&self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for DurationString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for DurationString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl JsonSchema for DurationString {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "maxLength": 32,
        })
    }
}

/// Parses a Go-style duration restricted to ms, s, m and h (the units that make sense for
/// token lifetimes), e.g. `1h30m`, `90s`, `0.5h`.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    if input.is_empty() {
        return Err("duration is empty; use a value such as 90s, 10m or 1h".into());
    }
    let mut total = 0f64;
    let mut rest = input;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration {input:?} has a number without a unit (ms, s, m, h)"))?;
        let (number, tail) = rest.split_at(number_len);
        if number.is_empty() || number.starts_with('.') || number.ends_with('.') || number.matches('.').count() > 1 {
            return Err(format!("duration {input:?} is not of the form 90s, 10m or 1h30m"));
        }
        let value: f64 = number.parse().map_err(|_| format!("duration {input:?} has an invalid number {number:?}"))?;
        let (unit_seconds, unit_len) = if tail.starts_with("ms") {
            (0.001, 2)
        } else if tail.starts_with('s') {
            (1.0, 1)
        } else if tail.starts_with('m') {
            (60.0, 1)
        } else if tail.starts_with('h') {
            (3600.0, 1)
        } else {
            return Err(format!("duration {input:?} has an unknown unit; use ms, s, m or h"));
        };
        total += value * unit_seconds;
        rest = &tail[unit_len..];
    }
    // Anything beyond ten years is a typo, and keeping it bounded keeps arithmetic safe.
    if total > 10.0 * 365.0 * 86400.0 {
        return Err(format!("duration {input:?} is longer than ten years"));
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_style_durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("0.5h").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("1500ms").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
    }

    #[test]
    fn rejects_malformed_durations() {
        for bad in ["", "10", "m", "10d", "1.h", ".5h", "1..5h", "-5m", "5 m", "1y", "99999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn crd_pattern_accepts_exactly_what_the_parser_accepts() {
        // A tiny matcher for DURATION_PATTERN written independently of parse_duration.
        fn matches_pattern(s: &str) -> bool {
            let mut rest = s;
            if rest.is_empty() {
                return false;
            }
            while !rest.is_empty() {
                let int_len = rest.chars().take_while(|c| c.is_ascii_digit()).count();
                if int_len == 0 {
                    return false;
                }
                rest = &rest[int_len..];
                if let Some(r) = rest.strip_prefix('.') {
                    let frac = r.chars().take_while(|c| c.is_ascii_digit()).count();
                    if frac == 0 {
                        return false;
                    }
                    rest = &r[frac..];
                }
                rest = if let Some(r) = rest.strip_prefix("ms") {
                    r
                } else if let Some(r) = rest.strip_prefix(['s', 'm', 'h']) {
                    r
                } else {
                    return false;
                };
            }
            true
        }
        for s in ["90s", "10m", "1h30m", "0.5h", "1500ms", "", "10", "1.h", ".5h", "-5m", "5 m", "1y", "1h1"] {
            assert_eq!(matches_pattern(s), parse_duration(s).is_ok(), "{s:?}");
        }
    }
}
