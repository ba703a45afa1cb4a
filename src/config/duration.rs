//! Human-written durations: `"10s"`, `"250ms"`, `"2m"`, `"1h"`, `"1m30s"`,
//! or a bare integer meaning seconds (`"10"`).
//!
//! Units are `h`, `m`, `s` and `ms`; each may appear once, largest first.
//! Fractions are refused rather than rounded, so what runs is what was written.

use std::fmt;
use std::time::Duration;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurationError {
    /// Nothing but whitespace.
    Empty,
    /// A character that is neither a digit nor part of a unit.
    UnexpectedChar(char),
    /// A unit with no number before it (`"s"`, `"1m s"`).
    MissingNumber(String),
    /// A number with no unit after it in a compound duration (`"1m30"`).
    MissingUnit(String),
    /// A unit that is not `h`, `m`, `s` or `ms`.
    UnknownUnit(String),
    /// A unit given twice or after a smaller one (`"30s1m"`).
    UnitOrder(String),
    /// A decimal point (`"1.5s"`).
    Fraction,
    /// Larger than the program can represent.
    TooLarge,
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const EXPECTED: &str = "expected e.g. \"10s\", \"250ms\", \"1m30s\" or a number of seconds";
        match self {
            DurationError::Empty => write!(f, "empty duration; {EXPECTED}"),
            DurationError::UnexpectedChar(c) => {
                write!(f, "unexpected character {c:?} in duration; {EXPECTED}")
            }
            DurationError::MissingNumber(unit) => {
                write!(f, "unit \"{unit}\" has no number before it; {EXPECTED}")
            }
            DurationError::MissingUnit(n) => write!(
                f,
                "number {n} has no unit (only a lone number may omit it); use h, m, s or ms"
            ),
            DurationError::UnknownUnit(unit) => {
                write!(f, "unknown unit \"{unit}\"; use h, m, s or ms")
            }
            DurationError::UnitOrder(unit) => write!(
                f,
                "unit \"{unit}\" repeated or out of order; write largest units first, e.g. \"1h30m\""
            ),
            DurationError::Fraction => write!(
                f,
                "fractions are not supported; use a smaller unit, e.g. \"1500ms\" for 1.5s"
            ),
            DurationError::TooLarge => write!(f, "duration is too large"),
        }
    }
}

impl std::error::Error for DurationError {}

/// Unit suffixes from largest to smallest, with their length in milliseconds.
const UNITS: [(&str, u64); 4] = [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];

/// Parses a duration. See the module documentation for the syntax.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = text.parse().map_err(|_| DurationError::TooLarge)?;
        return Ok(Duration::from_secs(secs));
    }

    let mut total_ms: u64 = 0;
    // Index into UNITS of the last unit used; the next must be smaller.
    let mut last_unit: Option<usize> = None;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (number, after) = rest.split_at(digits);
        let letters = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, after) = after.split_at(letters);

        if let Some(c) = after.chars().next().filter(|_| letters == 0) {
            return Err(if c == '.' {
                DurationError::Fraction
            } else if digits > 0 {
                DurationError::MissingUnit(number.to_string())
            } else {
                DurationError::UnexpectedChar(c)
            });
        }
        if number.is_empty() {
            return Err(DurationError::MissingNumber(unit.to_string()));
        }
        if unit.is_empty() {
            return Err(DurationError::MissingUnit(number.to_string()));
        }
        let index = UNITS
            .iter()
            .position(|(name, _)| *name == unit)
            .ok_or_else(|| DurationError::UnknownUnit(unit.to_string()))?;
        if last_unit.is_some_and(|last| index <= last) {
            return Err(DurationError::UnitOrder(unit.to_string()));
        }
        last_unit = Some(index);

        let n: u64 = number.parse().map_err(|_| DurationError::TooLarge)?;
        total_ms = n
            .checked_mul(UNITS[index].1)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or(DurationError::TooLarge)?;
        rest = after;
    }
    Ok(Duration::from_millis(total_ms))
}

/// Formats a duration the way [`parse_duration`] reads it (`"1m30s"`), for
/// messages and documentation of defaults.
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (name, len) in UNITS {
        let len = u128::from(len);
        if ms >= len {
            out.push_str(&format!("{}{name}", ms / len));
            ms %= len;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Duration {
        parse_duration(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn accepted_forms() {
        assert_eq!(ok("10s"), Duration::from_secs(10));
        assert_eq!(ok("250ms"), Duration::from_millis(250));
        assert_eq!(ok("2m"), Duration::from_secs(120));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("1m30s"), Duration::from_secs(90));
        assert_eq!(ok("1h2m3s4ms"), Duration::from_millis(3_723_004));
        assert_eq!(ok("10"), Duration::from_secs(10));
        assert_eq!(ok(" 5s "), Duration::from_secs(5));
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("0s"), Duration::ZERO);
    }

    #[test]
    fn refused_forms() {
        use DurationError::*;
        let err = |s: &str| parse_duration(s).unwrap_err();
        assert_eq!(err(""), Empty);
        assert_eq!(err("   "), Empty);
        assert_eq!(err("10x"), UnknownUnit("x".into()));
        assert_eq!(err("10sec"), UnknownUnit("sec".into()));
        assert_eq!(err("s"), MissingNumber("s".into()));
        assert_eq!(err("1m30"), MissingUnit("30".into()));
        assert_eq!(err("1.5s"), Fraction);
        assert_eq!(err("30s1m"), UnitOrder("m".into()));
        assert_eq!(err("1s1s"), UnitOrder("s".into()));
        assert_eq!(err("-5s"), UnexpectedChar('-'));
        assert_eq!(err("1m 30s"), UnexpectedChar(' '));
        assert_eq!(err("99999999999999999999"), TooLarge);
        assert_eq!(err("99999999999999999h"), TooLarge);
    }

    #[test]
    fn messages_are_helpful() {
        assert_eq!(
            parse_duration("10x").unwrap_err().to_string(),
            "unknown unit \"x\"; use h, m, s or ms"
        );
        assert!(parse_duration("abc")
            .unwrap_err()
            .to_string()
            .contains("expected e.g."));
    }

    #[test]
    fn format_round_trips() {
        for s in ["1h2m3s4ms", "10s", "250ms", "5m", "0s"] {
            assert_eq!(format_duration(ok(s)), s);
        }
    }
}
